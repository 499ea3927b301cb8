"""Run every fuzz harness for a bounded time and report what each found.

::

    python fuzz/run.py            # 60 seconds per harness
    python fuzz/run.py 10         # 10 seconds each (CI's short pass)
    python fuzz/run.py 300 --only xfcc --only paths --jobs 2

Each harness (``fuzz/fuzz_*.py``) runs in its own process under atheris
(libFuzzer) with ``-max_total_time``, a fresh corpus directory it seeds
itself, and an artifact directory for crashing inputs. The table gives, per
harness, the inputs run (libFuzzer's ``stat::number_of_executed_units``) and
the crashes found. The exit status is 1 when any harness crashed or failed
to run; the output of such a harness (the traceback and the input, in
base64) is printed after the table, and the input is kept under
``--artifacts``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in HERE.glob("fuzz_*.py"))
#: Time allowed beyond -max_total_time for start-up (keys, CAs) and the final report.
GRACE_SECONDS = 120

_EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_PROGRESS = re.compile(r"^#(\d+)\s", re.MULTILINE)
_ARTIFACT = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


@dataclass
class Result:
    harness: str
    executed: int | None
    crashes: list[Path]
    returncode: int | None
    output: str

    @property
    def failed(self) -> bool:
        return bool(self.crashes) or self.returncode != 0


def executed_units(output: str) -> int | None:
    """Inputs run, from libFuzzer's final statistics or its last progress line."""
    found = _EXECUTED.findall(output)
    if found:
        return int(found[-1])
    progress = _PROGRESS.findall(output)
    return max(map(int, progress)) if progress else None


def run_harness(name: str, seconds: int, artifacts: Path) -> Result:
    artifact_dir = artifacts / name
    artifact_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-corpus-") as corpus:
        command = [
            sys.executable,
            str(HERE / f"fuzz_{name}.py"),
            f"-max_total_time={seconds}",
            "-print_final_stats=1",
            "-timeout=30",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={artifact_dir}{os.sep}",
            corpus,
        ]
        try:
            completed = subprocess.run(  # noqa: S603 - our own harness, fixed arguments
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                timeout=seconds + GRACE_SECONDS,
                check=False,
            )
            output, returncode = completed.stdout, completed.returncode
        except subprocess.TimeoutExpired as exc:
            raw = exc.stdout or ""
            output = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
            output += f"\n[run.py] no report after {seconds + GRACE_SECONDS}s; stopped"
            returncode = None
    crashes = sorted(p for p in artifact_dir.iterdir() if p.name.startswith(_ARTIFACT))
    return Result(name, executed_units(output), crashes, returncode, output)


def table(results: list[Result], seconds: int) -> str:
    header = ("harness", f"inputs run ({seconds}s)", "crashes", "status")
    rows = [
        (
            r.harness,
            f"{r.executed:,}" if r.executed is not None else "?",
            str(len(r.crashes)),
            "ok" if not r.failed else ("crash" if r.crashes else f"error ({r.returncode})"),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells)

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seconds", nargs="?", type=int, default=60, help="per harness")
    parser.add_argument("--only", action="append", choices=HARNESSES, help="repeatable")
    parser.add_argument("--jobs", type=int, default=1, help="harnesses run at once")
    parser.add_argument("--artifacts", type=Path, help="where crashing inputs are kept")
    args = parser.parse_args(argv)
    if args.seconds < 1 or args.jobs < 1:
        parser.error("seconds and --jobs must be positive")
    names = args.only or HARNESSES
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="fuzz-artifacts-"))
    print(f"fuzzing {', '.join(names)} for {args.seconds}s each; artifacts in {artifacts}")
    sys.stdout.flush()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda n: run_harness(n, args.seconds, artifacts), names))
    print(table(results, args.seconds))
    failed = [r for r in results if r.failed]
    for result in failed:
        print(f"\n===== fuzz_{result.harness}.py =====")
        for path in result.crashes:
            print(f"input: {path}")
        print("\n".join(result.output.splitlines()[-60:]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
