#!/usr/bin/env python
"""Instructions per request of each framework's README usage under its real server.

Section 10 of ``bench.py`` measures requests per second under ``wrk``; on a
shared virtual machine whose speed drifts by tens of per cent within seconds,
a 5 % difference hides in that noise. The number of instructions the server
process executes per request does not drift. For each framework and usage of
section 10 (``served.py``), the server (uvicorn, or gunicorn with one sync
worker) runs under ``valgrind --tool=cachegrind`` twice, answering ``--small``
then ``--large`` sequential requests from a client outside valgrind (a kept-alive
connection for uvicorn; a connection per request for gunicorn's sync worker,
which closes after each response), after the same warm-up, and this prints
``(instructions(large) - instructions(small)) / (large - small)`` per usage,
with the ratio to the bare app's. Everything the server process does for a
request counts: the HTTP parsing, the event loop, the framework, the
middleware.

    python benchmarks/server_instructions.py                # every framework
    python benchmarks/server_instructions.py Flask Quart    # some

Needs valgrind (Debian: ``apt-get install valgrind``); about a minute per
usage. ``PYTHONHASHSEED`` is fixed so that the two runs of a usage execute the
same start-up.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench  # noqa: E402
import served  # noqa: E402

WARM_UP = 200


def _request(connection: http.client.HTTPConnection, headers: dict[str, str]) -> None:
    connection.request("GET", bench.PATH, headers=headers)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200 or body != b"ok":
        raise bench.SanityError(f"status {response.status}, body {body[:200]!r}")


def _drive(port: int, count: int, keep_alive: bool) -> None:
    headers = {k: v for k, v in bench._server_headers().items() if k != "host"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for _ in range(count):
            if not keep_alive:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            _request(connection, headers)
    finally:
        connection.close()


def _wait(port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise bench.SanityError("the server did not start under valgrind") from None
            time.sleep(0.5)


def instructions(framework: served.Framework, usage: str, count: int) -> int:
    """Instructions of the server process(es), start-up to exit, serving ``count`` requests."""
    with tempfile.TemporaryDirectory() as out:
        port = bench._free_port()
        command = [
            "valgrind", "--tool=cachegrind", "--cache-sim=no", "--trace-children=yes",
            f"--cachegrind-out-file={out}/cg.%p",
            *served._command(framework, port),
        ]  # fmt: skip
        env = {
            **os.environ,
            "PYTHONHASHSEED": "0",
            "PEER_BENCH_FRAMEWORK": framework.name,
            "PEER_BENCH_USAGE": usage,
        }
        process = subprocess.Popen(command, cwd=bench._ROOT, env=env, stderr=subprocess.DEVNULL)
        try:
            _wait(port, time.monotonic() + 600)
            keep_alive = framework.server == "uvicorn"
            _drive(port, WARM_UP + count, keep_alive)
        finally:
            process.terminate()
            process.wait(timeout=600)
        total = 0
        for path in glob.glob(f"{out}/cg.*"):
            with open(path, encoding="utf-8") as data:
                match = re.search(r"^summary: (\d+)", data.read(), re.MULTILINE)
            if match is not None:
                total += int(match.group(1))
        return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("frameworks", nargs="*", help="names as in served.FRAMEWORKS")
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=1_300)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (Debian: apt-get install valgrind)")
    chosen = [f for f in served.FRAMEWORKS if not args.frameworks or f.name in args.frameworks]
    print("| framework · server | usage | instructions per request | ratio to bare |")
    print("|---|---|--:|--:|")
    for framework in chosen:
        bare = 0.0
        for usage in framework.usages:
            small = instructions(framework, usage, args.small)
            large = instructions(framework, usage, args.large)
            per_request = (large - small) / (args.large - args.small)
            bare = bare or per_request
            print(
                f"| {framework.name} · {framework.server} | {usage} | "
                f"{per_request / 1000:,.1f}k | {per_request / bare:.3f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
