"""X.509-SVID verification: the SPIFFE leaf rules, path validation, bounded input, caching."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from peer_middleware.bundles import SpiffeBundleSet, StaticX509Bundle
from peer_middleware.errors import AuthenticationFailed, ConfigurationError
from peer_middleware.testing import pki as pki_module
from peer_middleware.testing.pki import Svid, TestCA
from peer_middleware.x509 import (
    MAX_CERTIFICATE_BYTES,
    VerifiedSvid,
    X509SvidVerifier,
    split_pem_chain,
)

TD = "cluster.local"
ID = "spiffe://cluster.local/ns/shop/sa/cart"
NOW = datetime.now(timezone.utc)


@pytest.fixture(scope="module", autouse=True)
def _issue_at_now() -> Iterator[None]:
    """Anchor the test CA's default validity at NOW, the verifiers' clock here.

    Otherwise a certificate issued minutes after this module was imported (a slow
    run) would start after NOW and fail as "not valid before".
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pki_module, "_now", lambda: NOW)
        yield


def usage(**flags: bool) -> x509.KeyUsage:
    values = {
        "digital_signature": False,
        "content_commitment": False,
        "key_encipherment": False,
        "data_encipherment": False,
        "key_agreement": False,
        "key_cert_sign": False,
        "crl_sign": False,
        "encipher_only": False,
        "decipher_only": False,
    }
    values.update(flags)
    return x509.KeyUsage(**values)


@dataclass
class Pki:
    ca: TestCA
    other_ca: TestCA  # another root for the same trust domain, not in the bundle
    partner: TestCA  # the root of a federated trust domain, in the bundle set
    intermediate: TestCA
    verifier: X509SvidVerifier
    clock: list[datetime] = field(default_factory=lambda: [NOW])


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = TestCA.create(TD)
    partner = TestCA.create("partner.example")
    clock = [NOW]
    bundles = SpiffeBundleSet(
        StaticX509Bundle({TD: [ca.certificate]}),
        StaticX509Bundle({"partner.example": [partner.certificate]}),
    )
    verifier = X509SvidVerifier(bundles, clock=lambda: clock[0], cache_size=0)
    return Pki(
        ca=ca,
        other_ca=TestCA.create(TD),
        partner=partner,
        intermediate=ca.intermediate(),
        verifier=verifier,
        clock=clock,
    )


def pems(svid: Svid) -> list[str]:
    return [
        cert.public_bytes(Encoding.PEM).decode("ascii") for cert in (svid.certificate, *svid.chain)
    ]


def raw_leaf(ca: TestCA, extensions: Sequence[tuple[x509.ExtensionType, bool]]) -> Svid:
    """A leaf with exactly the given extensions, signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=5))
        .not_valid_after(NOW + timedelta(hours=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return Svid(builder.sign(ca.private_key, hashes.SHA256()), key)


SAN = (x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ID)]), False)
LEAF_BC = (x509.BasicConstraints(ca=False, path_length=None), True)
LEAF_KU = (usage(digital_signature=True), True)
CLIENT_EKU = (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
SERVER_EKU = (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)

# Each case: a function of the PKI giving the chain to verify (and optionally
# moving the clock), and the expected reason. A reason ending in "..." is a
# prefix (the rest is cryptography's own message).
Case = Callable[[Pki], Sequence[bytes | str]]

VALID: list[tuple[str, Case, str]] = [
    ("spire-style", lambda p: pems(p.ca.issue_svid(ID, style="spire")), ID),
    ("istio-style", lambda p: pems(p.ca.issue_svid(ID, style="istio")), ID),
    ("with-intermediate", lambda p: pems(p.intermediate.issue_svid(ID)), ID),
    ("der", lambda p: [p.ca.issue_svid(ID).der], ID),
    ("pem-bytes", lambda p: [p.ca.issue_svid(ID).cert_pem], ID),
    ("tuple", lambda p: tuple(pems(p.ca.issue_svid(ID))), ID),
    (
        "federated-domain",
        lambda p: pems(p.partner.issue_svid("spiffe://partner.example/w")),
        "spiffe://partner.example/w",
    ),
    (
        "no-authority-key-id-no-extended-key-usage",
        lambda p: [raw_leaf(p.ca, [SAN, LEAF_BC, LEAF_KU]).cert_pem],
        ID,
    ),
    (
        "client-auth-only",
        lambda p: [raw_leaf(p.ca, [SAN, LEAF_BC, LEAF_KU, CLIENT_EKU]).cert_pem],
        ID,
    ),
    ("no-basic-constraints", lambda p: [raw_leaf(p.ca, [SAN, LEAF_KU]).cert_pem], ID),
]


@pytest.mark.parametrize(
    ("make", "expected"),
    [pytest.param(make, expected, id=name) for name, make, expected in VALID],
)
def test_valid_svids_verify(pki: Pki, make: Case, expected: str) -> None:
    chain = make(pki)
    result = pki.verifier.verify(chain)
    assert isinstance(result, VerifiedSvid)
    first = chain[0]
    if isinstance(first, str):
        first = first.encode("ascii")
    leaf = (
        x509.load_pem_x509_certificate(first)
        if first.startswith(b"-----")
        else x509.load_der_x509_certificate(first)
    )
    assert result.spiffe_id.uri == expected
    assert result.sha256 == leaf.fingerprint(hashes.SHA256()).hex()
    assert result.not_after == leaf.not_valid_after_utc


def test_rsa_svid_verifies() -> None:
    ca = TestCA.create(TD, key_type="rsa")
    verifier = X509SvidVerifier(StaticX509Bundle({TD: [ca.certificate]}))
    assert verifier.verify(pems(ca.issue_svid(ID))).spiffe_id.uri == ID


def _expire(pki: Pki) -> Sequence[str]:
    svid = pki.ca.issue_svid(ID, not_after=NOW + timedelta(hours=1))
    pki.clock[0] = NOW + timedelta(hours=2)
    return pems(svid)


def _not_yet(pki: Pki) -> Sequence[str]:
    svid = pki.ca.issue_svid(ID, not_before=NOW + timedelta(hours=1))
    return pems(svid)


def _expired_intermediate(pki: Pki) -> Sequence[str]:
    inter = pki.ca.intermediate(not_after=NOW + timedelta(hours=1))
    svid = inter.issue_svid(ID, not_after=NOW + timedelta(hours=5))
    pki.clock[0] = NOW + timedelta(hours=2)
    return pems(svid)


def _foreign_intermediate(pki: Pki) -> Sequence[str]:
    # The leaf is signed by an intermediate of another root; the chain offers it.
    return pems(pki.other_ca.intermediate().issue_svid(ID))


def _missing_intermediate(pki: Pki) -> Sequence[str]:
    return pems(pki.intermediate.issue_svid(ID))[:1]


def _thousand(pki: Pki) -> Sequence[str]:
    leaf = pems(pki.ca.issue_svid(ID))[0]
    return [leaf] * 1000


def _truncated(pki: Pki) -> Sequence[str]:
    pem = pems(pki.ca.issue_svid(ID))[0]
    return [pem[: len(pem) // 2]]


def _truncated_base64(pki: Pki) -> Sequence[str]:
    pem = pems(pki.ca.issue_svid(ID))[0]
    lines = pem.splitlines()
    return ["\n".join([lines[0], *lines[1:3], lines[-1]])]


def _two_blocks(pki: Pki) -> Sequence[str]:
    leaf = pems(pki.ca.issue_svid(ID))[0]
    return [leaf + leaf]


BAD_CHAIN_PREFIX = "certificate chain does not verify against the trust bundle of 'cluster.local': "

INVALID: list[tuple[str, Case, str]] = [
    ("empty-chain", lambda p: [], "no client certificate presented"),
    (
        "untrusted-ca",
        lambda p: pems(p.other_ca.issue_svid(ID)),
        BAD_CHAIN_PREFIX + "validation failed: candidates exhausted: ...",
    ),
    (
        "expired",
        _expire,
        "leaf certificate expired at "
        + (NOW + timedelta(hours=1)).replace(microsecond=0).isoformat(),
    ),
    (
        "not-yet-valid",
        _not_yet,
        "leaf certificate is not valid before "
        + (NOW + timedelta(hours=1)).replace(microsecond=0).isoformat(),
    ),
    ("expired-intermediate", _expired_intermediate, BAD_CHAIN_PREFIX + "..."),
    ("foreign-intermediate", _foreign_intermediate, BAD_CHAIN_PREFIX + "..."),
    ("missing-intermediate", _missing_intermediate, BAD_CHAIN_PREFIX + "..."),
    (
        "ca-leaf",
        lambda p: pems(p.ca.issue_svid(ID, is_ca=True)),
        "leaf certificate is a CA (basicConstraints CA=TRUE)",
    ),
    (
        "key-cert-sign",
        lambda p: pems(
            p.ca.issue_svid(ID, key_usage=usage(digital_signature=True, key_cert_sign=True))
        ),
        "leaf certificate has keyUsage keyCertSign",
    ),
    (
        "crl-sign",
        lambda p: pems(p.ca.issue_svid(ID, key_usage=usage(digital_signature=True, crl_sign=True))),
        "leaf certificate has keyUsage cRLSign",
    ),
    (
        "no-digital-signature",
        lambda p: pems(p.ca.issue_svid(ID, key_usage=usage(key_encipherment=True))),
        "leaf certificate lacks keyUsage digitalSignature",
    ),
    (
        "no-key-usage",
        lambda p: [raw_leaf(p.ca, [SAN, LEAF_BC]).cert_pem],
        "leaf certificate has no keyUsage; an X.509-SVID needs digitalSignature",
    ),
    (
        "two-uri-sans",
        lambda p: pems(p.ca.issue_svid(ID, extra_uris=["spiffe://cluster.local/other"])),
        "leaf certificate has 2 URI SANs; an X.509-SVID has exactly one",
    ),
    (
        "no-uri-san",
        lambda p: pems(p.ca.issue_svid(None, dns_names=["cart.example"])),
        "leaf certificate has no URI SAN (no SPIFFE ID)",
    ),
    (
        "no-san",
        lambda p: pems(p.ca.issue_svid(None)),
        "leaf certificate has no subjectAltName (no SPIFFE ID)",
    ),
    (
        "uri-not-spiffe",
        lambda p: pems(p.ca.issue_svid("https://cluster.local/ns/shop/sa/cart")),
        "leaf certificate URI SAN is not a SPIFFE ID: "
        "SPIFFE ID scheme must be 'spiffe://' in lower case",
    ),
    (
        "bare-trust-domain",
        lambda p: pems(p.ca.issue_svid("spiffe://cluster.local")),
        "leaf certificate URI SAN spiffe://cluster.local names a trust domain, not a workload",
    ),
    (
        "nul-in-uri",
        lambda p: pems(p.ca.issue_svid("spiffe://cluster.local/ns/shop\x00/sa/cart")),
        "leaf certificate has a NUL byte in a subjectAltName",
    ),
    (
        "nul-in-dns",
        lambda p: pems(p.ca.issue_svid(ID, dns_names=["cart.example\x00.evil"])),
        "leaf certificate has a NUL byte in a subjectAltName",
    ),
    (
        "other-trust-domains-ca",
        # The leaf claims cluster.local; partner.example's CA (trusted, but
        # for partner.example only) signed it.
        lambda p: pems(p.partner.issue_svid(ID)),
        BAD_CHAIN_PREFIX + "...",
    ),
    (
        "unknown-trust-domain",
        lambda p: pems(p.ca.issue_svid("spiffe://unknown.example/w")),
        "no trust bundle for trust domain 'unknown.example'",
    ),
    (
        "empty-subject-non-critical-san",
        lambda p: pems(p.ca.issue_svid(ID, subject=x509.Name([]))),
        BAD_CHAIN_PREFIX
        + "validation failed: EE subjectAltName MUST be critical when subject is empty...",
    ),
    (
        "server-auth-only",
        lambda p: [raw_leaf(p.ca, [SAN, LEAF_BC, LEAF_KU, SERVER_EKU]).cert_pem],
        BAD_CHAIN_PREFIX + "validation failed: required EKU not found...",
    ),
    ("chain-of-1000", _thousand, "certificate chain has 1000 entries; at most 8 are accepted"),
    (
        "one-megabyte-garbage",
        lambda p: [b"\x30" * (1024 * 1024)],
        f"client certificate is larger than {MAX_CERTIFICATE_BYTES} bytes",
    ),
    (
        "one-megabyte-pem-text",
        lambda p: ["-----BEGIN CERTIFICATE-----" + "A" * (1024 * 1024)],
        f"client certificate is larger than {MAX_CERTIFICATE_BYTES} bytes",
    ),
    (
        "garbage-der",
        lambda p: [b"\x30\x03abc"],
        "client certificate is not a valid certificate: ...",
    ),
    ("garbage-text", lambda p: ["hello"], "client certificate is not exactly one PEM certificate"),
    ("truncated-pem", _truncated, "client certificate is not exactly one PEM certificate"),
    ("truncated-base64", _truncated_base64, "client certificate is not a valid certificate: ..."),
    (
        "bad-base64-characters",
        lambda p: ["-----BEGIN CERTIFICATE-----\nMII*\n-----END CERTIFICATE-----"],
        "client certificate is not valid PEM: bad base64",
    ),
    ("two-pem-blocks-in-one", _two_blocks, "client certificate is not exactly one PEM certificate"),
    (
        "non-ascii-text",
        lambda p: ["-----BEGIN CERTIFICATE-----é"],
        "client certificate is not ASCII PEM text",
    ),
    ("empty-item", lambda p: [b""], "client certificate is empty"),
    ("not-bytes", lambda p: [12345], "client certificate is a int, not bytes or str"),  # type: ignore[list-item]
    (
        "garbage-intermediate",
        lambda p: [pems(p.ca.issue_svid(ID))[0], b"junk"],
        "certificate 2 of 2 is not a valid certificate: ...",
    ),
    (
        "chain-as-string",
        lambda p: pems(p.ca.issue_svid(ID))[0],
        "certificate chain must be a sequence of certificates",
    ),
]


@pytest.mark.parametrize(
    ("make", "reason"), [pytest.param(make, reason, id=name) for name, make, reason in INVALID]
)
def test_invalid_chains_are_refused_with_a_precise_reason(
    pki: Pki, make: Case, reason: str
) -> None:
    pki.clock[0] = NOW
    chain = make(pki)
    with pytest.raises(AuthenticationFailed) as caught:
        pki.verifier.verify(chain)
    pki.clock[0] = NOW
    assert caught.value.status == 401
    if reason.endswith("..."):
        assert caught.value.reason.startswith(reason[:-3])
    else:
        assert caught.value.reason == reason


def test_verified_not_after_is_the_earliest_in_the_chain(pki: Pki) -> None:
    inter = pki.ca.intermediate(not_after=NOW + timedelta(hours=3))
    result = pki.verifier.verify(pems(inter.issue_svid(ID)))
    assert result.not_after == inter.certificate.not_valid_after_utc


def test_max_chain_length_is_configurable(pki: Pki) -> None:
    verifier = X509SvidVerifier(pki.verifier.bundles, max_chain_length=1)
    with pytest.raises(AuthenticationFailed) as caught:
        verifier.verify(pems(pki.intermediate.issue_svid(ID)))
    assert caught.value.reason == "certificate chain has 2 entries; at most 1 are accepted"


class RotatingBundle:
    """A bundle source whose authorities a test replaces."""

    def __init__(self, authorities: list[x509.Certificate]) -> None:
        self.authorities = authorities
        self.generation = 0
        self.lookups = 0

    def x509_authorities(self, trust_domain: str) -> Sequence[x509.Certificate] | None:
        self.lookups += 1
        return self.authorities if trust_domain == TD else None

    def rotate(self, authorities: list[x509.Certificate]) -> None:
        self.authorities = authorities
        self.generation += 1


def test_a_repeat_caller_is_not_verified_again(monkeypatch: pytest.MonkeyPatch) -> None:
    ca = TestCA.create(TD)
    verifier = X509SvidVerifier(RotatingBundle([ca.certificate]))
    calls = []
    original = X509SvidVerifier._verify

    def counting(
        self: X509SvidVerifier, chain: tuple[bytes | str, ...], count: int, generation: int
    ) -> object:
        calls.append(chain)
        return original(self, chain, count, generation)

    monkeypatch.setattr(X509SvidVerifier, "_verify", counting)
    chain = pems(ca.issue_svid(ID))
    first = verifier.verify(chain)
    second = verifier.verify(list(chain))
    assert second is first
    assert len(calls) == 1


def test_the_cache_ends_when_the_certificate_expires() -> None:
    ca = TestCA.create(TD)
    clock = [NOW]
    verifier = X509SvidVerifier(StaticX509Bundle({TD: [ca.certificate]}), clock=lambda: clock[0])
    chain = pems(ca.issue_svid(ID, not_after=NOW + timedelta(minutes=10)))
    verifier.verify(chain)
    clock[0] = NOW + timedelta(minutes=11)
    with pytest.raises(AuthenticationFailed, match="leaf certificate expired at"):
        verifier.verify(chain)


def test_the_cache_ends_when_the_bundle_changes() -> None:
    old, new = TestCA.create(TD), TestCA.create(TD)
    bundle = RotatingBundle([old.certificate])
    verifier = X509SvidVerifier(bundle)
    chain = pems(old.issue_svid(ID))
    verifier.verify(chain)
    bundle.rotate([new.certificate])
    with pytest.raises(AuthenticationFailed) as caught:
        verifier.verify(chain)
    assert caught.value.reason.startswith(BAD_CHAIN_PREFIX)
    assert verifier.verify(pems(new.issue_svid(ID))).spiffe_id.uri == ID


def test_the_cache_is_bounded() -> None:
    ca = TestCA.create(TD)
    verifier = X509SvidVerifier(StaticX509Bundle({TD: [ca.certificate]}), cache_size=2)
    for n in range(3):
        verifier.verify(pems(ca.issue_svid(f"{ID}{n}")))
    assert len(verifier._cache) == 2


def test_naive_clock_is_taken_as_utc() -> None:
    ca = TestCA.create(TD)
    verifier = X509SvidVerifier(
        StaticX509Bundle({TD: [ca.certificate]}),
        clock=lambda: datetime.now(timezone.utc).replace(tzinfo=None),
    )
    assert verifier.verify(pems(ca.issue_svid(ID))).spiffe_id.uri == ID


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"cache_size": -1}, "cache_size must be a non-negative integer", id="cache"),
        pytest.param(
            {"max_chain_length": 0}, "max_chain_length must be between 1 and 16", id="zero"
        ),
        pytest.param(
            {"max_chain_length": 17}, "max_chain_length must be between 1 and 16", id="big"
        ),
        pytest.param({"clock": "now"}, "clock must be callable", id="clock"),
    ],
)
def test_configuration_errors(kwargs: dict[str, object], message: str) -> None:
    bundle = StaticX509Bundle({TD: [TestCA.create(TD).certificate]})
    with pytest.raises(ConfigurationError) as caught:
        X509SvidVerifier(bundle, **kwargs)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_bundles_must_be_a_source() -> None:
    with pytest.raises(ConfigurationError, match="is not an X509BundleSource"):
        X509SvidVerifier({"cluster.local": []})  # type: ignore[arg-type]


SPLIT: list[tuple[str, str, str | int]] = [
    ("two", "{a}{b}", 2),
    ("whitespace-between", "{a}\n\n{b}\n", 2),
    ("text-before", "junk{a}", "certificate chain has text outside PEM blocks"),
    ("text-after", "{a}junk", "certificate chain has text outside PEM blocks"),
    (
        "unterminated",
        "{a}-----BEGIN CERTIFICATE-----\nMII",
        "certificate chain has a truncated PEM block",
    ),
    ("empty", "", "certificate chain holds no PEM certificate"),
    ("too-many", "{a}" * 17, "certificate chain has more than 16 entries"),
]


@pytest.mark.parametrize(
    ("template", "expected"), [pytest.param(t, e, id=name) for name, t, e in SPLIT]
)
def test_split_pem_chain(pki: Pki, template: str, expected: str | int) -> None:
    a, b = pems(pki.intermediate.issue_svid(ID))
    text = template.format(a=a, b=b)
    if isinstance(expected, int):
        assert len(split_pem_chain(text)) == expected
        return
    with pytest.raises(AuthenticationFailed) as caught:
        split_pem_chain(text)
    assert caught.value.reason == expected
