"""Envoy's ``x-forwarded-client-cert`` (XFCC) header.

Grammar (Envoy's HTTP connection manager documentation, "x-forwarded-client-cert"):
the value is a comma-separated list of *elements*, one per proxy hop; each
element is a semicolon-separated list of ``key=value`` pairs. Keys are
case-insensitive: ``By``, ``Hash``, ``Cert``, ``Chain``, ``Subject``, ``URI``,
``DNS``. A value may be double-quoted, and inside quotes ``,``, ``;`` and
``=`` are literal and ``\\"`` is an escaped quote. ``Cert`` and ``Chain`` are
URL-encoded PEM. ``By``, ``URI`` and ``DNS`` may repeat within an element.

When a proxy *appends* (``APPEND_FORWARD``) the element it adds is the last
one; anything before it came from further away, possibly from the client.
Only the rightmost element is ever used for identity.

:func:`parse_xfcc` is strict: an unknown key, an empty element, a stray quote,
an unterminated quoted value, a control character anywhere, quoted or not
(0x00-0x1f but HTAB, and 0x7f: a field value holds none, RFC 9110 section
5.5), or a header over the size limits raises :class:`XfccSyntaxError`, never
a partial result. :func:`format_xfcc` writes the same grammar (used by
:mod:`peer_middleware.testing`).

This module is the grammar only: who may send the header, and what an
element proves, is :class:`peer_middleware.authenticators.XfccAuthenticator`'s
business.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .errors import AuthenticationFailed

__all__ = [
    "MAX_XFCC_ELEMENTS",
    "MAX_XFCC_LENGTH",
    "XfccElement",
    "XfccSyntaxError",
    "format_xfcc",
    "parse_xfcc",
]

MAX_XFCC_LENGTH = 256 * 1024
MAX_XFCC_ELEMENTS = 32
MAX_XFCC_PAIRS = 64

KEYS = {
    "by": "By",
    "hash": "Hash",
    "cert": "Cert",
    "chain": "Chain",
    "subject": "Subject",
    "uri": "URI",
    "dns": "DNS",
}
_REPEATABLE = frozenset({"by", "uri", "dns"})
_WHITESPACE = " \t"
# Control characters: C0 but HTAB (optional whitespace, and allowed in a
# quoted-string), and DEL. RFC 9110 section 5.5 (field-value), 5.6.4 (qdtext).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class XfccSyntaxError(AuthenticationFailed):
    """The header does not follow the XFCC grammar (the request gets 401)."""

    def __init__(self, reason: str, *, position: int | None = None) -> None:
        self.position = position
        where = "" if position is None else f" at offset {position}"
        super().__init__(f"malformed x-forwarded-client-cert header: {reason}{where}")


@dataclass(frozen=True, slots=True)
class XfccElement:
    """One element of an XFCC header: what one proxy said of one client.

    Repeatable keys become tuples in order; single keys are ``None`` when
    absent. Values are as sent, quotes removed; ``cert`` and ``chain`` remain
    URL-encoded.
    """

    by: tuple[str, ...] = ()
    hash: str | None = None
    cert: str | None = None
    chain: str | None = None
    subject: str | None = None
    uri: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()


#: Characters of a quoted value up to its closing quote or an escape.
_QUOTED_RUN = re.compile(r'[^"\\]*')
#: Characters of an unquoted value up to its end (``,`` or ``;``) or a stray quote.
_UNQUOTED_RUN = re.compile(r'[^,;"]*')


def _element(pairs: list[tuple[str, str]], position: int) -> XfccElement:
    if not pairs:
        raise XfccSyntaxError("empty element", position=position)
    repeated: dict[str, list[str]] = {"by": [], "uri": [], "dns": []}
    single: dict[str, str] = {}
    for key, value in pairs:
        if key in _REPEATABLE:
            repeated[key].append(value)
        elif key in single:
            raise XfccSyntaxError(f"key {KEYS[key]!r} repeated in one element", position=position)
        else:
            single[key] = value
    return XfccElement(
        by=tuple(repeated["by"]),
        hash=single.get("hash"),
        cert=single.get("cert"),
        chain=single.get("chain"),
        subject=single.get("subject"),
        uri=tuple(repeated["uri"]),
        dns=tuple(repeated["dns"]),
    )


def parse_xfcc(value: str) -> tuple[XfccElement, ...]:
    """Parse a whole XFCC header value (several header lines joined by ``,``)."""
    if len(value) > MAX_XFCC_LENGTH:
        raise XfccSyntaxError(f"longer than {MAX_XFCC_LENGTH} characters")
    control = _CONTROL.search(value)
    if control is not None:
        raise XfccSyntaxError(
            f"control character 0x{ord(control.group()):02x}", position=control.start()
        )
    elements: list[XfccElement] = []
    pairs: list[tuple[str, str]] = []
    n = len(value)
    i = 0
    element_start = 0
    while True:
        while i < n and value[i] in _WHITESPACE:
            i += 1
        equals = value.find("=", i)
        if equals == -1:
            raise XfccSyntaxError("expected key=value", position=i)
        key = value[i:equals].rstrip(_WHITESPACE).lower()
        if key not in KEYS:
            shown = value[i:equals][:32]
            raise XfccSyntaxError(f"unknown key {shown!r}", position=i)
        i = equals + 1
        while i < n and value[i] in _WHITESPACE:
            i += 1
        if i < n and value[i] == '"':
            i += 1
            chars: list[str] = []
            while True:
                # A run of plain characters at once, then a quote or an escape.
                run = _QUOTED_RUN.match(value, i)
                assert run is not None  # the pattern matches the empty string
                chars.append(run.group())
                i = run.end()
                if i >= n:
                    raise XfccSyntaxError("unterminated quoted value", position=i)
                if value[i] == "\\":
                    if i + 1 >= n:
                        raise XfccSyntaxError("unterminated escape", position=i)
                    chars.append(value[i + 1])
                    i += 2
                    continue
                i += 1  # the closing quote
                break
            item = "".join(chars)
            while i < n and value[i] in _WHITESPACE:
                i += 1
            if i < n and value[i] not in ",;":
                raise XfccSyntaxError("unexpected text after a quoted value", position=i)
        else:
            start = i
            run = _UNQUOTED_RUN.match(value, i)
            assert run is not None  # the pattern matches the empty string
            i = run.end()
            if i < n and value[i] == '"':
                raise XfccSyntaxError("unexpected '\"' in an unquoted value", position=i)
            item = value[start:i].strip(_WHITESPACE)
        pairs.append((key, item))
        if len(pairs) > MAX_XFCC_PAIRS:
            raise XfccSyntaxError(f"more than {MAX_XFCC_PAIRS} pairs in one element")
        if i >= n:
            elements.append(_element(pairs, element_start))
            break
        separator = value[i]
        i += 1
        if separator == ",":
            elements.append(_element(pairs, element_start))
            if len(elements) >= MAX_XFCC_ELEMENTS:
                raise XfccSyntaxError(f"more than {MAX_XFCC_ELEMENTS} elements")
            pairs = []
            element_start = i
            rest = value[i:].strip(_WHITESPACE)
            if not rest or rest[0] == ",":
                raise XfccSyntaxError("empty element", position=i)
        elif i >= n or not value[i:].strip(_WHITESPACE):
            raise XfccSyntaxError("trailing ';'", position=i)
    return tuple(elements)


def _quote(value: str) -> str:
    if value and not any(c in value for c in ',;="\\ \t'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_xfcc(elements: Iterable[XfccElement | Mapping[str, str | Sequence[str]]]) -> str:
    """Write elements in XFCC syntax (the inverse of :func:`parse_xfcc`).

    Accepts :class:`XfccElement` values or mappings such as
    ``{"By": "spiffe://td/app", "URI": "spiffe://td/caller"}``. A value
    holding a control character raises :class:`ValueError`: no quoting can
    carry one, and :func:`parse_xfcc` refuses it.
    """
    out: list[str] = []
    for element in elements:
        pairs: list[str] = []
        items: Iterable[tuple[str, str | Sequence[str] | None]]
        if isinstance(element, XfccElement):
            items = (
                ("By", element.by),
                ("Hash", element.hash),
                ("Cert", element.cert),
                ("Chain", element.chain),
                ("Subject", element.subject),
                ("URI", element.uri),
                ("DNS", element.dns),
            )
        else:
            items = element.items()
        for key, value in items:
            if value is None:
                continue
            if key.lower() not in KEYS:
                raise ValueError(f"unknown XFCC key {key!r}")
            values = [value] if isinstance(value, str) else list(value)
            for text in values:
                if _CONTROL.search(text) is not None:
                    raise ValueError(
                        f"XFCC value {text[:64]!r} holds a control character, which no "
                        "header may carry"
                    )
            pairs.extend(f"{KEYS[key.lower()]}={_quote(v)}" for v in values)
        out.append(";".join(pairs))
    return ",".join(out)
