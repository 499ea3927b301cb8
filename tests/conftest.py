"""Shared fixtures for the adapter, integration and example tests."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture
def decisions(caplog: pytest.LogCaptureFixture) -> Callable[[], list[logging.LogRecord]]:
    """Capture every record of the ``peer_middleware`` logger down to DEBUG.

    Calling the fixture returns the decision records so far (the ones that
    carry the structured ``peer_middleware`` attribute), in order.
    """
    caplog.set_level(logging.DEBUG, logger="peer_middleware")

    def records() -> list[logging.LogRecord]:
        return [
            record
            for record in caplog.records
            if record.name == "peer_middleware" and hasattr(record, "peer_middleware")
        ]

    return records


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """Undo what a test (or an example it runs) did to logging's configuration.

    Examples configure logging as an app would (levels, handlers, formatters);
    left in place, a later test would log, and pytest would keep, every record.
    """
    manager = logging.Logger.manager
    before = {
        name: (lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled)
        for name, lg in [("", logging.getLogger()), *manager.loggerDict.items()]
        if isinstance(lg, logging.Logger)
    }
    disable = manager.disable
    yield
    manager.disable = disable
    for lg, level, handlers, propagate, disabled in before.values():
        lg.setLevel(level)
        # pytest's own capture handlers come and go with each test phase.
        lg.handlers[:] = [h for h in lg.handlers if _pytests(h)] + [
            h for h in handlers if not _pytests(h)
        ]
        lg.propagate = propagate
        lg.disabled = disabled
    for name, lg in list(manager.loggerDict.items()):
        if isinstance(lg, logging.Logger) and name not in before:
            # A logger the test created keeps nothing it configured.
            lg.handlers[:] = [h for h in lg.handlers if _pytests(h)]
            lg.setLevel(logging.NOTSET)
            lg.propagate = True
            lg.disabled = False


def _pytests(handler: logging.Handler) -> bool:
    return type(handler).__module__.startswith("_pytest")
