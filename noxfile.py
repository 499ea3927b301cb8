"""Development tasks: ``nox -s tests``, ``nox -s lint``, ``nox -s demo``, ``nox -s bench``."""

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
    """In-process cost of the middleware over bare apps (``-- --quick`` for a smoke run)."""
    session.install("-e", ".[fastapi,flask]")
    args = session.posargs or ["--output", "benchmarks/RESULTS.md"]
    session.run("python", "benchmarks/bench.py", *args)
