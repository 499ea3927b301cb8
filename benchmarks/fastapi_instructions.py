#!/usr/bin/env python
"""Instructions per request for section 8's FastAPI usages, under cachegrind.

Timing on a shared, loaded machine is noise; the number of instructions a
request executes is not. For each usage this runs the app in a child process
under ``valgrind --tool=cachegrind`` twice, with ``--small`` and ``--large``
requests after the same warm-up, and prints
``(instructions(large) - instructions(small)) / (large - small)``: the
instructions of one request, start-up and warm-up cancelled out. Run from the
repository root (minutes: valgrind is slow)::

    python benchmarks/fastapi_instructions.py [usage ...]

``PYTHONHASHSEED=0`` and ``gc.freeze()`` after the warm-up keep the runs
comparable. Needs valgrind (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def child(usage: str, count: int) -> None:
    import logging

    import bench
    import fastapi_bench

    logging.getLogger("peer_middleware").setLevel(logging.ERROR)
    app = fastapi_bench.usage_app(usage)
    scope = bench.caller_scope("xfcc")

    async def run() -> None:
        await bench.check_asgi(app, scope, fastapi_bench._expect(usage))
        await bench.run_asgi(app, [scope] * 300)
        gc.collect()
        gc.freeze()
        await bench.run_asgi(app, [scope] * count)

    asyncio.run(run())


def instructions(usage: str, count: int) -> int:
    command = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        sys.executable, os.path.abspath(__file__), "--child", usage, str(count),
    ]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    found = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{result.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    import fastapi_bench

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("usages", nargs="*", help=f"default: all of {fastapi_bench.USAGES}")
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=2200)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    usages = args.usages or list(fastapi_bench.USAGES)
    per_request: dict[str, int] = {}
    for usage in usages:
        small, large = instructions(usage, args.small), instructions(usage, args.large)
        per_request[usage] = (large - small) // (args.large - args.small)
        print(f"{usage:28s} {per_request[usage]:>9,} instructions/request", flush=True)
    if "bare" in per_request:
        print()
        for usage, count in per_request.items():
            print(f"{usage:28s} {count - per_request['bare']:>+9,} over bare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
