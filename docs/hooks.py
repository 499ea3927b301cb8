"""MkDocs hooks of the documentation site (mkdocs.yml ``hooks:``).

Pages include sections of ``README.md`` and the whole ``CHANGELOG.md`` with a
line ``--8<-- "README.md:fastapi"`` (the text between the README's
``<!-- --8<-- [start:fastapi] -->`` and ``<!-- --8<-- [end:fastapi] -->``)
or ``--8<-- "CHANGELOG.md"``, so the site and the README (whose examples the
tests run) cannot drift. These root files are expanded here rather than by
pymdownx.snippets because their links are relative to the repository root, as
GitHub shows them: links into ``docs/`` (and to the files that are pages, such as
``benchmarks/RESULTS.md``) become links to the site's pages, and
links to other files of the repository (which are not pages) become their
path as code. A link to a file that does not exist is left alone, and an
unknown section is an error, so ``mkdocs build --strict`` reports both.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ROOT_FILES = ("README.md", "CHANGELOG.md")
# Files of the repository that are pages of the site, under another name.
PAGES_OF_FILES = {"benchmarks/RESULTS.md": "benchmarks.md", "CHANGELOG.md": "changelog.md"}
_INCLUDE = re.compile(
    r'^--8<-- "(?P<file>' + "|".join(map(re.escape, ROOT_FILES)) + r')(?::(?P<section>[\w-]+))?"$',
    re.M,
)
_MARKER = re.compile(r"^ *<!-- --8<-- \[(start|end):[\w-]+\] -->\n", re.M)
_LINK = re.compile(r"\[([^\]]+)\]\((?!https?:|mailto:|#)([^)\s#]+)(#[^)\s]*)?\)")


def _relinker(page_uri: str) -> Any:
    depth = page_uri.count("/")

    def relink(match: re.Match[str]) -> str:
        text, target, anchor = match.group(1), match.group(2), match.group(3) or ""
        if target in PAGES_OF_FILES or target.startswith("docs/"):
            inside = PAGES_OF_FILES.get(target) or target.removeprefix("docs/")
            relative = posixpath.join(*([".."] * depth), inside) if depth else inside
            return f"[{text}]({relative}{anchor})"
        if (ROOT / target).exists():
            return text if text.startswith("`") else f"`{text}`"
        return match.group(0)

    return relink


def _section(file: str, name: str | None) -> str:
    text = (ROOT / file).read_text(encoding="utf-8")
    if name is None:
        return text
    start = f"<!-- --8<-- [start:{name}] -->"
    end = f"<!-- --8<-- [end:{name}] -->"
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"{file} has no single section {name!r} ({start} ... {end})")
    return text[text.index(start) + len(start) : text.index(end)]


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    relink = _relinker(page.file.src_uri)

    def include(match: re.Match[str]) -> str:
        body = _MARKER.sub("", _section(match.group("file"), match.group("section")))
        return _LINK.sub(relink, body.strip("\n"))

    return _INCLUDE.sub(include, markdown)
