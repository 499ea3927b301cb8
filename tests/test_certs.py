"""Certificates written as text: the PEM splitter, the decoders and the DER reader."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from peer_middleware.certs import (
    PEM_BEGIN,
    PEM_END,
    decode_der_base64,
    decode_der_base64_list,
    decode_der_concatenation,
    decode_pem,
    decode_sf_binary,
    decode_sf_binary_list,
    has_non_positive_serial,
    percent_decode,
    split_pem,
)
from peer_middleware.errors import AuthenticationFailed, CertificateDecodingError
from peer_middleware.testing import Svid, TestCA
from peer_middleware.x509 import split_pem_chain

CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
# Spelled in two parts so that no tracked file holds a private-key armour line.
KEY_LABEL = "PRIVATE" + " KEY"


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA.create("cluster.local")


@pytest.fixture(scope="module")
def chained(ca: TestCA) -> Svid:
    return ca.intermediate().issue_svid(CHECKOUT)


@pytest.fixture(scope="module")
def direct(ca: TestCA) -> Svid:
    return ca.issue_svid(CHECKOUT)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def block(body: str = "AAAA") -> str:
    return f"{PEM_BEGIN}\n{body}\n{PEM_END}"


# -- PEM -------------------------------------------------------------------------------------


def test_split_pem_keeps_each_block_whole_and_in_order(chained: Svid) -> None:
    text = chained.chain_pem.decode("ascii")
    blocks = split_pem(text)
    assert len(blocks) == 1 + len(chained.chain)
    assert "\n".join(blocks) + "\n" == text


SPLIT_REFUSED: list[tuple[str, str, str, str]] = [
    ("empty", "", "pem-empty", "PEM: no certificate"),
    ("blank", " \t\r\n", "pem-empty", "PEM: no certificate"),
    ("text-before", "junk" + block(), "pem-text", f"PEM: expected {PEM_BEGIN!r} at offset 0"),
    ("text-after", block() + "\njunk", "pem-text", f"PEM: expected {PEM_BEGIN!r} at offset 59"),
    (
        "private-key",
        f"-----BEGIN {KEY_LABEL}-----\nAAAA\n-----END {KEY_LABEL}-----",
        "pem-text",
        f"PEM: expected {PEM_BEGIN!r} at offset 0",
    ),
    # RFC 7468 whitespace only: a form feed between blocks is text outside them.
    (
        "form-feed",
        block() + "\f" + block(),
        "pem-text",
        f"PEM: expected {PEM_BEGIN!r} at offset 58",
    ),
    (
        "truncated",
        block() + PEM_BEGIN + "\nMII",
        "pem-truncated",
        "PEM: truncated (no END CERTIFICATE line)",
    ),
    ("too-many", block() * 9, "too-many", "9 certificates, more than the limit of 8"),
    # Counted before anything is read: any BEGIN line counts.
    (
        "too-many-begin-lines",
        block() + "-----BEGIN X" * 8,
        "too-many",
        "9 certificates, more than the limit of 8",
    ),
]


@pytest.mark.parametrize(
    ("text", "fault", "reason"),
    [pytest.param(t, f, r, id=name) for name, t, f, r in SPLIT_REFUSED],
)
def test_split_pem_refuses(text: str, fault: str, reason: str) -> None:
    with pytest.raises(CertificateDecodingError) as caught:
        split_pem(text)
    assert (caught.value.fault, caught.value.reason) == (fault, reason)
    assert isinstance(caught.value, AuthenticationFailed)
    assert caught.value.status == 401


@pytest.mark.parametrize(
    ("text", "fault", "reason"),
    [pytest.param(t, f, r, id=name) for name, t, f, r in SPLIT_REFUSED],
)
def test_split_pem_chain_is_the_same_splitter_in_its_own_words(
    text: str, fault: str, reason: str
) -> None:
    with pytest.raises(CertificateDecodingError) as caught:
        split_pem_chain(text, max_certificates=8)
    assert caught.value.fault == fault
    assert caught.value.reason.startswith("certificate chain ")


def test_decode_pem_with_spaces_for_line_breaks(chained: Svid) -> None:
    text = chained.chain_pem.decode("ascii").replace("\n", " ")
    assert decode_pem(text) == [
        chained.der,
        *(c.public_bytes(Encoding.DER) for c in chained.chain),
    ]


@pytest.mark.parametrize(
    ("text", "fault", "reason"),
    [
        pytest.param("", "pem-empty", "PEM: no certificate", id="empty"),
        pytest.param("   ", "pem-empty", "PEM: no certificate", id="blank"),
        pytest.param(
            "junk -----BEGIN CERTIFICATE----- AAAA -----END CERTIFICATE-----",
            "pem-text",
            f"PEM: expected {PEM_BEGIN!r} at offset 0",
            id="text-before",
        ),
        pytest.param(
            "-----BEGIN CERTIFICATE----- AAAA -----END CERTIFICATE----- junk",
            "pem-text",
            f"PEM: expected {PEM_BEGIN!r} at offset 59",
            id="text-after",
        ),
        pytest.param(
            "-----BEGIN CERTIFICATE----- -----END CERTIFICATE-----",
            "base64",
            "PEM block 1: empty base64",
            id="no-body",
        ),
        pytest.param(
            block("AAA"),
            "base64",
            "PEM block 1: not base64 (bad character or truncated)",
            id="truncated-base64",
        ),
        pytest.param(
            block() + block("é"),
            "base64",
            "PEM block 2: non-ASCII characters in base64",
            id="non-ascii",
        ),
        # Blocks are decoded as they are found: the first fault wins.
        pytest.param(
            block("*AAA") + PEM_BEGIN,
            "base64",
            "PEM block 1: not base64 (bad character or truncated)",
            id="first-fault-wins",
        ),
    ],
)
def test_decode_pem_refuses(text: str, fault: str, reason: str) -> None:
    with pytest.raises(CertificateDecodingError) as caught:
        decode_pem(text)
    assert (caught.value.fault, caught.value.reason) == (fault, reason)


def test_percent_decode() -> None:
    assert percent_decode("a+b%2Fc") == "a+b/c"
    assert percent_decode("no escapes") == "no escapes"
    with pytest.raises(CertificateDecodingError) as caught:
        percent_decode("%ff%fe")
    assert (caught.value.fault, caught.value.reason) == (
        "url-encoding",
        "URL-encoding: escapes are not UTF-8",
    )


# -- base64 DER and RFC 8941 byte sequences ------------------------------------------------


def test_decode_der_base64(direct: Svid) -> None:
    assert decode_der_base64(f" {b64(direct.der)}\t") == [direct.der]
    assert decode_der_base64_list(f"{b64(direct.der)}%2C{b64(direct.der)}") == [direct.der] * 2


def test_decode_sf_binary_accepts_missing_padding(direct: Svid) -> None:
    encoded = b64(direct.der).rstrip("=")
    assert decode_sf_binary(f" :{encoded}: ") == direct.der
    assert decode_sf_binary_list("") == []


@pytest.mark.parametrize(
    ("value", "fault", "reason"),
    [
        pytest.param(
            "MIIB",
            "structured-field",
            "structured field: not a byte sequence (:base64:)",
            id="bare",
        ),
        pytest.param(
            ":AAAA:;x=1",
            "structured-field",
            "structured field: parameters or text after the byte sequence",
            id="parameters",
        ),
        pytest.param(
            ":AAAA::AAAA:",
            "structured-field",
            "structured field: more than one byte sequence",
            id="two",
        ),
        pytest.param(
            ":AAAAA:", "structured-field", "structured field: truncated base64", id="truncated"
        ),
        pytest.param(
            ":AA A:", "base64", "byte sequence: not base64 (bad character or truncated)", id="space"
        ),
    ],
)
def test_decode_sf_binary_refuses(value: str, fault: str, reason: str) -> None:
    with pytest.raises(CertificateDecodingError) as caught:
        decode_sf_binary(value)
    assert (caught.value.fault, caught.value.reason) == (fault, reason)


def test_lists_are_counted_before_decoding() -> None:
    with pytest.raises(CertificateDecodingError) as caught:
        decode_sf_binary_list(",".join(["garbage"] * 4), limit=3)
    assert (caught.value.fault, caught.value.reason) == (
        "too-many",
        "4 certificates, more than the limit of 3",
    )
    with pytest.raises(CertificateDecodingError, match="4 certificates, more than the limit of 3"):
        decode_der_base64_list("é,é,é,é", limit=3)


# -- DER -------------------------------------------------------------------------------------


def test_decode_der_concatenation(chained: Svid) -> None:
    parts = [chained.der, *(c.public_bytes(Encoding.DER) for c in chained.chain)]
    assert decode_der_concatenation(b64(b"".join(parts))) == parts
    short = b64(b"\x30\x03abc")
    assert decode_der_concatenation(short) == [b"\x30\x03abc"]


@pytest.mark.parametrize(
    ("data", "fault", "reason"),
    [
        pytest.param(
            b"\x31\x00", "der", "DER chain: no certificate at byte 0", id="not-a-sequence"
        ),
        pytest.param(b"\x30", "der", "DER chain: no certificate at byte 0", id="one-byte"),
        pytest.param(b"\x30\x80", "der", "DER chain: bad length at byte 0", id="indefinite-length"),
        pytest.param(
            b"\x30\x84\x00\x00\x00\x01\x00",
            "der",
            "DER chain: bad length at byte 0",
            id="four-length-octets",
        ),
        pytest.param(
            b"\x30\x85" + b"\x00" * 8,
            "der",
            "DER chain: bad length at byte 0",
            id="five-length-octets",
        ),
        pytest.param(
            b"\x30\x82\x00", "der", "DER chain: bad length at byte 0", id="length-cut-short"
        ),
        pytest.param(
            b"\x30\x00\x30\x05abc",
            "der",
            "DER chain: truncated certificate at byte 2",
            id="truncated",
        ),
        pytest.param(
            b"\x30\x00" * 9, "too-many", "more than the limit of 8 certificates", id="too-many"
        ),
    ],
)
def test_decode_der_concatenation_refuses(data: bytes, fault: str, reason: str) -> None:
    with pytest.raises(CertificateDecodingError) as caught:
        decode_der_concatenation(b64(data))
    assert (caught.value.fault, caught.value.reason) == (fault, reason)


def _certificate(serial: bytes, *, version: bool = True, length_octets: int = 1) -> bytes:
    """Just enough DER for the serial number to be found: Certificate { TBSCertificate { ... } }."""
    tbs_body = (
        (b"\xa0\x03\x02\x01\x02" if version else b"") + b"\x02" + bytes([len(serial)]) + serial
    )
    tbs = b"\x30" + bytes([len(tbs_body)]) + tbs_body
    if length_octets == 1:
        return b"\x30" + bytes([len(tbs)]) + tbs
    return b"\x30" + bytes([0x80 | length_octets]) + len(tbs).to_bytes(length_octets, "big") + tbs


@pytest.mark.parametrize(
    ("der", "expected"),
    [
        pytest.param(_certificate(b"\x01"), False, id="positive"),
        pytest.param(_certificate(b"\x00\x80"), False, id="positive-with-leading-zero"),
        pytest.param(_certificate(b"\x00"), True, id="zero"),
        pytest.param(_certificate(b"\x00\x00"), True, id="zero-two-octets"),
        pytest.param(_certificate(b"\xff"), True, id="negative"),
        pytest.param(_certificate(b"\xff", version=False), True, id="negative-v1"),
        pytest.param(_certificate(b"\xff", length_octets=2), True, id="negative-long-length"),
        # Lengths of four octets or more are left to the parser, which refuses them.
        pytest.param(_certificate(b"\xff", length_octets=4), False, id="four-length-octets"),
        pytest.param(_certificate(b"\xff")[:-1], False, id="serial-cut-short"),
        pytest.param(b"", False, id="empty"),
        pytest.param(b"\x30", False, id="one-byte"),
        pytest.param(b"\x31\x03\x02\x01\xff", False, id="not-a-sequence"),
    ],
)
def test_has_non_positive_serial(der: bytes, expected: bool) -> None:
    assert has_non_positive_serial(der) is expected


def test_a_real_certificate_has_a_positive_serial(direct: Svid) -> None:
    assert has_non_positive_serial(direct.der) is False
