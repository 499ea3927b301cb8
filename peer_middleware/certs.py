"""Certificates written as text: PEM, base64 DER, RFC 8941 byte sequences, DER back to back.

The one place where the text a proxy, a server or a header carries becomes
DER bytes, before anything is parsed as a certificate (that is
:mod:`peer_middleware.x509`'s job, with cryptography; nothing here imports
it). Certificates are counted before any is decoded, so an oversized chain
costs one scan of a value whose length the caller has already bounded.

Every refusal is a :class:`~peer_middleware.errors.CertificateDecodingError`
(401) whose ``fault`` says what is wrong and whose reason says where.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from urllib.parse import unquote

from .errors import CertificateDecodingError

__all__ = [
    "DEFAULT_CHAIN_LENGTH",
    "PEM_BEGIN",
    "PEM_END",
    "decode_der_base64",
    "decode_der_base64_list",
    "decode_der_concatenation",
    "decode_pem",
    "decode_sf_binary",
    "decode_sf_binary_list",
    "has_non_positive_serial",
    "percent_decode",
    "split_pem",
]

#: The number of certificates a chain may hold, leaf included, unless configured otherwise.
DEFAULT_CHAIN_LENGTH = 8

PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
PEM_END = "-----END CERTIFICATE-----"
# RFC 7468 section 3: whitespace is SP and HTAB, lines end with CR, LF or CRLF.
_PEM_WHITESPACE = " \t\r\n"
_NO_PEM_WHITESPACE = str.maketrans("", "", _PEM_WHITESPACE)
_B64_ALPHABET = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise CertificateDecodingError(
            f"{count} certificates, more than the limit of {limit}", fault="too-many"
        )


def _b64(text: str, what: str) -> bytes:
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        raise CertificateDecodingError(
            f"{what}: non-ASCII characters in base64", fault="base64"
        ) from None
    if not data:
        raise CertificateDecodingError(f"{what}: empty base64", fault="base64")
    if len(data) % 4 or not _B64_ALPHABET.fullmatch(data):
        raise CertificateDecodingError(
            f"{what}: not base64 (bad character or truncated)", fault="base64"
        )
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise CertificateDecodingError(f"{what}: not base64 ({exc})", fault="base64") from None


# -- PEM -------------------------------------------------------------------------------


def _pem_blocks(text: str, limit: int) -> Iterator[str]:
    """Each ``CERTIFICATE`` block of ``text``, BEGIN line to END line, as it is found."""
    _check_count(text.count("-----BEGIN"), limit)
    position = 0
    end = len(text)
    found = False
    while True:
        while position < end and text[position] in _PEM_WHITESPACE:
            position += 1
        if position >= end:
            break
        if not text.startswith(PEM_BEGIN, position):
            raise CertificateDecodingError(
                f"PEM: expected {PEM_BEGIN!r} at offset {position}", fault="pem-text"
            )
        stop = text.find(PEM_END, position + len(PEM_BEGIN))
        if stop == -1:
            raise CertificateDecodingError(
                "PEM: truncated (no END CERTIFICATE line)", fault="pem-truncated"
            )
        stop += len(PEM_END)
        yield text[position:stop]
        found = True
        position = stop
    if not found:
        raise CertificateDecodingError("PEM: no certificate", fault="pem-empty")


def split_pem(text: str, *, limit: int = DEFAULT_CHAIN_LENGTH) -> list[str]:
    """The ``CERTIFICATE`` blocks of PEM text, in order, each from its BEGIN to its END line.

    Only such blocks, separated by nothing but whitespace (space, tab, CR,
    LF: RFC 7468 section 3), are accepted: a private key, text between
    blocks, a block without its END line or no block at all is refused, and
    so is text with more than ``limit`` ``-----BEGIN`` lines (counted before
    anything else is read). The blocks' base64 is not checked here.
    """
    return list(_pem_blocks(text, limit))


def decode_pem(text: str, *, limit: int = DEFAULT_CHAIN_LENGTH) -> list[bytes]:
    """DER certificates from PEM text (line breaks may be spaces, as Apache sends them).

    The blocks are those of :func:`split_pem`; each one's base64 must be
    exact (padding included), whitespace aside.
    """
    return [
        _b64(block[len(PEM_BEGIN) : -len(PEM_END)].translate(_NO_PEM_WHITESPACE), f"PEM block {n}")
        for n, block in enumerate(_pem_blocks(text, limit), 1)
    ]


def percent_decode(value: str) -> str:
    """``value`` with its ``%XX`` escapes decoded as UTF-8.

    Only ``%`` escapes: ``+`` stays ``+`` (base64 uses it, and AWS leaves it
    unescaped).
    """
    if "%" not in value:
        return value
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise CertificateDecodingError(
            "URL-encoding: escapes are not UTF-8", fault="url-encoding"
        ) from None


# -- base64 DER and RFC 8941 byte sequences ----------------------------------------------


def decode_der_base64(value: str) -> list[bytes]:
    """One DER certificate, base64 (no line breaks)."""
    return [_b64(value.strip(" \t"), "base64 DER")]


def decode_der_base64_list(value: str, *, limit: int = DEFAULT_CHAIN_LENGTH) -> list[bytes]:
    """Comma-separated base64 DER certificates (Traefik), optionally URL-escaped."""
    value = percent_decode(value)
    items = value.split(",")
    _check_count(len(items), limit)
    return [_b64(item.strip(" \t"), f"certificate {n}") for n, item in enumerate(items, 1)]


def decode_sf_binary(value: str) -> bytes:
    """An RFC 8941 byte sequence, ``:base64:``, as one item without parameters.

    Missing ``=`` padding is tolerated (RFC 8941 section 4.2.7); anything
    outside the base64 alphabet is not.
    """
    item = value.strip(" \t")
    if len(item) < 2 or item[0] != ":" or item[-1] != ":":
        if item.startswith(":") and ":" in item[1:]:
            raise CertificateDecodingError(
                "structured field: parameters or text after the byte sequence",
                fault="structured-field",
            )
        raise CertificateDecodingError(
            "structured field: not a byte sequence (:base64:)", fault="structured-field"
        )
    body = item[1:-1]
    if ":" in body:
        raise CertificateDecodingError(
            "structured field: more than one byte sequence", fault="structured-field"
        )
    if len(body) % 4 == 1:
        raise CertificateDecodingError(
            "structured field: truncated base64", fault="structured-field"
        )
    if len(body) % 4:
        body += "=" * (4 - len(body) % 4)
    return _b64(body, "byte sequence")


def decode_sf_binary_list(value: str, *, limit: int = DEFAULT_CHAIN_LENGTH) -> list[bytes]:
    """An RFC 8941 list of byte sequences (``Client-Cert-Chain``); empty gives ``[]``."""
    if not value.strip(" \t"):
        return []
    items = value.split(",")
    _check_count(len(items), limit)
    return [decode_sf_binary(item) for item in items]


# -- DER -------------------------------------------------------------------------------


def _der_header(data: bytes, position: int) -> tuple[int, int, int] | None:
    """The tag, content length and content offset of the DER value at ``position``.

    ``None`` when the header is cut short or its length takes no octet or
    more than three (16 MiB, far beyond any certificate accepted). The
    content itself may run past the end of ``data``: the caller checks.
    """
    if position + 2 > len(data):
        return None
    tag, first = data[position], data[position + 1]
    if first < 0x80:
        return tag, first, position + 2
    count = first & 0x7F
    start = position + 2 + count
    if not 0 < count <= 3 or start > len(data):
        return None
    return tag, int.from_bytes(data[position + 2 : start], "big"), start


def decode_der_concatenation(value: str, *, limit: int = DEFAULT_CHAIN_LENGTH) -> list[bytes]:
    """Base64 of DER certificates written back to back (HAProxy ``ssl_c_chain_der``)."""
    data = _b64(value.strip(" \t"), "base64 DER chain")
    certs: list[bytes] = []
    position = 0
    while position < len(data):
        if len(certs) >= limit:
            raise CertificateDecodingError(
                f"more than the limit of {limit} certificates", fault="too-many"
            )
        if data[position] != 0x30 or position + 2 > len(data):
            raise CertificateDecodingError(
                f"DER chain: no certificate at byte {position}", fault="der"
            )
        header = _der_header(data, position)
        if header is None:
            raise CertificateDecodingError(f"DER chain: bad length at byte {position}", fault="der")
        _, length, start = header
        stop = start + length
        if stop > len(data):
            raise CertificateDecodingError(
                f"DER chain: truncated certificate at byte {position}", fault="der"
            )
        certs.append(data[position:stop])
        position = stop
    return certs


def has_non_positive_serial(der: bytes) -> bool:
    """True when the DER certificate's serial number is zero or negative.

    RFC 5280 (section 4.1.2.2) requires a positive serial, and cryptography
    parses any other with a deprecation warning (an exception under ``-W
    error``, and in its future releases); such certificates are refused
    before they are parsed. Anything this cannot read is left to the parser.
    """
    header = _der_header(der, 0)  # Certificate
    if header is None or header[0] != 0x30:
        return False
    header = _der_header(der, header[2])  # TBSCertificate
    if header is None or header[0] != 0x30:
        return False
    header = _der_header(der, header[2])
    if header is not None and header[0] == 0xA0:  # [0] EXPLICIT version
        header = _der_header(der, header[2] + header[1])
    if header is None:
        return False
    tag, length, start = header
    serial = der[start : start + length]
    if tag != 0x02 or not serial or len(serial) != length:
        return False
    return bool(serial[0] & 0x80) or not any(serial)
