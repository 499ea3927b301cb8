"""The ``peer-middleware`` command.

``peer-middleware demo``
    The whole path on 127.0.0.1: a throwaway CA and SVIDs, the FastAPI example
    under uvicorn, a real Envoy sidecar terminating mTLS in front of it, and a
    table of calls made as several workloads. Exits non-zero if any call's
    status differs from what the example's policy says.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="peer-middleware",
        description="Which service is calling, and may it call this route?",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the example behind a real Envoy sidecar")
    demo.add_argument(
        "--app",
        default="examples.fastapi_app.app:app",
        help="the ASGI app to serve, as module:attribute (default: %(default)s)",
    )
    demo.add_argument("--envoy", default=None, help="path to the envoy binary")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(app_spec=args.app, envoy_binary=args.envoy)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse exits first
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
