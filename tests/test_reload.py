"""The one reload mechanism: last good value, failures logged, signals, waits, weak owners."""

from __future__ import annotations

import gc
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peer_middleware._reload import Outcome, Reloader
from peer_middleware.bundles import X509BundleFile
from peer_middleware.keys import SpiffeJwtBundle
from peer_middleware.testing.pki import TestCA
from peer_middleware.testing.tokens import SigningKey

LOGGER = logging.getLogger("peer_middleware.test_reload")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """An owner whose reads return (or raise) the queued results, then ``None``."""

    def __init__(self, *results: object) -> None:
        self.results = list(results)
        self.reads = 0
        self.forced: list[bool] = []


def read(source: Source, force: bool) -> Any:
    source.reads += 1
    source.forced.append(force)
    result = source.results.pop(0) if source.results else None
    if isinstance(result, Exception):
        raise result
    return result


def reloader(source: Source, **options: Any) -> Reloader[Source, Any]:
    settings: dict[str, Any] = {
        "subject": "thing 'x'",
        "noun": "value",
        "logger": LOGGER,
        "interval": None,
    }
    settings.update(options)
    return Reloader(source, read, **settings)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def test_the_last_good_value_stays_when_a_read_fails(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER.name)
    source = Source(
        ValueError("broken"), "one", None, ValueError("garbage"), OSError("gone"), "two"
    )
    keeper = reloader(source)
    assert keeper.snapshot is None
    assert keeper.attempt() is Outcome.FAILED
    assert keeper.snapshot is None
    assert keeper.attempt() is Outcome.CHANGED
    assert keeper.snapshot is not None
    assert (keeper.snapshot.value, keeper.snapshot.generation) == ("one", 1)
    assert keeper.attempt(force=True) is Outcome.UNCHANGED
    assert source.forced[-1] is True
    assert keeper.attempt() is Outcome.FAILED
    assert keeper.failures == 1
    assert keeper.last_error == "ValueError: garbage"
    assert keeper.attempt() is Outcome.FAILED
    assert keeper.failures == 2
    assert keeper.last_error == "OSError: gone"
    assert (keeper.snapshot.value, keeper.snapshot.generation) == ("one", 1)
    assert keeper.attempt() is Outcome.CHANGED
    assert (keeper.snapshot.value, keeper.snapshot.generation) == ("two", 2)
    assert (keeper.failures, keeper.last_error) == (0, None)
    assert [r.getMessage() for r in caplog.records] == [
        "thing 'x' is invalid, no value yet: broken",
        "thing 'x' is invalid, keeping the last good value: garbage",
        "thing 'x' cannot be read, keeping the last good value: gone",
    ]


def test_a_value_put_by_the_owner_is_generation_zero() -> None:
    source = Source("next")  # the reloader holds its owner only weakly
    keeper = reloader(source)
    keeper.put("first")
    assert keeper.snapshot is not None
    assert (keeper.snapshot.value, keeper.snapshot.generation) == ("first", 0)
    assert keeper.attempt() is Outcome.CHANGED
    assert (keeper.snapshot.value, keeper.snapshot.generation) == ("next", 1)


def test_successful_reads_renew_the_age_failures_do_not() -> None:
    clock = Clock()
    source = Source("one", None, ValueError("bad"))
    keeper = reloader(source, max_age=60, clock=clock)
    keeper.attempt()
    assert keeper.snapshot is not None
    assert keeper.snapshot.expires == 1060
    clock.now += 30
    keeper.attempt()  # unchanged: as fresh as a new value
    assert keeper.snapshot.expires == 1090
    clock.now += 30
    keeper.attempt()  # failed
    assert keeper.snapshot.expires == 1090
    assert keeper.snapshot.value == "one"


def test_without_an_age_limit_the_value_never_expires() -> None:
    source = Source("one")
    keeper = reloader(source)
    keeper.attempt()
    assert keeper.snapshot is not None
    assert keeper.snapshot.expires == math.inf


def test_signals_wake_the_thread_at_most_once_per_interval() -> None:
    clock = Clock()
    source = Source()
    keeper = reloader(source, interval=3600, min_signal_interval=30, clock=clock)
    try:
        time.sleep(0.05)
        assert source.reads == 0  # the first read waits for the interval
        keeper.signal()
        assert wait_for(lambda: source.reads == 1)
        keeper.signal()  # within the rate limit: ignored
        time.sleep(0.1)
        assert source.reads == 1
        clock.now += 30
        keeper.signal()
        assert wait_for(lambda: source.reads == 2)
    finally:
        keeper.close()


def test_refresh_waits_a_bounded_time_and_says_whether_the_read_succeeded() -> None:
    source = Source("one", ValueError("bad"))
    keeper = reloader(source, interval=3600, start=False)
    try:
        assert keeper.thread is not None
        assert not keeper.thread.is_alive()
        assert not keeper.wait_ready(0.05)
        assert keeper.refresh(timeout=5)  # starts the thread
        assert keeper.wait_ready(0)
        assert not keeper.refresh(timeout=5)
        assert keeper.last_error == "ValueError: bad"
    finally:
        keeper.close()
    assert not keeper.thread.is_alive()
    started = time.monotonic()
    assert not keeper.refresh(timeout=0.2)  # closed: nothing reads
    assert time.monotonic() - started < 2


def test_refresh_without_a_thread_reads_in_the_caller() -> None:
    source = Source("one", ValueError("bad"))
    keeper = reloader(source)
    assert keeper.thread is None
    assert keeper.refresh()
    assert not keeper.refresh()


def test_a_failed_read_is_retried_sooner_than_the_interval() -> None:
    source = Source(ValueError("down"), ValueError("down"), "up")
    keeper = reloader(source, interval=3600, retry_interval=0.01, first_delay=0)
    try:
        assert wait_for(lambda: keeper.snapshot is not None)
        assert source.reads == 3
    finally:
        keeper.close()


def test_read_must_not_hold_the_owner() -> None:
    class Owner:
        def read(self, force: bool) -> None:
            return None

    owner = Owner()
    with pytest.raises(TypeError, match="bound method of the owner"):
        Reloader(owner, Owner.read.__get__(owner), subject="s", noun="n", logger=LOGGER, interval=1)


def test_the_thread_ends_when_its_owner_is_collected() -> None:
    source = Source()
    keeper = reloader(source, interval=3600)
    thread = keeper.thread
    assert thread is not None
    assert thread.is_alive()
    assert thread.daemon
    del source
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert keeper.attempt() is None


def _threads_named(prefix: str) -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(prefix)}


def test_abandoned_trust_sources_stop_their_threads(tmp_path: Path) -> None:
    pem = tmp_path / "bundle.pem"
    pem.write_bytes(TestCA.create("c.local").pem)
    jwks = tmp_path / "bundle.json"
    jwks.write_text(json.dumps({"keys": [SigningKey("ec", kid="k").jwk(use="jwt-svid")]}))
    before = _threads_named("peer_middleware")
    bundle: Any = X509BundleFile(pem, trust_domain="c.local", reload_interval=3600)
    keys: Any = SpiffeJwtBundle({"c.local": jwks}, poll_interval=3600)
    threads = _threads_named("peer_middleware") - before
    assert len(threads) == 2
    del bundle, keys
    gc.collect()
    for thread in threads:
        thread.join(timeout=5)
        assert not thread.is_alive()
