"""Development tasks: ``nox -s tests``, ``lint``, ``demo``, ``bench``, ``soak``, ``fuzz``."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
# A machine without every interpreter still runs the tests on those it has;
# CI installs them all and sets CI=true, where nox refuses to skip one.
nox.options.error_on_missing_interpreters = os.environ.get("CI") == "true"


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
    """ruff (lint and format check) and mypy --strict."""
    session.install("-e", ".[test]", "ruff", "mypy")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--strict", "peer_middleware")


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """The whole path through a real Envoy sidecar and uvicorn, on 127.0.0.1."""
    session.install("-e", ".[demo]")
    session.run("peer-middleware", "demo", *session.posargs)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """The benchmark suite, written to benchmarks/RESULTS.md (``-- --quick``: a smoke run)."""
    # uvicorn for the real-server section (driven by wrk, from Debian), and the
    # fastapi-client-cert-auth alternative for the comparison rows.
    session.install("-e", ".[fastapi,flask]", "uvicorn>=0.30", "fastapi-client-cert-auth")
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
