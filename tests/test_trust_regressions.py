"""Trust material edge cases: emptied bundles, duplicate trust domains, JWT-SVID algorithms.

* An empty SPIFFE bundle (``"keys": []``) is authoritative: it replaces the
  last good bundle, and no SVID of its trust domain verifies any more (SPIFFE
  Trust Domain and Bundle, sections 3 and 4.1.3). Only content that cannot be
  parsed keeps the last good bundle.
* A trust domain given twice (in one JSON document, or by two sources of one
  :class:`SpiffeBundleSet`) is a configuration error, never "the last wins".
* JWT-SVIDs are signed with exactly the algorithms of the JWT-SVID
  specification, section 2.1.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from peer_middleware import (
    ConfigurationError,
    InvalidToken,
    JwtSvidAuthenticator,
    KubernetesTokenAuthenticator,
    SpiffeJwtBundle,
    StaticJwks,
)
from peer_middleware.bundles import (
    SpiffeBundleSet,
    StaticX509Bundle,
    X509BundleFile,
    parse_spiffe_bundle,
    parse_trust_bundles,
    spiffe_bundle_json,
)
from peer_middleware.errors import AuthenticationFailed
from peer_middleware.request import RequestView
from peer_middleware.testing.pki import TestCA
from peer_middleware.testing.tokens import SigningKey, TokenMinter
from peer_middleware.x509 import X509SvidVerifier

TD = "c.local"
PARTNER = "partner.example"
WORKLOAD = f"spiffe://{TD}/ns/shop/sa/cart"
AUDIENCE = "payments"
EMPTY = b'{"keys": []}'


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA.create(TD)


@pytest.fixture(scope="module")
def other_ca() -> TestCA:
    return TestCA.create(TD)


@pytest.fixture(scope="module")
def partner() -> TestCA:
    return TestCA.create(PARTNER)


def bundle_of(*cas: TestCA) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(spiffe_bundle_json([c.certificate for c in cas]))
    return document


def replace(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically, as Kubernetes and most tools do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def svid(ca: TestCA, spiffe_id: str = WORKLOAD) -> list[bytes]:
    return [ca.issue_svid(spiffe_id).cert_pem]


# --------------------------------------------------------------------------
# An emptied bundle revokes its trust domain.
# --------------------------------------------------------------------------


EMPTIED: list[Any] = [
    pytest.param(lambda: EMPTY, id="keys-empty"),
    pytest.param(
        lambda: json.dumps({"keys": [{"use": "jwt-svid", "kty": "EC", "kid": "k"}]}).encode(),
        id="no-x509-svid-key",
    ),
]


@pytest.mark.parametrize("emptied", EMPTIED)
@pytest.mark.parametrize("cache_size", [1024, 0], ids=["cached", "uncached"])
def test_an_emptied_bundle_replaces_the_last_one_and_verification_fails(
    tmp_path: Path,
    ca: TestCA,
    emptied: Callable[[], bytes],
    cache_size: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="peer_middleware")
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle_of(ca)))
    bundle = X509BundleFile(path, trust_domain=TD, reload_interval=None)
    verifier = X509SvidVerifier(bundle, cache_size=cache_size)
    chain = svid(ca)
    assert verifier.verify(chain).spiffe_id.uri == WORKLOAD
    before = bundle.generation

    replace(path, emptied())

    assert bundle.reload() is True
    assert bundle.generation == before + 1
    assert bundle.trust_domains == {TD}
    assert bundle.x509_authorities(TD) == ()
    with pytest.raises(AuthenticationFailed, match="trust bundle"):
        verifier.verify(chain)
    messages = [r.getMessage() for r in caplog.records]
    assert not any("keeping the last good bundle" in m for m in messages)
    assert any("holds no X.509 authority" in m for m in messages)


def test_an_emptied_bundle_is_seen_through_a_bundle_set(
    tmp_path: Path, ca: TestCA, partner: TestCA
) -> None:
    path = tmp_path / "federation.json"
    path.write_text(json.dumps({TD: bundle_of(ca), PARTNER: bundle_of(partner)}))
    bundle = X509BundleFile(path, reload_interval=None)
    bundles = SpiffeBundleSet(bundle)
    verifier = X509SvidVerifier(bundles)
    mine, theirs = svid(ca), svid(partner, f"spiffe://{PARTNER}/w")
    verifier.verify(mine)
    verifier.verify(theirs)
    generation = bundles.generation

    replace(path, json.dumps({TD: {"keys": []}, PARTNER: bundle_of(partner)}).encode())
    assert bundle.reload() is True

    assert bundles.generation == generation + 1
    assert bundles.x509_authorities(TD) == ()
    with pytest.raises(AuthenticationFailed):
        verifier.verify(mine)
    assert verifier.verify(theirs).spiffe_id.trust_domain == PARTNER


def test_an_empty_bundle_at_first_load_trusts_nothing(
    tmp_path: Path, ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="peer_middleware")
    path = tmp_path / "bundle.json"
    path.write_bytes(EMPTY)
    bundle = X509BundleFile(path, trust_domain=TD, reload_interval=None)
    assert bundle.trust_domains == {TD}
    assert bundle.x509_authorities(TD) == ()
    with pytest.raises(AuthenticationFailed):
        X509SvidVerifier(bundle).verify(svid(ca))
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"trust bundle {str(path)!r}: trust domain {TD!r} holds no X.509 authority: "
        "its X.509-SVIDs are all refused"
    ]
    # Then a bundle with a CA is picked up as usual.
    replace(path, json.dumps(bundle_of(ca)).encode())
    assert bundle.reload() is True
    X509SvidVerifier(bundle).verify(svid(ca))


def test_parsing_an_empty_bundle_gives_no_authority() -> None:
    assert parse_spiffe_bundle(EMPTY) == ()
    assert parse_trust_bundles(EMPTY, trust_domain=TD) == {TD: ()}
    assert parse_trust_bundles(json.dumps({TD: {"keys": []}}).encode()) == {TD: ()}
    static = StaticX509Bundle.from_spiffe_bundle(EMPTY, trust_domain=TD)
    assert static.x509_authorities(TD) == ()
    assert static.trust_domains == {TD}


@pytest.mark.parametrize(
    "content", [pytest.param(b"", id="empty"), pytest.param(b"\n  \n", id="blank")]
)
def test_an_empty_pem_file_is_not_a_bundle(
    tmp_path: Path, ca: TestCA, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # PEM cannot say "no authority" on purpose: an empty file is what a writer
    # that truncated the file and has not written it yet leaves behind.
    path = tmp_path / "bundle.pem"
    path.write_bytes(content)
    with pytest.raises(ConfigurationError) as caught:
        X509BundleFile(path, trust_domain=TD, reload_interval=None)
    assert str(caught.value) == f"trust bundle {str(path)!r}: no certificate in the PEM bundle"

    caplog.set_level(logging.ERROR, logger="peer_middleware")
    replace(path, ca.pem)
    bundle = X509BundleFile(path, trust_domain=TD, reload_interval=None)
    replace(path, content)
    assert bundle.reload() is False
    assert bundle.x509_authorities(TD) == (ca.certificate,)
    assert [r.getMessage() for r in caplog.records] == [
        f"trust bundle {str(path)!r} is invalid, keeping the last good bundle: "
        "no certificate in the PEM bundle"
    ]


def test_an_unparseable_json_bundle_still_keeps_the_last_good_one(
    tmp_path: Path, ca: TestCA
) -> None:
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle_of(ca)))
    bundle = X509BundleFile(path, trust_domain=TD, reload_interval=None)
    for bad in (b'{"keys": [', b'{"keys": {}}', b"{}", b'{"keys": [1]}'):
        replace(path, bad)
        assert bundle.reload() is False
        assert bundle.x509_authorities(TD) == (ca.certificate,)
        assert bundle.generation == 0


@pytest.mark.usefixtures("spiffe_package")
def test_an_emptied_workload_api_bundle_is_known_and_trusts_nothing(ca: TestCA) -> None:
    from spiffe import TrustDomain, X509Bundle, X509BundleSet

    from peer_middleware.workload import WorkloadApiX509Source

    class Fake:
        """``spiffe.X509Source``'s three methods, on spiffe's own types."""

        def __init__(self) -> None:
            self.callbacks: list[Callable[[], None]] = []
            self.set([ca.certificate])

        def set(self, certificates: list[x509.Certificate]) -> None:
            bundle = X509Bundle(TrustDomain(TD), set(certificates))
            self.x509_bundle_set = X509BundleSet.of([bundle])
            for callback in self.callbacks:
                callback()

        def get_x509_context(self) -> Any:
            return self

        def subscribe_for_updates(self, callback: Callable[[], None]) -> None:
            self.callbacks.append(callback)

        def close(self) -> None:
            pass

    fake = Fake()
    source = WorkloadApiX509Source(source=fake)
    verifier = X509SvidVerifier(source)
    chain = svid(ca)
    verifier.verify(chain)
    fake.set([])
    assert source.trust_domains == {TD}
    assert source.x509_authorities(TD) == ()
    with pytest.raises(AuthenticationFailed):
        verifier.verify(chain)


@pytest.fixture
def spiffe_package() -> None:
    pytest.importorskip("spiffe")


def test_a_bundle_set_does_not_look_past_a_source_that_trusts_nothing(ca: TestCA) -> None:
    class Emptied:
        generation = 0

        def x509_authorities(self, trust_domain: str) -> tuple[x509.Certificate, ...] | None:
            return () if trust_domain == TD else None

    class Stale:
        generation = 0

        def x509_authorities(self, trust_domain: str) -> tuple[x509.Certificate, ...] | None:
            return (ca.certificate,) if trust_domain == TD else None

    bundles = SpiffeBundleSet(Emptied(), Stale())
    assert bundles.x509_authorities(TD) == ()
    with pytest.raises(AuthenticationFailed):
        X509SvidVerifier(bundles).verify(svid(ca))


# --------------------------------------------------------------------------
# A trust domain given twice.
# --------------------------------------------------------------------------


def duplicated_exactly(a: dict[str, Any], b: dict[str, Any]) -> bytes:
    # json.dumps cannot write a duplicate key: join two documents by hand.
    return (
        b'{"' + TD.encode() + b'": ' + json.dumps(a).encode() + b', "' + TD.encode() + b'": '
        b"" + json.dumps(b).encode() + b"}"
    )


def duplicated_by_scheme(a: dict[str, Any], b: dict[str, Any]) -> bytes:
    return json.dumps({TD: a, f"spiffe://{TD}": b}).encode()


DUPLICATES = [
    pytest.param(duplicated_exactly, id="same-key"),
    pytest.param(duplicated_by_scheme, id="bare-and-spiffe-uri"),
]


@pytest.mark.parametrize("make", DUPLICATES)
def test_a_trust_domain_twice_in_one_file_is_refused(
    tmp_path: Path, ca: TestCA, other_ca: TestCA, make: Callable[..., bytes]
) -> None:
    data = make(bundle_of(ca), bundle_of(other_ca))
    message = f"trust domain {TD!r} given twice"
    with pytest.raises(ValueError, match=message):
        parse_trust_bundles(data)
    with pytest.raises(ValueError, match=message):
        parse_trust_bundles(data, trust_domain=TD)
    with pytest.raises(ConfigurationError, match=message):
        StaticX509Bundle.from_spiffe_bundle(data)
    path = tmp_path / "federation.json"
    path.write_bytes(data)
    with pytest.raises(ConfigurationError) as caught:
        X509BundleFile(path, reload_interval=None)
    assert str(caught.value) == f"trust bundle {str(path)!r}: {message}"


@pytest.mark.parametrize("make", DUPLICATES)
def test_a_reloaded_file_with_a_trust_domain_twice_keeps_the_last_good_set(
    tmp_path: Path,
    ca: TestCA,
    other_ca: TestCA,
    make: Callable[..., bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="peer_middleware")
    path = tmp_path / "federation.json"
    path.write_text(json.dumps({TD: bundle_of(ca)}))
    bundle = X509BundleFile(path, reload_interval=None)
    replace(path, make(bundle_of(ca), bundle_of(other_ca)))
    assert bundle.reload() is False
    assert bundle.x509_authorities(TD) == (ca.certificate,)
    assert bundle.generation == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"trust bundle {str(path)!r} is invalid, keeping the last good bundle: "
        f"trust domain {TD!r} given twice"
    ]


def test_a_member_twice_in_a_bundle_is_refused(ca: TestCA, other_ca: TestCA) -> None:
    key = json.dumps(bundle_of(ca)["keys"][0])
    other = json.dumps(bundle_of(other_ca)["keys"][0])
    two_keys_arrays = f'{{"keys": [{key}], "keys": [{other}]}}'
    with pytest.raises(ValueError, match="the name 'keys' appears twice in one JSON object"):
        parse_spiffe_bundle(two_keys_arrays)
    with pytest.raises(ValueError, match="the name 'keys' appears twice in one JSON object"):
        parse_trust_bundles(two_keys_arrays.encode(), trust_domain=TD)
    two_uses = key.replace('"use": "x509-svid"', '"use": "jwt-svid", "use": "x509-svid"')
    assert two_uses != key
    with pytest.raises(ValueError, match="the name 'use' appears twice in one JSON object"):
        parse_spiffe_bundle(f'{{"keys": [{two_uses}]}}')
    # A single bundle's own members are not trust domains.
    two_sequences = f'{{"keys": [{key}], "spiffe_sequence": 1, "spiffe_sequence": 2}}'
    with pytest.raises(ValueError, match="spiffe_sequence") as caught:
        parse_trust_bundles(two_sequences.encode(), trust_domain=TD)
    assert str(caught.value) == "the name 'spiffe_sequence' appears twice in one JSON object"
    # Nor are a nested bundle's, in a bundle-set file.
    nested = f'{{"{TD}": {{"keys": [], "keys": [{key}]}}}}'
    with pytest.raises(ValueError, match="keys") as caught:
        parse_trust_bundles(nested.encode())
    assert str(caught.value) == "the name 'keys' appears twice in one JSON object"


def test_two_sources_of_one_trust_domain_are_refused(
    tmp_path: Path, ca: TestCA, other_ca: TestCA, partner: TestCA
) -> None:
    first = StaticX509Bundle({TD: [ca.certificate]})
    second = StaticX509Bundle({TD: [other_ca.certificate], PARTNER: [partner.certificate]})
    with pytest.raises(ConfigurationError) as caught:
        SpiffeBundleSet(first, second)
    assert str(caught.value) == (
        f"trust domain {TD!r} is in two bundle sources of one SpiffeBundleSet: "
        f"{first!r} and {second!r}"
    )
    with pytest.raises(ConfigurationError, match=f"trust domain {TD!r} is in two bundle sources"):
        SpiffeBundleSet(first, first)
    path = tmp_path / "bundle.json"
    path.write_bytes(EMPTY)
    emptied = X509BundleFile(path, trust_domain=TD, reload_interval=None)
    with pytest.raises(ConfigurationError, match=f"trust domain {TD!r} is in two bundle sources"):
        SpiffeBundleSet(emptied, first)
    nested = SpiffeBundleSet(StaticX509Bundle({PARTNER: [partner.certificate]}))
    with pytest.raises(ConfigurationError, match=f"trust domain {PARTNER!r} is in two"):
        SpiffeBundleSet(nested, second)
    assert SpiffeBundleSet(first, nested).trust_domains == {TD, PARTNER}


def test_a_trust_domain_that_appears_in_two_sources_later_trusts_nothing(
    tmp_path: Path, ca: TestCA, other_ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="peer_middleware")
    path = tmp_path / "federation.json"
    path.write_text(json.dumps({PARTNER: {"keys": []}}))
    growing = X509BundleFile(path, reload_interval=None)
    bundles = SpiffeBundleSet(StaticX509Bundle({TD: [ca.certificate]}), growing)
    verifier = X509SvidVerifier(bundles)
    chain = svid(ca)
    verifier.verify(chain)
    replace(path, json.dumps({PARTNER: {"keys": []}, TD: bundle_of(other_ca)}).encode())
    assert growing.reload() is True
    assert bundles.x509_authorities(TD) == ()
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            verifier.verify(chain)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"trust domain {TD!r} is in more than one source of {bundles!r}: "
        "its X.509-SVIDs are all refused"
    ]


# --- the JWT side ------------------------------------------------------------------


def test_a_jwt_bundle_with_a_member_twice_is_refused(tmp_path: Path) -> None:
    first = SigningKey("ec", kid="one")
    second = SigningKey("ec", kid="two")
    path = tmp_path / "bundle.json"
    one = json.dumps(first.jwk(use="jwt-svid"))
    two = json.dumps(second.jwk(use="jwt-svid"))
    path.write_text(f'{{"keys": [{one}], "keys": [{two}]}}')
    with pytest.raises(ConfigurationError, match="the name 'keys' appears twice"):
        SpiffeJwtBundle({TD: path})
    with pytest.raises(ConfigurationError, match="the name 'keys' appears twice"):
        StaticJwks(path=path)
    two_uses = one.replace('"use": "jwt-svid"', '"use": "x509-svid", "use": "jwt-svid"')
    assert two_uses != one
    path.write_text(f'{{"keys": [{two_uses}]}}')
    with pytest.raises(ConfigurationError, match="the name 'use' appears twice"):
        SpiffeJwtBundle({TD: path})


def test_a_reloaded_jwt_bundle_with_a_member_twice_keeps_the_last_keys(tmp_path: Path) -> None:
    first = SigningKey("ec", kid="one")
    second = SigningKey("ec", kid="two")
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps({"keys": [first.jwk(use="jwt-svid")]}))
    with SpiffeJwtBundle({TD: path}, poll_interval=60) as source:
        one = json.dumps(first.jwk(use="jwt-svid"))
        two = json.dumps(second.jwk(use="jwt-svid"))
        replace(path, f'{{"keys": [{one}], "keys": [{two}]}}'.encode())
        assert source.refresh() is False
        assert set(source.key_set().by_kid) == {"one"}
        assert source.last_error is not None
        assert "the name 'keys' appears twice" in source.last_error


# --------------------------------------------------------------------------
# JWT-SVID algorithms.
# --------------------------------------------------------------------------


SPEC_ALGORITHMS = {
    "RS256": "rsa",
    "RS384": "rsa",
    "RS512": "rsa",
    "ES256": "ec",
    "ES384": "ec384",
    "ES512": "ec521",
    "PS256": "rsa",
    "PS384": "rsa",
    "PS512": "rsa",
}


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey("rsa")


@pytest.fixture(scope="module")
def signing_keys() -> dict[str, SigningKey]:
    return {
        algorithm: SigningKey(kind, kid=algorithm, algorithm=algorithm)  # type: ignore[arg-type]
        for algorithm, kind in SPEC_ALGORITHMS.items()
    }


def bearer(token: str) -> RequestView:
    return RequestView("GET", "/", ("10.0.0.9", 40000), {"authorization": f"Bearer {token}"})


def test_the_jwt_svid_default_is_exactly_the_specification_list(rsa_key: SigningKey) -> None:
    auth = JwtSvidAuthenticator(keys=StaticJwks({"keys": [rsa_key.jwk()]}), audience=AUDIENCE)
    assert auth.algorithms == frozenset(SPEC_ALGORITHMS)


@pytest.mark.parametrize("algorithm", sorted(SPEC_ALGORITHMS))
def test_a_jwt_svid_signed_with_each_specification_algorithm_verifies(
    algorithm: str, signing_keys: dict[str, SigningKey], tmp_path: Path
) -> None:
    key = signing_keys[algorithm]
    minter = TokenMinter(keys=[key])
    path = tmp_path / f"{TD}.json"
    path.write_text(json.dumps(minter.spiffe_bundle()))
    with SpiffeJwtBundle({TD: path}) as source:
        auth = JwtSvidAuthenticator(keys=source, audience=AUDIENCE)
        token = minter.jwt_svid(WORKLOAD, AUDIENCE)
        header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
        assert header["alg"] == algorithm
        peer = auth.authenticate(bearer(token))
        assert peer is not None
        assert peer.principal == WORKLOAD


def test_an_eddsa_jwt_svid_is_refused_by_default() -> None:
    minter = TokenMinter(kind="ed25519")
    auth = JwtSvidAuthenticator(keys=StaticJwks(minter.jwks()), audience=AUDIENCE)
    assert "EdDSA" not in auth.algorithms
    with pytest.raises(InvalidToken) as caught:
        auth.authenticate(bearer(minter.jwt_svid(WORKLOAD, AUDIENCE)))
    assert caught.value.reason == "jwt-svid token: algorithm 'EdDSA' is not allowed"


@pytest.mark.parametrize(
    "algorithms",
    [["EdDSA"], ["RS256", "EdDSA"], ("ES256", "EdDSA", "HS256"), iter(["EdDSA"])],
    ids=["alone", "with-a-spec-one", "with-hmac", "generator"],
)
def test_eddsa_cannot_be_configured_for_jwt_svids(algorithms: Any, rsa_key: SigningKey) -> None:
    with pytest.raises(ConfigurationError) as caught:
        JwtSvidAuthenticator(
            keys=StaticJwks({"keys": [rsa_key.jwk()]}), audience=AUDIENCE, algorithms=algorithms
        )
    message = str(caught.value)
    assert message.startswith(
        "JWT-SVID algorithms must be among RS256, RS384, RS512, ES256, ES384, ES512, "
        "PS256, PS384, PS512 (JWT-SVID specification, section 2.1); refused: "
    )
    assert "'EdDSA'" in message


def test_a_subset_of_the_specification_list_can_be_configured(rsa_key: SigningKey) -> None:
    auth = JwtSvidAuthenticator(
        keys=StaticJwks({"keys": [rsa_key.jwk()]}), audience=AUDIENCE, algorithms=iter(["RS256"])
    )
    assert auth.algorithms == {"RS256"}


def test_kubernetes_tokens_keep_their_own_default(rsa_key: SigningKey) -> None:
    from peer_middleware.jwt import DEFAULT_ALGORITHMS, JWT_SVID_ALGORITHMS, KUBERNETES_ALGORITHMS

    auth = KubernetesTokenAuthenticator(
        keys=StaticJwks({"keys": [rsa_key.jwk()]}),
        audience=AUDIENCE,
        issuers="https://issuer.example",
        trust_domain="cluster.local",
    )
    assert auth.algorithms == frozenset(KUBERNETES_ALGORITHMS)
    assert DEFAULT_ALGORITHMS == KUBERNETES_ALGORITHMS
    assert frozenset(JWT_SVID_ALGORITHMS) == frozenset(SPEC_ALGORITHMS)
