"""The ``peer_middleware`` dict a decision record carries, as the adapter tests expect it.

Callers behind the test "sidecar" (127.0.0.1) are proven by XFCC, so a record
with a principal has proof ``proxy-asserted`` and proxy ``127.0.0.1``.
"""

from __future__ import annotations

from typing import Any


def fields(
    *,
    outcome: str,
    status: int,
    reason: str,
    path: str,
    rule: str | None = None,
    principal: str | None = None,
    method: str = "GET",
    dry_run: bool = False,
    shadow: tuple[str, ...] = (),
    audit: tuple[str, ...] = (),
    notes: tuple[str, ...] = (),
) -> dict[str, Any]:
    return {
        "outcome": outcome,
        "status": status,
        "rule": rule,
        "reason": reason,
        "principal": principal,
        "proof": "proxy-asserted" if principal is not None else None,
        "proxy": "127.0.0.1" if principal is not None else None,
        "method": method,
        "path": path,
        "dry_run": dry_run,
        "shadow": shadow,
        "audit": audit,
        "notes": notes,
    }
