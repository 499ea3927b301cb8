"""Property-based tests of every parser and of the whole middleware (hypothesis).

Each parser is fed arbitrary text and text built from its grammar: it either
returns a value that satisfies the parser's invariants or raises one of its
documented errors, nothing else. The middleware is driven with arbitrary
methods, paths, raw paths, headers and client addresses: it answers 200, 400,
401 or 403, never lets an exception escape and never reaches its own
"internal error" refusal; and a path the normaliser accepts is decided
exactly as its normal form is.

Profiles: ``HYPOTHESIS_PROFILE=dev`` (the default) or ``ci`` (the default
when ``CI=true``: derandomized, so a CI run is reproducible, and no example
database). ``HYPOTHESIS_PROFILE=thorough`` runs ten times as many examples.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, unquote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from peer_middleware import (
    Anyone,
    Authenticated,
    Namespace,
    Peer,
    PeerMiddleware,
    PeerWSGIMiddleware,
    Policy,
    Principal,
    ProblemResponse,
    Proof,
    Refusal,
    SpiffeId,
    TrustDomain,
    XfccAuthenticator,
    allow,
    audit,
    deny,
)
from peer_middleware.asgi import DECISION_SCOPE_KEY
from peer_middleware.authenticators import (
    ForwardedCertificateAuthenticator,
    JwtSvidAuthenticator,
    KubernetesTokenAuthenticator,
    LinkerdIdentityAuthenticator,
    MtlsAuthenticator,
)
from peer_middleware.bundles import StaticX509Bundle
from peer_middleware.certs import (
    decode_der_base64,
    decode_der_base64_list,
    decode_der_concatenation,
    decode_pem,
    decode_sf_binary,
    decode_sf_binary_list,
)
from peer_middleware.errors import (
    AuthenticationFailed,
    BadRequest,
    CertificateDecodingError,
    InvalidSpiffeIdError,
    InvalidToken,
)
from peer_middleware.keys import StaticJwks
from peer_middleware.paths import (
    MAX_PATH_LENGTH,
    check_method,
    check_raw_target,
    normalise_path,
    quote_path,
)
from peer_middleware.presets import Preset
from peer_middleware.request import RequestView
from peer_middleware.testing import TestCA, forwarded_cert_headers, linkerd_client_id
from peer_middleware.testing.tokens import TokenMinter
from peer_middleware.x509 import X509SvidVerifier, split_pem_chain
from peer_middleware.xfcc import XfccElement, XfccSyntaxError, format_xfcc, parse_xfcc

# -- profiles ------------------------------------------------------------------------

settings.register_profile(
    "dev",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True, database=None)
settings.register_profile("thorough", parent=settings.get_profile("dev"), max_examples=3000)
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or (
    "ci" if os.environ.get("CI") == "true" else "dev"
)
#: Applied to every property below (the profile is not loaded globally).
PROPERTY = settings(settings.get_profile(_PROFILE))
#: Properties that run the whole middleware or verify certificates: fewer examples.
HEAVY = settings(PROPERTY, max_examples=max(PROPERTY.max_examples * 2 // 3, 1))

# -- shared strategies ---------------------------------------------------------------

#: Text as an ASGI server produces it (no lone surrogates).
TEXT = st.text(st.characters(codec="utf-8"), max_size=60)
LATIN1 = st.text(st.characters(codec="latin-1"), max_size=80)
TD_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.-_"
SEGMENT_CHARS = TD_CHARS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

trust_domains = st.text(TD_CHARS, min_size=1, max_size=20)
spiffe_segments = st.text(SEGMENT_CHARS, min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..")
)
valid_spiffe_ids = st.builds(
    lambda td, segs: "spiffe://" + td + "".join("/" + s for s in segs),
    trust_domains,
    st.lists(spiffe_segments, max_size=5),
)


def mutate(text: str, data: st.DataObject, alphabet: str) -> str:
    """Insert, delete or replace one character of ``text``."""
    if not text:
        return data.draw(st.text(alphabet, max_size=3))
    index = data.draw(st.integers(0, len(text) - 1))
    op = data.draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
    char = data.draw(st.sampled_from(alphabet))
    if op == "insert":
        return text[:index] + char + text[index:]
    if op == "delete":
        return text[:index] + text[index + 1 :]
    if op == "replace":
        return text[:index] + char + text[index + 1 :]
    return text[:index]


# -- SPIFFE IDs ----------------------------------------------------------------------

SPIFFE_NOISE = TD_CHARS + "ABC/:@?#%. \x00é"


def parse_or_error(value: str) -> SpiffeId | InvalidSpiffeIdError:
    try:
        return SpiffeId.parse(value)
    except InvalidSpiffeIdError as exc:
        return exc


@PROPERTY
@given(st.one_of(TEXT, valid_spiffe_ids, st.builds(lambda s: "spiffe://" + s, TEXT)))
@example("spiffe://")
@example("spiffe://td/")
@example("spiffe://td//a")
@example("spiffe://td/./a")
@example("spiffe://TD/a")
@example("spiffe://td:443/a")
@example("spiffe://user@td/a")
def test_spiffe_parse_accepts_or_raises_its_errors(value: str) -> None:
    sid = parse_or_error(value)
    if isinstance(sid, InvalidSpiffeIdError):
        assert sid.value == value  # the error names the input it refused
        return
    assert str(sid) == value
    assert value == f"spiffe://{sid.trust_domain}{sid.path}"
    assert SpiffeId.parse(str(sid)) == sid
    assert SpiffeId.from_parts(sid.trust_domain, sid.path) == sid
    assert len(value.encode()) <= 2048


@PROPERTY
@given(valid_spiffe_ids)
def test_spiffe_str_parse_round_trip(value: str) -> None:
    sid = SpiffeId.parse(value)
    assert str(sid) == value
    assert SpiffeId.parse(str(sid)) == sid
    parts = sid.path.split("/")
    if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
        assert (sid.namespace, sid.service_account) == (parts[2], parts[4])
    else:
        assert (sid.namespace, sid.service_account) == (None, None)


@PROPERTY
@given(valid_spiffe_ids, st.data())
def test_spiffe_mutations_stay_strict(value: str, data: st.DataObject) -> None:
    mutated = mutate(value, data, SPIFFE_NOISE)
    try:
        sid = SpiffeId.parse(mutated)
    except InvalidSpiffeIdError:
        return
    # Whatever survived a mutation is still a well-formed ID.
    rest = mutated[len("spiffe://") :]
    td, _, path = rest.partition("/")
    assert td
    assert set(td) <= set(TD_CHARS)
    assert sid.trust_domain == td
    for segment in path.split("/") if path else []:
        assert segment
        assert segment not in (".", "..")
        assert set(segment) <= set(SEGMENT_CHARS)


# -- XFCC ----------------------------------------------------------------------------

XFCC_TEXT = st.text(
    st.one_of(st.sampled_from(list(',;="\\ \tByURIHashDNSCertChainSubject')), st.characters()),
    max_size=80,
)
# Control characters (but HTAB) are refused anywhere in the header, so a
# value holding one cannot be formatted.
XFCC_VALUE_CHARS = st.characters(
    blacklist_categories=("Cs",),
    blacklist_characters="".join(map(chr, [*range(0x09), *range(0x0A, 0x20), 0x7F])),
)
xfcc_values = st.one_of(
    st.text(XFCC_VALUE_CHARS, max_size=20),
    valid_spiffe_ids,
    st.text(',;="\\ \t=abc', max_size=10),
)
xfcc_elements = st.builds(
    XfccElement,
    by=st.lists(xfcc_values, max_size=2).map(tuple),
    hash=st.none() | xfcc_values,
    cert=st.none() | xfcc_values,
    chain=st.none() | xfcc_values,
    subject=st.none() | xfcc_values,
    uri=st.lists(xfcc_values, max_size=2).map(tuple),
    dns=st.lists(xfcc_values, max_size=2).map(tuple),
).filter(lambda e: e != XfccElement())


@PROPERTY
@given(XFCC_TEXT)
@example('By=a;URI="x\\"y",Hash=00')
@example("URI=a;")
@example("URI=a,")
@example('URI="unterminated')
@example("uri = spiffe://td/a ; dns=x")
def test_xfcc_parse_accepts_or_raises_syntax_error(value: str) -> None:
    try:
        elements = parse_xfcc(value)
    except XfccSyntaxError:
        return
    assert elements
    assert all(isinstance(e, XfccElement) and e != XfccElement() for e in elements)
    # format_xfcc writes what parse_xfcc read: parse ∘ format ∘ parse == parse.
    assert parse_xfcc(format_xfcc(elements)) == elements


@PROPERTY
@given(st.lists(xfcc_elements, min_size=1, max_size=4))
def test_xfcc_format_parse_round_trip(elements: list[XfccElement]) -> None:
    text = format_xfcc(elements)
    assert parse_xfcc(text) == tuple(elements)
    assert format_xfcc(parse_xfcc(text)) == text


@PROPERTY
@given(st.lists(xfcc_elements, min_size=1, max_size=3), st.data())
def test_xfcc_authenticator_refuses_only_with_401(
    elements: list[XfccElement], data: st.DataObject
) -> None:
    value = data.draw(st.one_of(st.just(format_xfcc(elements)), XFCC_TEXT))
    for authenticator in XFCC_AUTHENTICATORS:
        request = RequestView("GET", "/", ("127.0.0.1", 1), {"x-forwarded-client-cert": value})
        try:
            peer = authenticator.authenticate(request)
        except AuthenticationFailed:
            continue
        assert peer is not None
        element = parse_xfcc(value)[-1]
        assert element.uri == (peer.principal,)
        assert not peer.spiffe_id.is_trust_domain_id


XFCC_AUTHENTICATORS = [
    XfccAuthenticator(trusted_proxies=["127.0.0.1"], cache_size=0),
    XfccAuthenticator(
        trusted_proxies=["127.0.0.1"], forward_client_cert="append_forward", cache_size=0
    ),
]


# -- request paths -------------------------------------------------------------------

PATH_PIECES = [
    "healthz", "public", "payments", "admin", "files", "items", "exact", "secret",
    "a", "b", "c", "42", "007", "x y", "é", "%2F", "%41", "%", "~u", ".", "..", "",
    ";", "a;b=c", ";x", "..;", ":", "@", "*", "+", "-", "_", ".hidden", "...",
]  # fmt: skip
path_segments = st.one_of(st.sampled_from(PATH_PIECES), st.text(st.characters(), max_size=5))
structured_paths = st.builds(lambda segs: "/" + "/".join(segs), st.lists(path_segments, max_size=8))
any_paths = st.one_of(structured_paths, st.text(st.characters(), max_size=40))


def accepted(path: str) -> str | None:
    try:
        return normalise_path(path)
    except BadRequest:
        return None


@PROPERTY
@given(any_paths)
@example("")
@example("/a/../../b")
@example("/a/./b/.")
@example("//a;p=1//b/..;/c")
@example("/a\\b")
@example("/a\x00")
@example("/a//\ud800")  # was accepted, and the ASGI adapter failed to quote it back
def test_normalise_path_is_idempotent_and_canonical(path: str) -> None:
    normal = accepted(path)
    if normal is None:
        return
    assert normalise_path(normal) == normal
    assert normal.startswith("/")
    assert "//" not in normal
    assert ";" not in normal  # per-segment parameters are removed
    segments = normal[1:].split("/")
    for index, segment in enumerate(segments):
        assert segment not in (".", "..")
        assert segment or index == len(segments) - 1
    assert len(normal) <= MAX_PATH_LENGTH


@PROPERTY
@given(st.text(st.characters(), max_size=60) | st.builds(quote, TEXT) | LATIN1)
@example("/a%2fb")
@example("/a%zz")
@example("/%C3")
@example("/%C3a%A9")
@example("/a#frag")
@example("/a?%zz")
def test_check_raw_target_raises_only_bad_request(raw: str) -> None:
    try:
        check_raw_target(raw)
    except BadRequest:
        return
    path = raw.partition("?")[0]
    assert "#" not in raw
    # What passes decodes as UTF-8 and hides no separator or control character.
    decoded = unquote(path, errors="strict")
    assert decoded.count("/") == path.count("/")
    assert decoded.count("\\") == path.count("\\")
    for forbidden in ("%2f", "%5c", "%00", "%7f"):
        assert forbidden not in path.lower()


@PROPERTY
@given(structured_paths)
def test_quote_path_round_trips_and_passes_check_raw_target(path: str) -> None:
    normal = accepted(path)
    assume(normal is not None)
    assert normal is not None
    raw = quote_path(normal)
    assert raw.isascii()
    assert unquote(raw) == normal
    check_raw_target(raw)
    assert normalise_path(unquote(raw)) == normal


@PROPERTY
@given(st.one_of(st.sampled_from(["GET", "get", "M-SEARCH", "", "GET ", "G\x00"]), TEXT))
def test_check_method_accepts_only_tokens(method: str) -> None:
    try:
        assert check_method(method) == method
    except BadRequest:
        return
    assert method
    assert len(method) <= 32
    assert all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in method)


# -- forwarded certificates: decoders ------------------------------------------------


def der_item(content: bytes, long_form: int) -> bytes:
    """A DER SEQUENCE holding ``content``, its length in short or long form."""
    size = len(content)
    if size < 128 and not long_form:
        return b"\x30" + bytes([size]) + content
    count = max(long_form, (size.bit_length() + 7) // 8, 1)
    return b"\x30" + bytes([0x80 | count]) + size.to_bytes(count, "big") + content


fake_ders = st.builds(der_item, st.binary(max_size=300), st.integers(0, 3))
der_lists = st.lists(fake_ders, min_size=1, max_size=8)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pem(data: bytes, separator: str = "\n") -> str:
    body = b64(data)
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return separator.join(["-----BEGIN CERTIFICATE-----", *lines, "-----END CERTIFICATE-----"])


DECODERS: dict[str, Callable[[str], object]] = {
    "pem": decode_pem,
    "der_base64": decode_der_base64,
    "der_base64_list": decode_der_base64_list,
    "sf_binary": decode_sf_binary,
    "sf_binary_list": decode_sf_binary_list,
    "der_concatenation": decode_der_concatenation,
}
DECODER_TEXT = st.lists(
    st.one_of(
        st.sampled_from(list("ABCDEFabcdef0123456789+/=:,% \t\r\n-")),
        st.sampled_from(["-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----", "MA=="]),
        st.characters(),
    ),
    max_size=40,
).map("".join)


@PROPERTY
@given(st.sampled_from(sorted(DECODERS)), st.one_of(DECODER_TEXT, st.builds(b64, st.binary())))
@example("der_concatenation", "MIA=")
@example("der_concatenation", "MA==")
@example("sf_binary", ":")
@example("sf_binary_list", ":a:,")
@example("pem", "-----BEGIN CERTIFICATE-----")
def test_decoders_raise_only_their_error(name: str, value: str) -> None:
    try:
        result = DECODERS[name](value)
    except CertificateDecodingError:
        return
    assert isinstance(result, (bytes, list))


@PROPERTY
@given(der_lists, st.sampled_from(["\n", " ", "\r\n"]))
def test_pem_round_trip(ders: list[bytes], separator: str) -> None:
    text = separator.join(pem(d, separator) for d in ders)
    assert decode_pem(text) == ders


@PROPERTY
@given(der_lists, st.booleans())
def test_base64_decoders_round_trip(ders: list[bytes], escaped: bool) -> None:
    assert decode_der_base64(b64(ders[0])) == [ders[0]]
    joined = ",".join(b64(d) for d in ders)
    assert decode_der_base64_list(quote(joined, safe="") if escaped else joined) == ders
    assert decode_der_concatenation(b64(b"".join(ders))) == ders


@PROPERTY
@given(der_lists, st.booleans())
def test_structured_field_round_trip(ders: list[bytes], padded: bool) -> None:
    items = [f":{b64(d) if padded else b64(d).rstrip('=')}:" for d in ders]
    assert decode_sf_binary(items[0]) == ders[0]
    assert decode_sf_binary_list(", ".join(items)) == ders


# -- forwarded certificates: every preset --------------------------------------------


class _Verified:
    spiffe_id = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/checkout")
    sha256 = "0" * 64
    not_after = None


class AcceptingVerifier:
    """Accepts any decoded chain: exercises decoding without real certificates."""

    def __init__(self) -> None:
        self.seen: list[list[bytes]] = []

    def verify(self, chain: list[bytes]) -> _Verified:
        assert chain
        assert all(isinstance(c, bytes) and c for c in chain)
        self.seen.append(list(chain))
        return _Verified()


CA = TestCA.create("cluster.local")
INTERMEDIATE = CA.intermediate()
CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
DIRECT_SVID = CA.issue_svid(CHECKOUT)
CHAINED_SVID = INTERMEDIATE.issue_svid(CHECKOUT)
VERIFIER = X509SvidVerifier(StaticX509Bundle({"cluster.local": [CA.certificate]}))
#: Trusts another CA of the same trust domain: path building finds no issuer.
STRANGER_VERIFIER = X509SvidVerifier(
    StaticX509Bundle({"cluster.local": [TestCA.create("cluster.local").certificate]})
)
STATUS_WORDS = ["SUCCESS", "NONE", "FAILED:x", "0", "1", "true", "false", "(null)", "<nil>", ""]


def preset_headers(preset: Preset, data: st.DataObject) -> dict[str, str]:
    """Each header of ``preset``: absent, as the proxy sends it, mutated, or noise."""
    authenticator = ForwardedCertificateAuthenticator(
        preset, trusted_proxies=["127.0.0.1"], verifier=AcceptingVerifier()
    )
    svid = data.draw(st.sampled_from([DIRECT_SVID, CHAINED_SVID, None]))
    real = forwarded_cert_headers(preset, svid)
    headers: dict[str, str] = {}
    for name in authenticator.header_names:
        choice = data.draw(st.sampled_from(["absent", "real", "mutated", "word", "noise"]))
        if choice == "real" and name in real:
            headers[name] = real[name]
        elif choice == "mutated" and real.get(name):
            headers[name] = mutate(real[name], data, "A/+=%:, -\t0")
        elif choice == "word":
            headers[name] = data.draw(st.sampled_from(STATUS_WORDS))
        elif choice == "noise":
            headers[name] = data.draw(DECODER_TEXT)
    return headers


@HEAVY
@given(st.sampled_from(list(Preset)), st.data())
def test_forwarded_presets_decode_or_refuse_with_401(preset: Preset, data: st.DataObject) -> None:
    headers = preset_headers(preset, data)
    accepting = AcceptingVerifier()
    for verifier in (accepting, VERIFIER):
        authenticator = ForwardedCertificateAuthenticator(
            preset, trusted_proxies=["127.0.0.1"], verifier=verifier, cache_size=0
        )
        request = RequestView("GET", "/", ("127.0.0.1", 1), dict(headers))
        try:
            peer = authenticator.authenticate(request)
        except AuthenticationFailed:
            continue
        if peer is not None:
            assert peer.principal == CHECKOUT
        if verifier is accepting and accepting.seen:
            chain = accepting.seen[-1]
            assert len(chain) <= authenticator.max_chain_length


@PROPERTY
@given(st.sampled_from(list(Preset)), st.sampled_from(["direct", "chained", "none"]))
def test_forwarded_presets_accept_what_the_proxy_sends(preset: Preset, which: str) -> None:
    with_chain = preset not in (Preset.NGINX, Preset.CADDY, Preset.AWS_ALB, Preset.AZURE)
    svid = {"direct": DIRECT_SVID, "chained": CHAINED_SVID if with_chain else DIRECT_SVID}.get(
        which
    )
    authenticator = ForwardedCertificateAuthenticator(
        preset, trusted_proxies=["127.0.0.1"], verifier=VERIFIER
    )
    headers = forwarded_cert_headers(preset, svid)
    peer = authenticator.authenticate(RequestView("GET", "/", ("127.0.0.1", 1), headers))
    if svid is None:
        assert peer is None
    else:
        assert peer is not None
        assert peer.principal == CHECKOUT


LINKERD = LinkerdIdentityAuthenticator(trusted_proxies=["127.0.0.1"], trust_domain="cluster.local")
dns_labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@PROPERTY
@given(dns_labels, dns_labels, st.data())
def test_linkerd_identity_round_trip_and_mutations(
    namespace: str, account: str, data: st.DataObject
) -> None:
    sid = f"spiffe://cluster.local/ns/{namespace}/sa/{account}"
    value = linkerd_client_id(sid)
    assert LINKERD.parse(value) == SpiffeId.parse(sid)
    mutated = mutate(value, data, "a.-_A/:0 ")
    try:
        parsed = LINKERD.parse(mutated)
    except AuthenticationFailed:
        return
    assert parsed.namespace is not None
    assert parsed.service_account is not None
    assert linkerd_client_id(parsed.uri) == mutated


# -- X.509 chains --------------------------------------------------------------------

LEAF_DER = DIRECT_SVID.der
LEAF_PEM = DIRECT_SVID.cert_pem.decode("ascii")


def with_serial(der: bytes, first: int, *, zero: bool = False) -> bytes:
    """``der`` with its serial number's first byte replaced (or the whole serial zeroed)."""
    serial = x509.load_der_x509_certificate(der).serial_number
    content = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    field = bytes([0x02, len(content)]) + content
    position = der.index(field) + 2
    replaced = bytes(len(content)) if zero else bytes([first]) + content[1:]
    return der[:position] + replaced + der[position + len(content) :]


def replaced(der: bytes, old: bytes, new: bytes) -> bytes:
    assert der.count(old) == 1
    return der.replace(old, new)


NEGATIVE_SERIAL_LEAF = with_serial(LEAF_DER, 0x80)
ZERO_SERIAL_LEAF = with_serial(LEAF_DER, 0, zero=True)
#: The subjectAltName's OID turned into keyUsage's: cryptography's DuplicateExtension.
DUPLICATE_EXTENSION_LEAF = replaced(LEAF_DER, b"\x06\x03\x55\x1d\x11", b"\x06\x03\x55\x1d\x0f")
#: X.509 version 26: cryptography's InvalidVersion.
INVALID_VERSION_LEAF = replaced(LEAF_DER, b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x1a")
ECDSA_SHA256 = b"\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02"
UNKNOWN_ALGORITHM = b"\x06\x08\x2a\x86\x48\xce\x3d\x04\x02\x03"
#: The subject's O=SPIRE tagged [UNIVERSAL 1] constructed: cryptography parses the subject
#: only during path validation, and raised a ValueError there.
BAD_SUBJECT_LEAF = replaced(LEAF_DER, b"\x0c\x05SPIRE", b"\x21\x05SPIRE").replace(
    ECDSA_SHA256, UNKNOWN_ALGORITHM, 1
)
#: The subject's C=US turned into a BIT STRING under another OID, likewise: a TypeError.
BIT_STRING_NAME_LEAF = replaced(
    LEAF_DER,
    b"\x31\x0b\x30\x09\x06\x03\x55\x04\x06\x13\x02US\x31\x0e",  # subject's C=US, then O
    b"\x31\x0b\x30\x09\x06\x03\x55\x04\x30\x03\x02\x00S\x31\x0e",
).replace(ECDSA_SHA256, UNKNOWN_ALGORITHM, 1)


@PROPERTY
@given(st.one_of(DECODER_TEXT, st.builds(lambda n: LEAF_PEM * n, st.integers(0, 3))), st.data())
def test_split_pem_chain_raises_only_authentication_failed(value: str, data: st.DataObject) -> None:
    value = data.draw(st.sampled_from([value, mutate(value, data, "-\n A=")]))
    try:
        blocks = split_pem_chain(value)
    except AuthenticationFailed:
        return
    assert blocks
    for block in blocks:
        assert block.startswith("-----BEGIN CERTIFICATE-----")
        assert block.endswith("-----END CERTIFICATE-----")


@HEAVY
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.builds(
                lambda i, b: LEAF_DER[:i] + bytes([b]) + LEAF_DER[i + 1 :],
                st.integers(0, len(LEAF_DER) - 1),
                st.integers(0, 255),
            ),
            st.builds(lambda n: LEAF_DER[:n], st.integers(0, len(LEAF_DER))),
            st.just(LEAF_DER),
            st.builds(lambda t: LEAF_PEM.replace("A", t, 1), st.text(max_size=3)),
        ),
        max_size=3,
    )
)
@example([NEGATIVE_SERIAL_LEAF])  # cryptography warned (an error under -W error)
@example([ZERO_SERIAL_LEAF])
@example([LEAF_DER, NEGATIVE_SERIAL_LEAF])
@example([DUPLICATE_EXTENSION_LEAF])  # these four escaped the verifier's except clauses
@example([INVALID_VERSION_LEAF])
@example([BAD_SUBJECT_LEAF])
@example([BIT_STRING_NAME_LEAF])
def test_x509_verify_raises_only_authentication_failed(chain: list[bytes | str]) -> None:
    for verifier in (VERIFIER, STRANGER_VERIFIER):
        try:
            svid = verifier.verify(chain)
        except AuthenticationFailed:
            continue
        assert verifier is VERIFIER
        assert svid.spiffe_id.uri == CHECKOUT


def test_unparseable_certificates_are_refused_with_401() -> None:
    intermediate = INTERMEDIATE.certificate.public_bytes(Encoding.DER)
    bad_intermediates = {
        with_serial(intermediate, 0x80): "non-positive serial",
        with_serial(intermediate, 0, zero=True): "non-positive serial",
        replaced(intermediate, b"\x06\x03\x55\x1d\x13", b"\x06\x03\x55\x1d\x0f"): "not DER",
        replaced(intermediate, b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x1a"): "not DER",
    }
    authenticator = ForwardedCertificateAuthenticator(
        Preset.HAPROXY, trusted_proxies=["127.0.0.1"], verifier=VERIFIER
    )
    for bad, reason in bad_intermediates.items():
        headers = forwarded_cert_headers(Preset.HAPROXY, CHAINED_SVID)
        headers["x-ssl-client-chain"] = b64(bad)
        with pytest.raises(AuthenticationFailed, match=reason):
            authenticator.authenticate(RequestView("GET", "/", ("127.0.0.1", 1), headers))
    bad_leaves = {
        NEGATIVE_SERIAL_LEAF: "serial number that is not positive",
        ZERO_SERIAL_LEAF: "serial number that is not positive",
        DUPLICATE_EXTENSION_LEAF: "malformed extensions",
        INVALID_VERSION_LEAF: "not a valid certificate",
        BAD_SUBJECT_LEAF: "certificate chain is malformed",
        BIT_STRING_NAME_LEAF: "certificate chain is malformed",
    }
    for leaf, reason in bad_leaves.items():
        with pytest.raises(AuthenticationFailed, match=reason):
            STRANGER_VERIFIER.verify([leaf])
        with pytest.raises(AuthenticationFailed):
            VERIFIER.verify([leaf])


# -- bearer tokens -------------------------------------------------------------------

MINTER = TokenMinter()
KEYS = StaticJwks(MINTER.jwks(), trust_domain="cluster.local")
GOOD_TOKEN = MINTER.jwt_svid(CHECKOUT, "payments", lifetime=10 * 365 * 86400)


class _Recorded(Exception):
    pass


class RecordingJwt(JwtSvidAuthenticator):
    """Stops at verification and reports the extracted token."""

    def _verify(self, token: str, signed: str, now: float) -> Any:
        raise _Recorded(token)


def extracted(authenticator: Any, request: RequestView) -> tuple[str, str | None]:
    try:
        peer = authenticator.authenticate(request)
    except _Recorded as found:
        return ("token", found.args[0])
    except InvalidToken:
        return ("refused", None)
    assert peer is None
    return ("none", None)


authorization_values = st.one_of(
    st.builds(
        lambda scheme, gap, token, tail: scheme + gap + token + tail,
        st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Bearer,", "", "Bearerx"]),
        st.sampled_from([" ", "  ", "\t", "", " \t"]),
        st.one_of(st.just(GOOD_TOKEN), st.from_regex(r"[A-Za-z0-9._~+/=-]{0,20}", fullmatch=True)),
        st.sampled_from(["", " ", ",", ", Bearer x", "\t", ",Basic abc"]),
    ),
    LATIN1,
)


@PROPERTY
@given(authorization_values)
@example("Bearer ")
@example("Bearer  x")
@example("bearer\tx")
@example("Basic x, Bearer y")
def test_bearer_fast_path_extracts_what_the_general_path_does(value: str) -> None:
    simple = RecordingJwt(keys=KEYS, audience="payments", cache_size=0)
    request = RequestView("GET", "/", None, {"authorization": value})
    outcome = extracted(simple, request)
    try:
        token = simple._extract(request)
    except InvalidToken:
        assert outcome == ("refused", None)
        return
    assert outcome == (("none", None) if token is None else ("token", token))
    if token is not None:
        assert token == token.strip(" \t")
        assert token
        assert value.lower().startswith("bearer ")


@PROPERTY
@given(st.none() | authorization_values, st.none() | LATIN1, st.none() | LATIN1)
def test_bearer_extraction_from_every_place_raises_only_invalid_token(
    authorization: str | None, other: str | None, query_token: str | None
) -> None:
    authenticator = RecordingJwt(
        keys=KEYS,
        audience="payments",
        header="x-token",
        query_parameter="access_token",
        cache_size=0,
    )
    headers = {}
    if authorization is not None:
        headers["authorization"] = authorization
    if other is not None:
        headers["x-token"] = other
    query = "" if query_token is None else "access_token=" + quote(query_token)
    kind, token = extracted(authenticator, RequestView("GET", "/", None, headers, query))
    places = sum(
        (
            authorization is not None and authorization.partition(" ")[0].lower() == "bearer",
            other is not None,
            query_token is not None,
        )
    )
    if kind == "token":
        assert places == 1
        assert token
        assert len(token) <= authenticator.max_token_length
    if places > 1:
        assert kind == "refused"


JWT_AUTHENTICATOR = JwtSvidAuthenticator(keys=KEYS, audience="payments", cache_size=16)
K8S_AUTHENTICATOR = KubernetesTokenAuthenticator(
    keys=KEYS, audience="payments", issuers="https://issuer.example", trust_domain="cluster.local"
)
TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "


def jwt_segment(document: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


hostile_tokens = st.one_of(
    st.just(GOOD_TOKEN),
    st.builds(
        lambda header, claims, signature: (
            f"{jwt_segment(header)}.{jwt_segment(claims)}.{signature}"
        ),
        st.dictionaries(
            st.sampled_from(["alg", "kid", "typ", "crit", "jku"]),
            st.one_of(st.sampled_from(["ES256", "none", "HS256", MINTER.key.kid]), st.integers()),
            max_size=4,
        ),
        st.dictionaries(
            st.sampled_from(["sub", "aud", "exp", "nbf", "iat", "iss", "cnf"]),
            st.one_of(
                st.sampled_from([CHECKOUT, "payments", "spiffe://cluster.local"]),
                st.integers(),
                st.floats(),
                st.none(),
                st.lists(st.integers(), max_size=2),
            ),
            max_size=7,
        ),
        st.text(TOKEN_CHARS, max_size=20),
    ),
    st.text(TOKEN_CHARS, max_size=60),
)


@HEAVY
@given(hostile_tokens, st.data())
def test_bearer_verification_raises_only_invalid_token(token: str, data: st.DataObject) -> None:
    token = data.draw(st.sampled_from([token, mutate(token, data, TOKEN_CHARS)]))
    request = RequestView("GET", "/", None, {"authorization": "Bearer " + token})
    for authenticator in (JWT_AUTHENTICATOR, K8S_AUTHENTICATOR):
        try:
            peer = authenticator.authenticate(request)
        except InvalidToken:
            continue
        if peer is not None:
            assert peer.principal == CHECKOUT
            assert token == GOOD_TOKEN


# -- the whole middleware ------------------------------------------------------------

READER = "spiffe://cluster.local/ns/shop/sa/reader"
LEGACY = "spiffe://cluster.local/ns/shop/sa/legacy"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
FOREIGN = "spiffe://other.example/ns/shop/sa/reader"
IDENTITIES = [None, READER, LEGACY, ADMIN, FOREIGN]

POLICY = Policy(
    [
        allow("healthz", Anyone(), methods="GET", paths="/healthz"),
        allow("exact-slash", Anyone(), methods=["GET", "HEAD"], paths="/exact/"),
        allow("public", Anyone(), methods="GET", paths="/public/**"),
        allow(
            "read-payment",
            Namespace("shop", trust_domain="cluster.local"),
            methods=["GET", "HEAD"],
            paths="/payments/{payment_id}",
        ),
        allow("admin", Principal(ADMIN), paths="/admin/**"),
        allow("files", TrustDomain("cluster.local"), paths="/files/{rest:path}"),
        allow("items", Authenticated(), methods="GET", paths=["/items/<int:item_id>", "/a/*/c"]),
        deny("no-legacy", Principal(LEGACY), paths="/payments/**"),
        deny("no-secrets", Anyone(), paths="/public/secret/**"),
        deny("no-foreign-admin", TrustDomain("other.example"), paths="/admin/**"),
        audit("audit-admin", Authenticated(), paths="/admin/**"),
    ]
)


def recording_responder(refusal: Refusal) -> ProblemResponse:
    body = json.dumps({"status": refusal.status, "rule": refusal.rule}).encode()
    return ProblemResponse(refusal.status, (("content-type", "application/json"),), body)


async def inner_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    decision = scope.get(DECISION_SCOPE_KEY)
    body = json.dumps(
        {
            "rule": decision.rule if decision is not None else None,
            "path": scope.get("path"),
            "raw_path": scope.get("raw_path", b"").decode("latin-1"),
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    """Drive a coroutine that never suspends (the middleware with in-memory I/O)."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise AssertionError("the middleware suspended on in-memory I/O")


def call(app: Any, scope: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    run(app(scope, receive, send))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    body = sent[1]["body"]
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = {"body": body.decode("latin-1")}
    return sent[0]["status"], parsed


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def no_internal_errors() -> Iterator[None]:
    """Fail if the middleware logged an error (its "internal error" refusal, a bug)."""
    handler = _Errors()
    logger = logging.getLogger("peer_middleware")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.records, [r.getMessage() for r in handler.records]


def http_scope(
    method: str,
    path: str,
    raw_path: bytes | None,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    query_string: bytes = b"",
    extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "query_string": query_string,
        "root_path": "",
        "headers": headers,
        "client": client,
        "server": ("127.0.0.1", 8000),
    }
    if raw_path is not None:
        scope["raw_path"] = raw_path
    if extensions is not None:
        scope["extensions"] = extensions
    return scope


def identity_headers(identity: str | None) -> list[tuple[bytes, bytes]]:
    if identity is None:
        return []
    value = f"By=spiffe://cluster.local/ns/shop/sa/payments;URI={identity}"
    return [(b"x-forwarded-client-cert", value.encode())]


POLICY_APP = PeerMiddleware(
    inner_app,
    policy=POLICY,
    authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
    responder=recording_responder,
)
METHODS = ["GET", "HEAD", "POST", "DELETE", "get", "PUT"]


@PROPERTY
@given(
    structured_paths,
    st.sampled_from(METHODS),
    st.sampled_from(IDENTITIES),
    st.sampled_from(["none", "quoted"]),
)
@example("/payments/1/..", "GET", READER, "quoted")
@example("/admin;x=1", "POST", ADMIN, "none")
@example("//public/secret/../x", "GET", None, "quoted")
@example("/files/", "GET", READER, "none")
@example("/exact/.", "GET", None, "quoted")
@example("/payments/42/", "GET", READER, "quoted")
@example("/items/%41", "GET", READER, "quoted")
def test_decision_for_a_path_is_the_decision_for_its_normal_form(
    path: str, method: str, identity: str | None, raw: str
) -> None:
    normal = accepted(path)
    assume(normal is not None)
    assert normal is not None
    headers = identity_headers(identity)
    outcomes = []
    with no_internal_errors():
        for candidate in (path, normal):
            raw_path = quote_path(candidate).encode("ascii") if raw == "quoted" else None
            status, body = call(POLICY_APP, http_scope(method, candidate, raw_path, headers))
            if status == 200:
                # The app sees the normal form, in path and in raw_path.
                assert body["path"] == normal
                assert unquote(body["raw_path"]) == normal or raw == "none"
            outcomes.append((status, body.get("rule")))
    assert outcomes[0] == outcomes[1]
    # ... and it is the policy's own decision for the normal form.
    peer = None
    if identity is not None:
        peer = Peer(SpiffeId.parse(identity), Proof.PROXY_ASSERTED, source="xfcc")
    if method != method.upper():
        # Refused with 400 before any rule is read.
        assert outcomes[0] == (400, None)
        return
    decision = POLICY.decide(method, normal, peer)
    assert outcomes[0] == (decision.enforced_status, decision.rule)


def wsgi_call(app: PeerWSGIMiddleware, environ: dict[str, Any]) -> int:
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    body = b"".join(app(environ, start_response))
    assert body is not None
    return int(statuses[0].split()[0])


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b""]


POLICY_WSGI = PeerWSGIMiddleware(
    wsgi_app,
    policy=POLICY,
    authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
)


@PROPERTY
@given(structured_paths, st.sampled_from(METHODS), st.sampled_from(IDENTITIES))
def test_asgi_and_wsgi_decide_alike(path: str, method: str, identity: str | None) -> None:
    try:
        raw = quote_path(path)
    except UnicodeEncodeError:  # pragma: no cover - strategies draw no surrogates
        return
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path.encode("utf-8").decode("latin-1"),
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "REQUEST_URI": raw,
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8000",
        "wsgi.url_scheme": "http",
    }
    for name, value in identity_headers(identity):
        environ["HTTP_" + name.decode().upper().replace("-", "_")] = value.decode("latin-1")
    with no_internal_errors():
        asgi_status, _ = call(
            POLICY_APP, http_scope(method, path, raw.encode("ascii"), identity_headers(identity))
        )
        assert wsgi_call(POLICY_WSGI, environ) == asgi_status


# Every authenticator at once, behind the default responder.
FULL_APP = PeerMiddleware(
    inner_app,
    policy=POLICY,
    authenticators=[
        MtlsAuthenticator(VERIFIER),
        XfccAuthenticator(
            trusted_proxies=["127.0.0.1", "::1"],
            forward_client_cert="append_forward",
            verifier=VERIFIER,
            allow_sidecar_asserted=True,
        ),
        ForwardedCertificateAuthenticator(
            "haproxy", trusted_proxies=["127.0.0.2"], verifier=VERIFIER
        ),
        ForwardedCertificateAuthenticator(
            "rfc9440", trusted_proxies=["127.0.0.2"], verifier=VERIFIER
        ),
        LinkerdIdentityAuthenticator(trusted_proxies=["127.0.0.3"], trust_domain="cluster.local"),
        JwtSvidAuthenticator(keys=KEYS, audience="payments"),
        K8S_AUTHENTICATOR,
    ],
)
HEADER_NAMES = [*sorted(FULL_APP.guard.header_names), "x-other", "Authorization"]
CLIENTS = [
    ("127.0.0.1", 50000),
    ("127.0.0.1", 0),
    ("127.0.0.2", 1),
    ("127.0.0.3", 1),
    ("::1", 2),
    ("::ffff:127.0.0.1", 3),
    ("10.0.0.1", 4),
    ("not-an-address", 5),
    None,
]
header_values = st.one_of(
    LATIN1,
    st.sampled_from(
        [
            f"URI={READER}",
            f"By=spiffe://cluster.local/ns/shop/sa/payments;URI={ADMIN}",
            f"Bearer {GOOD_TOKEN}",
            "checkout.shop.serviceaccount.identity.linkerd.cluster.local",
            f":{b64(LEAF_DER)}:",
            b64(LEAF_DER),
            "1",
            "0",
            "127.0.0.1",
        ]
    ),
)


@HEAVY
@given(
    method=st.one_of(st.sampled_from(METHODS), LATIN1),
    path=st.one_of(structured_paths, TEXT, st.text(max_size=20)),
    raw_path=st.one_of(st.none(), st.binary(max_size=40), st.builds(lambda p: p.encode(), TEXT)),
    headers=st.lists(
        st.tuples(
            st.sampled_from(HEADER_NAMES).map(str.encode),
            header_values.map(lambda v: v.encode("latin-1")),
        ),
        max_size=5,
    ),
    client=st.sampled_from(CLIENTS),
    query=st.binary(max_size=20),
    tls=st.sampled_from([None, [LEAF_PEM], [LEAF_DER], ["garbage"], [b"\x30\x00"]]),
)
@example(
    method="GET",
    path="/public/x",
    raw_path=None,
    headers=[(b"authorization", b"Bearer a, Bearer b")],
    client=("127.0.0.1", 1),
    query=b"",
    tls=None,
)
@example(
    method="GET",
    path="/public//\ud800",  # a lone surrogate escaped as UnicodeEncodeError (a 500)
    raw_path=None,
    headers=[],
    client=None,
    query=b"",
    tls=None,
)
def test_middleware_answers_only_200_400_401_403(
    method: str,
    path: str,
    raw_path: bytes | None,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    query: bytes,
    tls: list[Any] | None,
) -> None:
    extensions = None if tls is None else {"tls": {"client_cert_chain": tls}}
    scope = http_scope(method, path, raw_path, headers, client, query, extensions)
    with no_internal_errors():
        status, body = call(FULL_APP, scope)
    assert status in (200, 400, 401, 403)
    if status == 200:
        assert body["path"] == normalise_path(path)


def test_every_decoder_is_exercised() -> None:
    """The decoder table above names every public decoder of the module."""
    from peer_middleware import certs

    assert {n for n in certs.__all__ if n.startswith("decode_")} == {
        f"decode_{n}" for n in DECODERS
    }
