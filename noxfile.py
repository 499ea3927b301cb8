"""Development tasks: nox -s tests, lint, docs, package, demo, bench, soak, fuzz.

``nox -s tests`` runs the suite on each of Python 3.10, 3.11, 3.12 and 3.13
and fails, naming the interpreter, when one of them is missing: a run that
skipped a promised version would report a success it did not earn. The
interpreters are looked for on ``PATH`` and in pyenv's versions
(``$PYENV_ROOT/versions/3.1x.y/bin``, by default under ``~/.pyenv``), which
are put first on ``PATH`` so that pyenv's shims cannot shadow them. Run one
version with ``nox -s tests-3.12``; ``--no-error-on-missing-interpreters``
turns the failure back into a skip.

``nox -s package`` builds the sdist and the wheel into ``dist/``, checks
them, installs the wheel (with the ``demo`` extra, not editable) into a new
virtual environment and runs ``peer-middleware demo`` from there.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def _pyenv_bin_dirs(versions: list[str]) -> list[Path]:
    """The ``bin`` folder of pyenv's newest CPython of each of ``versions``, if installed."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found: list[Path] = []
    for version in versions:
        # 3.12.1 and 3.12.10, not 3.12-dev or the free-threaded 3.13.0t.
        pattern = re.compile(rf"{re.escape(version)}\.(\d+)")
        candidates = [
            (int(match.group(1)), path / "bin")
            for path in (root.iterdir() if root.is_dir() else ())
            if (match := pattern.fullmatch(path.name))
            and (path / "bin" / f"python{version}").is_file()
        ]
        if candidates:
            found.append(max(candidates)[1])
    return found


# Newest first, as .ci/run does, so that a bare python3 is the newest of them.
os.environ["PATH"] = os.pathsep.join(
    [*map(str, reversed(_pyenv_bin_dirs(PYTHONS))), os.environ.get("PATH", os.defpath)]
)
MISSING_PYTHONS = [version for version in PYTHONS if shutil.which(f"python{version}") is None]

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"
# Everywhere, not only where CI is set: a missing interpreter fails its session.
nox.options.error_on_missing_interpreters = True

if MISSING_PYTHONS:
    _present = [f"tests-{version}" for version in PYTHONS if version not in MISSING_PYTHONS]
    print(
        f"nox: Python {', '.join(MISSING_PYTHONS)} not found on PATH or in pyenv's versions, "
        f"so nox -s tests FAILS (tests-{', tests-'.join(MISSING_PYTHONS)}). Install "
        f"{'it' if len(MISSING_PYTHONS) == 1 else 'them'} "
        f"(pyenv install {' '.join(MISSING_PYTHONS)})"
        + (f", or run only the others: nox -s {' '.join(_present)}" if _present else "")
        + ".",
        file=sys.stderr,
    )


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite, with branch coverage, warnings as errors."""
    session.install("-e", ".[test]")
    session.run(
        "coverage",
        "run",
        "-m",
        "pytest",
        "-W",
        "error",
        *session.posargs,
        env={"COVERAGE_FILE": f".coverage.{session.python}"},
    )
    session.run(
        "coverage",
        "report",
        "--fail-under=90",
        env={"COVERAGE_FILE": f".coverage.{session.python}"},
    )


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff (lint and format check), mypy --strict and the layers (import-linter)."""
    session.install("-e", ".[test]", "ruff", "mypy", "import-linter>=2.1")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--strict", "peer_middleware")
    # Every import points down the layers of pyproject.toml's [tool.importlinter].
    session.run("lint-imports")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """The documentation site (MkDocs, Material, mkdocstrings) into site/, warnings as errors."""
    session.install("-e", ".[docs]")
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        str(ROOT / "site"),
        *session.posargs,
        # Material's banner about its successor, printed on every build.
        env={"NO_MKDOCS_2_WARNING": "1"},
    )


@nox.session(python="3.11")
def package(session: nox.Session) -> None:
    """Build, check and install the sdist and wheel; run the demo from the installed wheel."""
    session.install("build", "twine", "check-wheel-contents", "trove-classifiers")
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    # The wheel is built from the sdist, so a file missing from the sdist shows here.
    session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT))
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    session.run("twine", "check", "--strict", str(sdist), str(wheel))
    session.run("check-wheel-contents", str(wheel))
    classifiers = _check_archives(session, sdist, wheel)
    session.run("python", "-c", _CHECK_CLASSIFIERS, *classifiers)

    # A new virtual environment, the wheel and its demo extra, run from outside
    # the checkout so that nothing can be imported from the work tree.
    work = Path(session.create_tmp()).resolve()
    venv = work / "wheel-venv"
    shutil.rmtree(venv, ignore_errors=True)
    session.run("python", "-m", "venv", str(venv))
    bindir = venv / ("Scripts" if sys.platform == "win32" else "bin")
    python = str(bindir / "python")
    env = {"PYTHONPATH": None, "VIRTUAL_ENV": str(venv)}
    session.run(python, "-m", "pip", "install", "--quiet", f"{wheel}[demo]", external=True, env=env)
    with session.chdir(work):
        session.run(python, "-I", "-c", _CHECK_INSTALLED, str(venv), external=True, env=env)
        session.run(str(bindir / "peer-middleware"), "--help", external=True, env=env)
        session.run(str(bindir / "peer-middleware"), "demo", external=True, env=env)


def _check_archives(session: nox.Session, sdist: Path, wheel: Path) -> list[str]:
    """What the sdist and the wheel must hold; returns the wheel's classifiers."""
    license_text = (ROOT / "LICENSE").read_bytes()
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (dist_info,) = {name.split("/")[0] for name in names if ".dist-info/" in name}
        metadata = email.parser.BytesParser().parsebytes(
            archive.read(f"{dist_info}/METADATA"), headersonly=True
        )
        wheel_license = archive.read(f"{dist_info}/licenses/LICENSE")
    problems = []
    top_level = {name.split("/")[0] for name in names}
    if top_level != {"peer_middleware", dist_info}:
        problems.append(f"wheel: top-level entries {sorted(top_level)}")
    for needed in ("peer_middleware/py.typed", "peer_middleware/_demo_app.py"):
        if needed not in names:
            problems.append(f"wheel: no {needed}")
    if wheel_license != license_text:
        problems.append("wheel: its licenses/LICENSE is not the LICENSE file")
    if metadata["License-Expression"] != "Apache-2.0":
        problems.append(f"wheel: License-Expression {metadata['License-Expression']!r}")
    with tarfile.open(sdist) as archive:
        members = {member.name.split("/", 1)[-1] for member in archive.getmembers()}
        prefix = archive.getmembers()[0].name.split("/")[0]
        license_file = archive.extractfile(f"{prefix}/LICENSE")
        sdist_license = license_file.read() if license_file else b""
    for needed in (
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "pyproject.toml",
        "peer_middleware/py.typed",
        "peer_middleware/_demo_app.py",
        "tests/test_cli.py",
        "examples/fastapi_app/app.py",
    ):
        if needed not in members:
            problems.append(f"sdist: no {needed}")
    if sdist_license != license_text:
        problems.append("sdist: its LICENSE is not the LICENSE file")
    classifiers = metadata.get_all("Classifier") or []
    pythons = [c.rsplit(" ", 1)[1] for c in classifiers if re.fullmatch(r".* :: 3\.\d+", c)]
    if pythons != PYTHONS:
        problems.append(f"wheel: Python classifiers {pythons}, the tests run on {PYTHONS}")
    if problems:
        session.error("; ".join(problems))
    session.log(f"{sdist.name} and {wheel.name}: LICENSE, py.typed and the demo app are in")
    return classifiers


_CHECK_CLASSIFIERS = """\
import sys
from trove_classifiers import classifiers, deprecated_classifiers

unknown = [c for c in sys.argv[1:] if c not in classifiers or c in deprecated_classifiers]
if unknown:
    sys.exit(f"invalid or deprecated trove classifiers: {unknown}")
print(f"{len(sys.argv) - 1} trove classifiers, all valid")
"""

_CHECK_INSTALLED = """\
import importlib.metadata
import importlib.resources
import sys
from pathlib import Path

import peer_middleware

venv = Path(sys.argv[1])
where = Path(peer_middleware.__file__).resolve()
assert venv in where.parents, f"peer_middleware imported from {where}, not from {venv}"
assert importlib.resources.files("peer_middleware").joinpath("py.typed").is_file(), "no py.typed"
dist = importlib.metadata.distribution("peer-middleware")
assert any(f.name == "LICENSE" for f in dist.files or ()), "no LICENSE in the dist-info"
print(f"peer_middleware {peer_middleware.__version__} from {where.parent}, with py.typed")
"""


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """The whole path through a real Envoy sidecar and uvicorn, on 127.0.0.1."""
    session.install("-e", ".[demo]")
    session.run("peer-middleware", "demo", *session.posargs)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """The benchmark suite, written to benchmarks/RESULTS.md (``-- --quick``: a smoke run)."""
    # uvicorn and gunicorn for the real-server sections (driven by wrk, from Debian), and
    # the fastapi-client-cert-auth alternative for the comparison rows; grpcio for the gRPC
    # rows; Quart, Litestar and Django for the documented-usage rows; prometheus_client for
    # the metrics-on row.
    session.install(
        "-e",
        ".[django,fastapi,flask,grpc,litestar,prometheus,quart]",
        "uvicorn>=0.30",
        "gunicorn>=23",
        "fastapi-client-cert-auth",
    )
    args = session.posargs or ["--output", "benchmarks/RESULTS.md"]
    session.run("python", "benchmarks/bench.py", *args)


@nox.session(python="3.11")
def soak(session: nox.Session) -> None:
    """The example app under uvicorn workers behind Envoy, under load and faults."""
    session.install("-e", ".[demo]")
    session.run("python", "benchmarks/soak.py", *session.posargs)


@nox.session(python="3.11")
def fuzz(session: nox.Session) -> None:
    """Coverage-guided fuzzing of every parser and the middleware (``-- 10``: seconds each)."""
    session.install("-e", ".[test,fuzz]")
    seconds = session.posargs[0] if session.posargs else "60"
    session.run("python", "fuzz/run.py", seconds, *session.posargs[1:])
