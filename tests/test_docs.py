"""Every ``python`` block of README.md and docs/**/*.md runs as written.

The blocks of one section of a page (the text under one heading) share a
namespace and run in order, as a reader would paste them, in a temporary
working directory holding the files the examples name (a trust bundle, a
server certificate and key, minted by :class:`TestCA` when the test runs),
with no network beyond 127.0.0.1. A block that cannot run here (it needs a
cluster, say) is preceded by ``<!-- docs: no-run (the reason) -->``; the
runner skips it, requires the reason, and counts these (``MAX_NO_RUN``) so
that they stay rare. A block that another test runs with the setup it needs
(Django settings, say) is preceded by ``<!-- docs: run-by tests/x.py::test_y -->``,
and that test must exist. An example that raises fails its test.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from peer_middleware.testing.pki import TestCA, write_private

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PYTHON = {"python", "py"}
NO_RUN = re.compile(r"<!--\s*docs:\s*no-run\s*\((?P<reason>[^)]+)\)\s*-->")
RUN_BY = re.compile(r"<!--\s*docs:\s*run-by\s+(?P<test>tests/[\w/]+\.py::\w+)\s*-->")
# Blocks marked no-run across all pages; raise it only with a reason that holds.
MAX_NO_RUN = 6

_HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$")
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")

TRUST_DOMAIN = "cluster.local"
# What the examples read from their working directory and environment.
ENVIRONMENT = {
    "PEER_MIDDLEWARE_TRUSTED_PROXIES": "127.0.0.1,::1",
}

# The Istio resources in ./istio/ that the Istio examples load.
ISTIO_POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: payments
  namespace: shop
spec:
  selector:
    matchLabels:
      app: payments
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/checkout"]
    to:
    - operation:
        methods: ["GET", "POST"]
        paths: ["/payments/*"]
"""


@dataclass
class Block:
    line: int
    code: str
    no_run: str | None = None
    run_by: str | None = None


@dataclass
class Section:
    page: str
    heading: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.page}::{self.heading}"


def sections(path: Path, root: Path = ROOT) -> list[Section]:
    """The sections of a Markdown page that hold ``python`` blocks, in order."""
    page = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    found: dict[str, Section] = {}
    heading = "(top)"
    previous = ""  # the last non-blank line outside a block
    index = 0
    while index < len(lines):
        line = lines[index]
        opening = _FENCE.match(line)
        if opening is None:
            if (match := _HEADING.match(line)) is not None:
                heading = match.group(2)
            if line.strip():
                previous = line
            index += 1
            continue
        indent, fence = opening.group("indent"), opening.group("fence")
        language = opening.group("info").strip().split(" ")[0].lower()
        start = index + 1
        index = start
        while index < len(lines) and not re.match(
            rf"^ {{0,{len(indent) + 3}}}{re.escape(fence[0])}{{{len(fence)},}} *$", lines[index]
        ):
            index += 1
        body = [
            text[len(indent) :] if text.startswith(indent) else text for text in lines[start:index]
        ]
        index += 1
        if language in PYTHON:
            marker = NO_RUN.search(previous)
            run_by = RUN_BY.search(previous)
            block = Block(
                start + 1,
                "\n".join(body) + "\n",
                marker and marker.group("reason"),
                run_by and run_by.group("test"),
            )
            found.setdefault(heading, Section(page, heading)).blocks.append(block)
        previous = line
    return list(found.values())


SECTIONS = [section for path in PAGES for section in sections(path)]


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA.create(TRUST_DOMAIN)


@pytest.fixture
def workdir(tmp_path: Path, ca: TestCA, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the files the examples name, and their environment."""
    (tmp_path / "bundle.pem").write_bytes(ca.pem)
    server = ca.issue_server_cert(["localhost", "127.0.0.1"])
    (tmp_path / "server.pem").write_bytes(server.chain_pem)
    write_private(tmp_path / "server-key.pem", server.key_pem)
    (tmp_path / "istio").mkdir()
    (tmp_path / "istio" / "payments.yaml").write_text(ISTIO_POLICY, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    return tmp_path


def _close(namespace: dict[str, Any]) -> None:
    """Stop what an example left running (a gRPC server on 127.0.0.1)."""
    for value in list(namespace.values()):
        if type(value).__module__.startswith("grpc.") and hasattr(value, "stop"):
            value.stop(None).wait(5)


@pytest.mark.parametrize("section", SECTIONS, ids=[s.id for s in SECTIONS])
def test_python_blocks_run(section: Section, workdir: Path) -> None:
    runnable = [b for b in section.blocks if b.no_run is None and b.run_by is None]
    if not runnable:
        pytest.skip(f"marked: {section.blocks[0].no_run or section.blocks[0].run_by}")
    # A module of its own, so that frameworks reading a handler's module
    # (Litestar, Pydantic) find it.
    name = "docs_example_" + re.sub(r"\W", "_", section.id)
    module = ModuleType(name)
    module.__file__ = str(workdir / f"{name}.py")
    sys.modules[name] = module
    try:
        for block in runnable:
            code = compile(block.code, f"{section.page}:{block.line}", "exec")
            exec(code, module.__dict__)  # noqa: S102
    finally:
        _close(module.__dict__)
        del sys.modules[name]


def test_no_run_markers_are_rare_and_explained() -> None:
    marked = [
        f"{section.page}:{block.line} ({block.no_run})"
        for section in SECTIONS
        for block in section.blocks
        if block.no_run is not None
    ]
    assert all(re.search(r"\w", text.split("(", 1)[1]) for text in marked)
    assert len(marked) <= MAX_NO_RUN, marked


def test_run_by_names_an_existing_test() -> None:
    named = {b.run_by for s in SECTIONS for b in s.blocks if b.run_by is not None}
    for test in named:
        path, name = test.split("::")
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^def {name}\(", source, re.M), f"{test} does not exist"


def test_every_page_with_code_is_found() -> None:
    pages = {section.page for section in SECTIONS}
    assert "README.md" in pages
    assert any(page.startswith("docs/") for page in pages)


@pytest.mark.parametrize(
    "fragment", sorted(p.name for p in (ROOT / "peer_middleware/testing/proxy_configs").iterdir())
)
def test_readme_proxy_configs_hold_the_tested_lines(fragment: str) -> None:
    """Each header-forwarding line the end-to-end proxies run is in the README's block.

    The docs include these files; the README (read on GitHub and PyPI, where
    nothing is included) must show the same lines, whitespace and comments aside.
    """

    def lines(text: str) -> list[str]:
        uncommented = (re.sub(r"(^|\s)#.*", "", line) for line in text.splitlines())
        return [" ".join(line.split()) for line in uncommented if line.strip()]

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n### Behind a TLS-terminating proxy\n")
    section = lines(readme[start : readme.index("\n### ", start + 1)])
    text = (ROOT / "peer_middleware/testing/proxy_configs" / fragment).read_text(encoding="utf-8")
    missing = [line for line in lines(text) if line not in section]
    assert not missing, f"README's proxy configurations lack {missing} of {fragment}"


def test_included_files_and_readme_sections_exist() -> None:
    """What the site's pages include exists (``nox -s docs`` fails otherwise, later)."""
    include = re.compile(r'^\s*--8<-- "(?P<path>[^":]+)(?::(?P<section>[\w-]+))?"\s*$', re.M)
    found = 0
    for page in PAGES[1:]:
        for match in include.finditer(page.read_text(encoding="utf-8")):
            found += 1
            target = ROOT / match.group("path")
            assert target.is_file(), f"{page.name} includes {match.group('path')}"
            if match.group("section"):
                text = target.read_text(encoding="utf-8")
                for side in ("start", "end"):
                    marker = f"<!-- --8<-- [{side}:{match.group('section')}] -->"
                    assert text.count(marker) == 1, f"{page.name}: {marker} in {target.name}"
    assert found


def test_parser_sections_and_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n```python\na = 1\n```\n\n## One\n\n* item\n\n  ```python\n  b = a\n  ```\n\n"
        "<!-- docs: no-run (needs a cluster) -->\n```python\nc = 3\n```\n\n"
        "```sh\necho no\n```\n\n## Two\n\n````python\nd = '```'\n````\n",
        encoding="utf-8",
    )
    found = sections(page, root=tmp_path)
    assert [(s.heading, [(b.code, b.no_run) for b in s.blocks]) for s in found] == [
        ("Title", [("a = 1\n", None)]),
        ("One", [("b = a\n", None), ("c = 3\n", "needs a cluster")]),
        ("Two", [("d = '```'\n", None)]),
    ]
