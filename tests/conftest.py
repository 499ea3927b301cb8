"""Shared fixtures for the adapter, integration and example tests."""

from __future__ import annotations

import logging
from collections.abc import Callable

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
