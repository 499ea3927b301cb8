"""The package's public names (as httpx's tests/test_exported_members.py)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import peer_middleware

INIT = Path(peer_middleware.__file__)
INCLUDED_PRIVATE = {"__version__"}


def isort_key(name: str) -> tuple[int, str]:
    # The order ruff's RUF022 keeps: SCREAMING_CASE, then CamelCase, then the rest.
    if name.isupper():
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


def defined_in_init() -> dict[str, str | None]:
    """Names bound at the top level of ``__init__.py``, with the module they come from."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    names: dict[str, str | None] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            for alias in node.names:
                names[alias.asname or alias.name] = "." * node.level + (node.module or "")
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = None
    return names


def test_all_is_sorted() -> None:
    assert peer_middleware.__all__ == sorted(peer_middleware.__all__, key=isort_key)


def test_all_has_no_duplicates() -> None:
    assert len(peer_middleware.__all__) == len(set(peer_middleware.__all__))


def test_all_is_complete() -> None:
    public = {
        name
        for name in defined_in_init()
        if name != "__all__" and (not name.startswith("_") or name in INCLUDED_PRIVATE)
    }

    assert set(peer_middleware.__all__) == public


def test_every_name_in_all_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from peer_middleware import *", namespace)  # noqa: S102

    for name in peer_middleware.__all__:
        assert getattr(peer_middleware, name) is namespace[name]


def test_reexports_are_public_in_their_modules() -> None:
    for name, module in defined_in_init().items():
        if module is None:
            continue
        source = importlib.import_module(module, package="peer_middleware")
        assert name in source.__all__, f"{name} is not in {source.__name__}.__all__"
        assert getattr(source, name) is getattr(peer_middleware, name)


def test_version() -> None:
    assert peer_middleware.__version__ == "0.1.0"
