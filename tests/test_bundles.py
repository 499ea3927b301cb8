"""Trust bundles: PEM and SPIFFE bundle JSON, federation, reloading, the Workload API source."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from peer_middleware.bundles import (
    SpiffeBundleSet,
    StaticX509Bundle,
    X509BundleFile,
    X509BundleSource,
    parse_pem_bundle,
    parse_spiffe_bundle,
    parse_trust_bundles,
    spiffe_bundle_json,
)
from peer_middleware.errors import AuthenticationFailed, ConfigurationError
from peer_middleware.testing.pki import TestCA
from peer_middleware.x509 import X509SvidVerifier

TD = "cluster.local"


@pytest.fixture(scope="module")
def cas() -> dict[str, TestCA]:
    return {
        "a": TestCA.create(TD),
        "a2": TestCA.create(TD),
        "rsa": TestCA.create(TD, key_type="rsa"),
        "partner": TestCA.create("partner.example"),
    }


def b64der(ca: TestCA) -> str:
    return base64.b64encode(ca.certificate.public_bytes(Encoding.DER)).decode("ascii")


def test_static_bundle(cas: dict[str, TestCA]) -> None:
    bundle = StaticX509Bundle(
        {f"spiffe://{TD}": [cas["a"].certificate], "partner.example": cas["partner"].certificate}
    )  # type: ignore[dict-item]
    assert isinstance(bundle, X509BundleSource)
    assert bundle.x509_authorities(TD) == (cas["a"].certificate,)
    assert bundle.x509_authorities("partner.example") == (cas["partner"].certificate,)
    assert bundle.x509_authorities("other") is None
    assert bundle.generation == 0
    assert bundle.trust_domains == {TD, "partner.example"}


def test_static_bundle_from_pem(cas: dict[str, TestCA]) -> None:
    bundle = StaticX509Bundle.from_pem(TD, cas["a"].pem + cas["a2"].pem)
    assert bundle.x509_authorities(TD) == (cas["a"].certificate, cas["a2"].certificate)


@pytest.mark.parametrize(
    ("authorities", "message"),
    [
        pytest.param({"Bad Domain": []}, "trust domain 'Bad Domain': ", id="bad-name"),
        pytest.param({TD: []}, "trust domain 'cluster.local' has no CA certificate", id="empty"),
        pytest.param(
            {TD: ["pem"]},
            "trust domain 'cluster.local': 'pem' is not an x509.Certificate",
            id="not-cert",
        ),
        pytest.param(
            [], "authorities must map trust domain names to certificates", id="not-mapping"
        ),
    ],
)
def test_static_bundle_configuration_errors(authorities: Any, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        StaticX509Bundle(authorities)
    assert str(caught.value).startswith(message)


def test_duplicate_trust_domain_is_refused(cas: dict[str, TestCA]) -> None:
    cert = cas["a"].certificate
    with pytest.raises(ConfigurationError, match="given twice"):
        StaticX509Bundle({TD: [cert], f"spiffe://{TD}": [cert]})


def test_spiffe_bundle_json_round_trip(cas: dict[str, TestCA]) -> None:
    text = spiffe_bundle_json([cas["a"].certificate, cas["rsa"].certificate], sequence=3)
    document = json.loads(text)
    assert document["spiffe_sequence"] == 3
    assert [key["kty"] for key in document["keys"]] == ["EC", "RSA"]
    assert all(key["use"] == "x509-svid" for key in document["keys"])
    assert parse_spiffe_bundle(text) == (cas["a"].certificate, cas["rsa"].certificate)


def jwks(*keys: dict[str, Any]) -> str:
    return json.dumps({"keys": list(keys)})


SPIFFE_BUNDLES: list[tuple[str, Callable[[dict[str, TestCA]], str], str]] = [
    (
        "ignores-jwt-and-unknown-use",
        lambda c: jwks(
            {"use": "jwt-svid", "kty": "EC", "kid": "k"},
            {"use": "something-new"},
            {"use": "x509-svid", "x5c": [b64der(c["a"])]},
        ),
        "ok",
    ),
    ("not-json", lambda c: "{nope", "not valid JSON: ..."),
    ("not-object", lambda c: "[1]", "a SPIFFE bundle must be a JSON object"),
    ("no-keys", lambda c: "{}", "SPIFFE bundle has no 'keys' array"),
    ("key-not-object", lambda c: jwks(1), "SPIFFE bundle key 0 is not an object"),  # type: ignore[arg-type]
    # No X.509 authority: a well-formed bundle whose trust domain trusts nothing.
    ("no-x509-key", lambda c: jwks({"use": "jwt-svid"}), "empty"),
    ("no-key", lambda c: jwks(), "empty"),
    (
        "two-certs-in-x5c",
        lambda c: jwks({"use": "x509-svid", "x5c": [b64der(c["a"]), b64der(c["a"])]}),
        "SPIFFE bundle key 0: x5c must hold exactly one certificate",
    ),
    (
        "bad-base64",
        lambda c: jwks({"use": "x509-svid", "x5c": ["***"]}),
        "SPIFFE bundle key 0: x5c is not a certificate: ...",
    ),
    (
        "not-a-certificate",
        lambda c: jwks({"use": "x509-svid", "x5c": [base64.b64encode(b"junk").decode()]}),
        "SPIFFE bundle key 0: x5c is not a certificate: ...",
    ),
]


@pytest.mark.parametrize(
    ("make", "expected"), [pytest.param(m, e, id=name) for name, m, e in SPIFFE_BUNDLES]
)
def test_parse_spiffe_bundle(
    cas: dict[str, TestCA], make: Callable[[dict[str, TestCA]], str], expected: str
) -> None:
    document = make(cas)
    if expected == "ok":
        assert parse_spiffe_bundle(document) == (cas["a"].certificate,)
        return
    if expected == "empty":
        assert parse_spiffe_bundle(document) == ()
        return
    with pytest.raises(ValueError, match=r".") as caught:
        parse_spiffe_bundle(document)
    if expected.endswith("..."):
        assert str(caught.value).startswith(expected[:-3])
    else:
        assert str(caught.value) == expected


def test_parse_trust_bundles_forms(cas: dict[str, TestCA]) -> None:
    a, partner = cas["a"], cas["partner"]
    assert parse_trust_bundles(a.pem, trust_domain=TD) == {TD: (a.certificate,)}
    single = spiffe_bundle_json([a.certificate]).encode()
    assert parse_trust_bundles(single, trust_domain=TD) == {TD: (a.certificate,)}
    mapping = json.dumps(
        {
            f"spiffe://{TD}": json.loads(spiffe_bundle_json([a.certificate])),
            "partner.example": json.loads(spiffe_bundle_json([partner.certificate])),
        }
    ).encode()
    assert parse_trust_bundles(mapping) == {
        TD: (a.certificate,),
        "partner.example": (partner.certificate,),
    }
    assert parse_trust_bundles(mapping, trust_domain="partner.example") == {
        "partner.example": (partner.certificate,)
    }


@pytest.mark.parametrize(
    ("data", "trust_domain", "message"),
    [
        pytest.param(b"-----BEGIN", None, "a PEM bundle needs trust_domain=", id="pem-without-td"),
        pytest.param(
            b'{"keys": []}',
            None,
            "a single SPIFFE bundle needs trust_domain=",
            id="jwks-without-td",
        ),
        pytest.param(b"{}", None, "empty JSON object: no trust domain", id="empty-mapping"),
        pytest.param(b'{"Bad": {}}', None, "trust domain 'Bad': ...", id="bad-domain"),
        pytest.param(
            b'{"a.example": 1}',
            None,
            "bundle for 'a.example' is not a JSON object",
            id="not-object",
        ),
        pytest.param(
            b'{"a.example": {}}',
            None,
            "trust domain 'a.example': SPIFFE bundle has no 'keys' array",
            id="no-keys",
        ),
        pytest.param(
            b'{"a.example": {}}',
            "b.example",
            "no bundle for trust domain 'b.example'",
            id="not-selected",
        ),
        pytest.param(b"garbage", TD, "...", id="garbage-pem"),
        pytest.param(
            b" " * (4 * 1024 * 1024 + 1), TD, "bundle is larger than 4194304 bytes", id="too-large"
        ),
    ],
)
def test_parse_trust_bundles_errors(data: bytes, trust_domain: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=r".") as caught:
        parse_trust_bundles(data, trust_domain=trust_domain)
    if message.endswith("..."):
        assert str(caught.value).startswith(message[:-3])
    else:
        assert str(caught.value) == message


def test_federation_picks_the_bundle_by_trust_domain(cas: dict[str, TestCA]) -> None:
    first = StaticX509Bundle({TD: [cas["a"].certificate, cas["a2"].certificate]})
    second = StaticX509Bundle({"partner.example": [cas["partner"].certificate]})
    bundles = SpiffeBundleSet(first, second)
    assert bundles.x509_authorities(TD) == (cas["a"].certificate, cas["a2"].certificate)
    assert bundles.x509_authorities("partner.example") == (cas["partner"].certificate,)
    assert bundles.x509_authorities("nobody.example") is None
    assert bundles.trust_domains == {TD, "partner.example"}
    # Each trust domain from one source only (tests/test_trust_regressions.py has more).
    with pytest.raises(ConfigurationError, match=r"trust domain 'cluster\.local' is in two"):
        SpiffeBundleSet(first, StaticX509Bundle({TD: [cas["a2"].certificate]}))


def test_bundle_set_generation_follows_its_sources() -> None:
    class Source:
        generation = 0

        def x509_authorities(self, trust_domain: str) -> None:
            return None

    a, b = Source(), Source()
    bundles = SpiffeBundleSet(a, b)
    assert bundles.generation == 0
    a.generation = 1
    assert bundles.generation == 1
    assert bundles.generation == 1
    b.generation = 7
    assert bundles.generation == 2


def test_bundle_set_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="at least one bundle source"):
        SpiffeBundleSet()
    with pytest.raises(ConfigurationError, match="is not an X509BundleSource"):
        SpiffeBundleSet({})  # type: ignore[arg-type]


# --- files -----------------------------------------------------------------


@pytest.fixture
def bundle_path(tmp_path: Path, cas: dict[str, TestCA]) -> Path:
    path = tmp_path / "bundle.pem"
    path.write_bytes(cas["a"].pem)
    return path


def replace(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically, as Kubernetes and most tools do, with a new mtime."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_file_reload_swaps_authorities(bundle_path: Path, cas: dict[str, TestCA]) -> None:
    with X509BundleFile(bundle_path, trust_domain=TD, reload_interval=None) as bundle:
        assert bundle.x509_authorities(TD) == (cas["a"].certificate,)
        assert bundle.reload() is False  # unchanged
        replace(bundle_path, cas["a2"].pem)
        assert bundle.reload() is True
        assert bundle.generation == 1
        assert bundle.x509_authorities(TD) == (cas["a2"].certificate,)


def test_same_content_rewritten_is_not_a_change(bundle_path: Path, cas: dict[str, TestCA]) -> None:
    bundle = X509BundleFile(bundle_path, trust_domain=TD, reload_interval=None)
    replace(bundle_path, cas["a"].pem)
    assert bundle.reload() is False
    assert bundle.generation == 0


def test_bad_new_file_keeps_the_last_good_bundle(
    bundle_path: Path, cas: dict[str, TestCA], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="peer_middleware")
    bundle = X509BundleFile(bundle_path, trust_domain=TD, reload_interval=None)
    replace(bundle_path, cas["a"].pem[:100])
    assert bundle.reload() is False
    assert bundle.reload(force=True) is False
    assert bundle.x509_authorities(TD) == (cas["a"].certificate,)
    assert bundle.generation == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # logged once per distinct content
    assert errors[0].startswith(
        f"trust bundle {str(bundle_path)!r} is invalid, keeping the last good bundle: "
    )
    bundle_path.unlink()
    assert bundle.reload() is False
    assert (
        caplog.records[-1]
        .getMessage()
        .startswith(
            f"trust bundle {str(bundle_path)!r} cannot be read, keeping the last good bundle: "
        )
    )
    replace(bundle_path, cas["a2"].pem)
    assert bundle.reload() is True
    assert bundle.x509_authorities(TD) == (cas["a2"].certificate,)


def test_watcher_thread_reloads_without_a_request(
    bundle_path: Path, cas: dict[str, TestCA]
) -> None:
    with X509BundleFile(bundle_path, trust_domain=TD, reload_interval=0.02) as bundle:
        replace(bundle_path, cas["a2"].pem)
        deadline = time.monotonic() + 5
        while bundle.generation == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bundle.x509_authorities(TD) == (cas["a2"].certificate,)
        thread = bundle._thread
        assert thread is not None
        assert thread.daemon
    assert not thread.is_alive()


def test_rotation_is_seen_by_a_verifier(bundle_path: Path, cas: dict[str, TestCA]) -> None:
    bundle = X509BundleFile(bundle_path, trust_domain=TD, reload_interval=None)
    verifier = X509SvidVerifier(bundle)
    old_svid = [cas["a"].issue_svid("spiffe://cluster.local/w").cert_pem]
    new_svid = [cas["a2"].issue_svid("spiffe://cluster.local/w").cert_pem]
    verifier.verify(old_svid)
    with pytest.raises(AuthenticationFailed):
        verifier.verify(new_svid)
    replace(bundle_path, cas["a2"].pem)
    bundle.reload()
    verifier.verify(new_svid)
    with pytest.raises(AuthenticationFailed):
        verifier.verify(old_svid)


def test_file_with_a_federation_mapping(tmp_path: Path, cas: dict[str, TestCA]) -> None:
    path = tmp_path / "federation.json"
    path.write_text(
        json.dumps(
            {
                TD: json.loads(spiffe_bundle_json([cas["a"].certificate])),
                "partner.example": json.loads(spiffe_bundle_json([cas["partner"].certificate])),
            }
        )
    )
    bundle = X509BundleFile(path, reload_interval=None)
    assert bundle.trust_domains == {TD, "partner.example"}


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        pytest.param(
            None, {"trust_domain": TD}, "trust bundle '{path}': [Errno 2] ...", id="missing"
        ),
        pytest.param(b"junk", {"trust_domain": TD}, "trust bundle '{path}': ...", id="garbage"),
        pytest.param(
            b"x",
            {"trust_domain": TD, "reload_interval": 0},
            "reload_interval must be a positive number of seconds or None",
            id="interval",
        ),
        pytest.param(
            b"x", {"trust_domain": "Not Valid"}, "trust domain 'Not Valid': ...", id="bad-domain"
        ),
    ],
)
def test_file_configuration_errors(
    tmp_path: Path, content: bytes | None, kwargs: dict[str, Any], message: str
) -> None:
    path = tmp_path / "bundle.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigurationError) as caught:
        X509BundleFile(path, **kwargs)
    message = message.format(path=path)
    if message.endswith("..."):
        assert str(caught.value).startswith(message[:-3])
    else:
        assert str(caught.value) == message


# --- the SPIFFE Workload API source ------------------------------------------------


class FakeX509Source:
    """Stands in for ``spiffe.X509Source`` (same three methods), built on spiffe's own types."""

    def __init__(self, bundles: dict[str, list[x509.Certificate]]) -> None:
        self.callbacks: list[Callable[[], None]] = []
        self.closed = False
        self.set(bundles)

    def set(self, bundles: dict[str, list[x509.Certificate]]) -> None:
        from spiffe import TrustDomain, X509Bundle, X509BundleSet

        self.bundle_set = X509BundleSet.of(
            [X509Bundle(TrustDomain(td), set(certs)) for td, certs in bundles.items()]
        )
        for callback in self.callbacks:
            callback()

    def get_x509_context(self) -> Any:
        class Context:
            x509_bundle_set = self.bundle_set

        return Context()

    def subscribe_for_updates(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def unsubscribe_for_updates(self, callback: Callable[[], None]) -> None:
        self.callbacks.remove(callback)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def spiffe_package() -> None:
    pytest.importorskip("spiffe")


@pytest.mark.usefixtures("spiffe_package")
def test_workload_api_source_follows_updates(cas: dict[str, TestCA]) -> None:
    from peer_middleware.workload import WorkloadApiX509Source

    fake = FakeX509Source({TD: [cas["a"].certificate]})
    source = WorkloadApiX509Source(source=fake)
    assert isinstance(source, X509BundleSource)
    assert source.x509_authorities(TD) == (cas["a"].certificate,)
    generation = source.generation
    fake.set({TD: [cas["a2"].certificate], "partner.example": [cas["partner"].certificate]})
    assert source.generation == generation + 1
    assert source.trust_domains == {TD, "partner.example"}
    assert source.x509_authorities(TD) == (cas["a2"].certificate,)
    verifier = X509SvidVerifier(source)
    assert (
        verifier.verify([cas["a2"].issue_svid("spiffe://cluster.local/w").der]).spiffe_id.path
        == "/w"
    )
    source.close()
    assert fake.callbacks == []
    assert not fake.closed  # the caller's source stays the caller's


@pytest.mark.usefixtures("spiffe_package")
def test_workload_api_source_refuses_to_block_the_event_loop() -> None:
    from peer_middleware.workload import WorkloadApiX509Source

    async def build() -> None:
        WorkloadApiX509Source(socket_path="unix:///nonexistent.sock", timeout=0.1)

    with pytest.raises(ConfigurationError, match="blocks until the Workload API answers"):
        asyncio.run(build())


@pytest.mark.usefixtures("spiffe_package")
def test_workload_api_source_open_waits_off_the_event_loop(tmp_path: Path) -> None:
    from peer_middleware.workload import WorkloadApiX509Source

    ticks: list[float] = []
    # An agent socket that accepts connections and never answers.
    path = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(5)

    async def open_source() -> None:
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        try:
            await WorkloadApiX509Source.open(socket_path=f"unix://{path}", timeout=0.5)
        finally:
            stop.set()
            await task

    try:
        with pytest.raises(ConfigurationError, match="Timeout waiting for the first update"):
            asyncio.run(open_source())
    finally:
        listener.close()
    # The loop kept running while the source waited for the (absent) agent.
    assert len(ticks) > 10


def _bad_version_der(ca: TestCA) -> bytes:
    # The TBSCertificate's explicit version [0] INTEGER 2 (v3) becomes 5, which
    # cryptography refuses with InvalidVersion rather than a ValueError.
    der = ca.certificate.public_bytes(Encoding.DER)
    marker = bytes.fromhex("a003020102")
    assert marker in der
    return der.replace(marker, bytes.fromhex("a003020105"), 1)


def test_unparseable_certificates_in_a_bundle_are_configuration_errors(
    cas: dict[str, TestCA],
) -> None:
    der = _bad_version_der(cas["a"])
    document = {"keys": [{"use": "x509-svid", "x5c": [base64.b64encode(der).decode()]}]}
    with pytest.raises(ValueError, match="x5c is not a certificate"):
        parse_spiffe_bundle(document)
    pem = (
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    )
    with pytest.raises(ValueError, match="cannot be parsed"):
        parse_pem_bundle(pem)
