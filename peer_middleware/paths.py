"""Request paths and methods, made safe to match before any rule sees them.

The classic way around an authorization layer is a path that the layer and
the router read differently: ``/admin%2Fusers``, ``/public/../admin``,
``//admin``, ``/admin;x=1``. This module removes the difference instead of
guessing at it:

1. :func:`check_raw_target` looks at the request target *as sent*
   (``raw_path`` in ASGI, ``REQUEST_URI``/``RAW_URI`` in WSGI) and refuses,
   with :class:`~peer_middleware.errors.BadRequest`, a fragment, a malformed
   percent escape, an encoded ``/``, ``\\``, NUL or other control character,
   and percent-encoded bytes that are not UTF-8.
2. :func:`normalise_path` turns the *decoded* path (what the router routes
   on) into one canonical form: repeated slashes merged, ``.`` and ``..``
   resolved (never above the root), per-segment ``;params`` removed. It
   refuses a literal backslash, NUL or control character, or a lone surrogate.

The adapters then write the canonical path back into the ASGI scope or the
WSGI environ, so the router and the handler see exactly the path the rules
saw. Nothing is decoded twice: ``%252F`` reaches both as the literal text
``%2F``.

Methods are compared as sent: :func:`check_method` only refuses values that
are not an HTTP token; ``get`` stays ``get`` and matches no ``GET`` rule.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

from .errors import BadRequest

__all__ = ["MAX_PATH_LENGTH", "check_method", "check_raw_target", "normalise_path", "quote_path"]

MAX_PATH_LENGTH = 8192
MAX_METHOD_LENGTH = 32

# A path that needs no work: slash-separated segments of ordinary characters,
# no "%", ";", "\\", no empty segment except a single trailing slash, and no
# segment starting with a dot (which might be "." or "..").
_CLEAN_PATH = re.compile(r"(?:/[A-Za-z0-9_~!$&'()*+,=:@\-][A-Za-z0-9_~!$&'()*+,=:@.\-]*)*/?")
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PERCENT = re.compile(r"%(?P<hex>[0-9A-Fa-f]{2})?")
# Bytes a path may not carry in encoded form: control characters, "/", "\\".
_FORBIDDEN_ENCODED = frozenset(range(0x20)) | {0x2F, 0x5C, 0x7F}
# Characters a decoded path may not hold: control characters, "\\" and lone
# surrogates (no UTF-8 request target decodes to one, and none can be written
# back as raw_path).
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\\ud800-\udfff]")
# Characters left unencoded when a canonical path is written back as raw_path.
_SAFE_RAW = "/!$&'()*+,;=:@~"


def check_method(method: str) -> str:
    """Return ``method`` if it is an HTTP token (RFC 9110, 5.6.2), else raise."""
    if len(method) > MAX_METHOD_LENGTH or _METHOD.fullmatch(method) is None:
        raise BadRequest(f"method {method[:MAX_METHOD_LENGTH]!r} is not an HTTP token")
    return method


def check_raw_target(raw: str) -> None:
    """Refuse encodings in the request target as sent that no route may rely on.

    ``raw`` is the path as it came over the wire, with or without the query
    (a query is ignored), in origin-form (``/a/b``) or absolute-form
    (``http://host/a/b``).
    """
    if len(raw) > MAX_PATH_LENGTH:
        raise BadRequest(f"request target longer than {MAX_PATH_LENGTH} characters")
    if "#" in raw:
        raise BadRequest("request target contains a fragment")
    query = raw.find("?")
    if query != -1:
        raw = raw[:query]
    if "%" not in raw:
        return
    for match in _PERCENT.finditer(raw):
        hexpair = match.group("hex")
        if hexpair is None:
            raise BadRequest("request path contains a malformed percent escape")
        byte = int(hexpair, 16)
        if byte in _FORBIDDEN_ENCODED:
            raise BadRequest(f"request path contains an encoded byte 0x{byte:02X}")
    try:
        # The whole path, so that a character split between an escape and
        # literal text ("%C3a%A9") is judged as the server will decode it.
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request path percent-escapes are not UTF-8") from None


def normalise_path(path: str) -> str:
    """Return the canonical form of a decoded request path.

    ``path`` is what the router would route on (ASGI ``scope["path"]``, WSGI
    ``PATH_INFO`` as text). The result starts with ``/``; a trailing slash is
    kept when the input had one (or ended in a dot segment), as RFC 3986
    section 5.2.4 does.
    """
    if len(path) > MAX_PATH_LENGTH:
        raise BadRequest(f"request path longer than {MAX_PATH_LENGTH} characters")
    if _CLEAN_PATH.fullmatch(path) is not None and path:
        return path
    if not path:
        return "/"
    if path[0] != "/":
        raise BadRequest("request path does not start with '/'")
    bad = _CONTROL.search(path)
    if bad is not None:
        raise BadRequest(f"request path contains a forbidden character {bad.group()!r}")
    segments: list[str] = []
    raw_segments = path[1:].split("/")
    trailing = False
    for segment in raw_segments:
        semicolon = segment.find(";")
        if semicolon != -1:
            segment = segment[:semicolon]
        if segment == "" or segment == ".":
            trailing = True
            continue
        if segment == "..":
            if segments:
                segments.pop()
            trailing = True
            continue
        segments.append(segment)
        trailing = False
    if not segments:
        return "/"
    result = "/" + "/".join(segments)
    return result + "/" if trailing else result


def quote_path(path: str) -> str:
    """Encode a canonical decoded path for ``raw_path`` or ``REQUEST_URI``."""
    return quote(path, safe=_SAFE_RAW)
