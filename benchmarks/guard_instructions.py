#!/usr/bin/env python
"""Instructions per repeat request of the middleware, under cachegrind.

Timing on a shared, loaded machine is noise; the number of instructions a
request executes is not. Each case runs in a child process under
``valgrind --tool=cachegrind`` twice, with ``--small`` and ``--large``
requests after the same warm-up, and prints
``(instructions(large) - instructions(small)) / (large - small)``.

Cases (a repeat caller through XFCC, the bench's policy of 1,000 rules):

``guard``
    ``Guard.check`` alone.
``wsgi``
    ``PeerWSGIMiddleware`` around a no-op WSGI app.
``asgi`` / ``starlette``
    ``PeerMiddleware`` around the bench's Starlette app / the bare app: their
    difference is what the middleware adds in front of Starlette.

``Flask:<usage>``, ``Quart:<usage>``, ``Litestar:<usage>``
    Section 6's apps, as their README sections protect a route, for a usage
    of ``bare``, ``trivial``, ``central rule``, ``route rule`` and
    ``route rule + peer`` (this checkout only).

``--tree DIR`` measures another checkout (its own ``peer_middleware`` and
``benchmarks/bench.py``), so that two versions compare in one run::

    python benchmarks/guard_instructions.py
    python benchmarks/guard_instructions.py --tree /tmp/old guard wsgi

Needs valgrind (Debian: ``apt-get install valgrind``); minutes per case.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = ("guard", "wsgi", "asgi", "starlette")


def child(case: str, count: int) -> None:
    import bench

    logging.getLogger("peer_middleware").setLevel(logging.ERROR)
    if ":" in case:
        framework, usage = case.split(":", 1)
        cases, _ = bench.framework_cases()
        (found,) = [
            c for c in cases if c.framework == f"{framework} (README)" and c.middleware == usage
        ]
        if found.kind == "wsgi":
            bench.run_wsgi_framework(found.app, found.requests(300))
            requests = found.requests(count)
            gc.collect()
            gc.freeze()
            bench.run_wsgi_framework(found.app, requests)
        else:

            async def run_framework() -> None:
                await bench.run_asgi_framework(found.app, found.requests(300))
                requests = found.requests(count)
                gc.collect()
                gc.freeze()
                await bench.run_asgi_framework(found.app, requests)

            asyncio.run(run_framework())
    elif case == "guard":
        from peer_middleware import Guard, XfccAuthenticator
        from peer_middleware.testing import xfcc_header

        guard = Guard(
            policy=bench.policy(1000),
            authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
        )
        headers = {"x-forwarded-client-cert": xfcc_header(bench.CALLER)}
        client = ("127.0.0.1", 50000)
        path = bench.PATH
        for _ in range(300):
            guard.check("GET", path, path, client, headers)
        gc.collect()
        gc.freeze()
        for _ in range(count):
            guard.check("GET", path, path, client, headers)
    elif case == "wsgi":
        app = bench.wrap_wsgi(bench.noop_wsgi_app, "xfcc", 1000)
        environ = bench.caller_environ("xfcc")
        bench.run_wsgi(app, [dict(environ) for _ in range(300)])
        environs = [dict(environ) for _ in range(count)]
        gc.collect()
        gc.freeze()
        bench.run_wsgi(app, environs)
    else:
        starlette = bench.starlette_app()
        app = starlette if case == "starlette" else bench.wrap_asgi(starlette, "xfcc", 1000)
        scope = bench.caller_scope("xfcc")

        async def run() -> None:
            await bench.run_asgi(app, [dict(scope) for _ in range(300)])
            scopes = [dict(scope) for _ in range(count)]
            gc.collect()
            gc.freeze()
            await bench.run_asgi(app, scopes)

        asyncio.run(run())


def instructions(tree: str, case: str, count: int) -> int:
    command = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        sys.executable, os.path.abspath(__file__), "--tree", tree, "--child", case, str(count),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": tree}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    match = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    if match is None:
        raise SystemExit(f"no instruction count from valgrind for {case}:\n{result.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help=f"of {', '.join(CASES)} (default: all)")
    parser.add_argument("--tree", default=os.path.dirname(HERE), help="checkout to measure")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=5000)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    tree = os.path.abspath(args.tree)
    sys.path.insert(0, os.path.join(tree, "benchmarks"))
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    unknown = sorted(c for c in set(args.cases) - set(CASES) if ":" not in c)
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    for case in args.cases or CASES:
        small = instructions(tree, case, args.small)
        large = instructions(tree, case, args.large)
        print(
            f"{case:10} {(large - small) / (args.large - args.small):10,.0f} instructions/request"
        )


if __name__ == "__main__":
    main()
