"""MkDocs hooks of the documentation site (mkdocs.yml ``hooks:``).

The changelog page is ``CHANGELOG.md`` itself, read when the site is built.
Its links are relative to the repository root (as GitHub shows the file), so
links into ``docs/`` become links to the site's pages, and links to other
files of the repository (which are not pages) become their path as code.
A link to a file that does not exist is left alone, so ``--strict`` reports it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHANGELOG_PAGE = "changelog.md"
_LINK = re.compile(r"\[([^\]]+)\]\((?!https?:|mailto:|#)([^)\s#]+)(#[^)\s]*)?\)")


def _relink(match: re.Match[str]) -> str:
    text, target, anchor = match.group(1), match.group(2), match.group(3) or ""
    if target.startswith("docs/"):
        return f"[{text}]({target.removeprefix('docs/')}{anchor})"
    if (ROOT / target).exists():
        return text if text.startswith("`") else f"`{text}`"
    return match.group(0)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri != CHANGELOG_PAGE:
        return markdown
    return _LINK.sub(_relink, (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"))
