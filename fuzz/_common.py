"""What every harness in this directory shares.

A harness is a script: ``python fuzz/fuzz_xfcc.py [libFuzzer flags] [corpus dir ...]``.
It imports the package under :func:`instrumented` (so atheris sees its
branches), defines ``test_one_input(data: bytes)`` and a list of seed inputs,
and calls :func:`fuzz`. Seeds are written into every empty corpus directory
given on the command line (or into a temporary one when none is), so no
binary corpus is kept in the repository.

``test_one_input`` lets only the documented exceptions of the code under test
through its ``except`` clauses; anything else propagates, and atheris reports
it as a crash (with the input written to ``crash-<sha1>``).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import atheris

__all__ = ["ErrorLog", "fuzz", "instrumented", "latin1", "lines", "text"]


def instrumented() -> Any:
    """Instrument the package (not its test helpers) while importing it."""
    return atheris.instrument_imports(
        include=["peer_middleware"], exclude=["peer_middleware.testing"]
    )


def text(data: bytes) -> str:
    """Arbitrary text: UTF-8 (lone surrogates included) when it decodes, else latin-1."""
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def latin1(data: bytes) -> str:
    """Text as ASGI and WSGI servers hand over header values and raw targets."""
    return data.decode("latin-1")


def lines(data: bytes) -> list[bytes]:
    """The input split into fields, one per line (header values never hold a newline)."""
    return data.split(b"\n")


class ErrorLog(logging.Handler):
    """Records what the package logs at ERROR: its "internal error" refusals, always a bug."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        logger = logging.getLogger("peer_middleware")
        logger.addHandler(self)
        logger.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def check(self) -> None:
        if self.records:
            record = self.records[0]
            self.records.clear()
            raise AssertionError(f"internal error logged: {record.getMessage()}\n{record.exc_text}")


def _seed(directories: Iterable[str], seeds: list[bytes]) -> None:
    for directory in directories:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            continue
        for index, seed in enumerate(seeds):
            (path / f"seed-{index:03d}").write_bytes(seed)


def fuzz(test_one_input: Callable[[bytes], None], seeds: list[bytes]) -> None:
    """Seed the corpus directories and run libFuzzer with the command line's flags."""
    argv = list(sys.argv)
    corpora = [arg for arg in argv[1:] if not arg.startswith("-")]
    if not corpora:
        scratch = tempfile.mkdtemp(prefix="peer-middleware-fuzz-")
        argv.append(scratch)
        corpora = [scratch]
    _seed(corpora, seeds)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(f"{os.path.basename(__file__)} is a helper; run one of the fuzz_*.py harnesses")
