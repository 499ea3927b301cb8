"""check_raw_target, normalise_path, quote_path and check_method.

The first line is the raw target (latin-1, as servers pass it), the second
the decoded path (UTF-8, invalid bytes replaced, as ASGI servers decode it),
the third the method. Expected: BadRequest, or a canonical path for which
normalise is idempotent and quote_path round-trips through check_raw_target.
Anything else is a crash.
"""

from __future__ import annotations

import contextlib
from urllib.parse import unquote

from _common import fuzz, instrumented, latin1, lines

with instrumented():
    from peer_middleware.errors import BadRequest
    from peer_middleware.paths import check_method, check_raw_target, normalise_path, quote_path

SEEDS = [
    b"/a/b\n/a/b\nGET",
    b"/a%2Fb\n/a/b\nPOST",
    b"/a%2fb?x=%zz\n//a//b/\nget",
    b"/%C3%A9\n/\xc3\xa9\nM-SEARCH",
    b"/%C3a%A9\n/a/../../b\nGET ",
    b"/a#frag\n/a;p=1/..;/c/./d\n",
    b"http://host/a/b\n/a\\b\nG\x00T",
    b"/%00\n/a\x00\nGET",
    b"/%\n/.%2e/\nDELETE",
]


def test_one_input(data: bytes) -> None:
    fields = [*lines(data), b"", b""]
    raw, path, method = latin1(fields[0]), fields[1].decode("utf-8", "replace"), latin1(fields[2])
    with contextlib.suppress(BadRequest):
        check_raw_target(raw)
    try:
        normal = normalise_path(path)
    except BadRequest:
        pass
    else:
        assert normalise_path(normal) == normal, (path, normal)
        assert normal.startswith("/")
        assert "//" not in normal
        assert ";" not in normal
        segments = normal[1:].split("/")
        assert all(s not in (".", "..") for s in segments), normal
        quoted = quote_path(normal)
        assert unquote(quoted) == normal
        check_raw_target(quoted)  # a canonical path always passes as a raw target
    with contextlib.suppress(BadRequest):
        assert check_method(method) == method


if __name__ == "__main__":
    fuzz(test_one_input, SEEDS)
