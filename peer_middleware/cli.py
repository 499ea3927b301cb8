"""The ``peer-middleware`` command.

``peer-middleware demo [--app MODULE:ATTRIBUTE] [--envoy PATH]``
    The whole path on 127.0.0.1: a throwaway CA and SVIDs, the payments
    service of the FastAPI example under uvicorn, a real Envoy sidecar
    terminating mTLS in front of it, and a table of calls made as several
    workloads. Exits non-zero if any call's status differs from what the
    service's policy says. Needs the ``demo`` extra
    (``pip install 'peer-middleware[demo]'``); the service ships in the
    package (``peer_middleware._demo_app``), so no checkout is needed.

``peer-middleware dev-certs --out DIR [--trust-domain TD] [--svid ID ...] [--server-name NAME ...]``
    For local work only: mint a throwaway CA, X.509-SVIDs for the given SPIFFE
    IDs and a TLS server certificate into ``DIR``, with the trust bundle as
    PEM (``bundle.pem``) and as SPIFFE bundle JSON (``bundle.json``). Private
    keys are written with mode 0600; the CA's key is not written at all.

``peer-middleware explain --app MOD:ATTR [--as ID] [--header K:V] [--token-claims JSON] M PATH``
    The decision for one request, the rule that decided, the path as
    normalised and the trace of every rule (route rules included);
    ``--json`` for JSON. ``--dump`` (no METHOD PATH) prints the effective
    policy as a table (or JSON with ``--json``).

``peer-middleware check --app MODULE:ATTRIBUTE [--strict]``
    Lint the policy against the app's routes; exits 1 on an error (or, with
    ``--strict``, a warning).

Both take the policy from ``--istio PATH --namespace NS [--label K=V]`` or
``--consul PATH --service NAME --consul-trust-domain TD`` instead, judged
against the routes (and route rules) of ``--app`` when it is given too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["main"]

#: The app ``peer-middleware demo`` serves unless ``--app`` names another: a
#: module of the package, importable wherever the package is installed.
DEMO_APP = "peer_middleware._demo_app:app"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="peer-middleware",
        description="Which service is calling, and may it call this route?",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the example behind a real Envoy sidecar")
    demo.add_argument(
        "--app",
        default=DEMO_APP,
        help="the ASGI app to serve, as module:attribute (default: %(default)s)",
    )
    demo.add_argument("--envoy", default=None, help="path to the envoy binary")
    certs = commands.add_parser(
        "dev-certs",
        help="mint a throwaway CA and SPIFFE certificates for local work",
        description="Mint a throwaway CA, X.509-SVIDs and a TLS server certificate for "
        "local development. Not for production: the keys are unencrypted files.",
    )
    certs.add_argument(
        "--trust-domain", default="cluster.local", help="trust domain (default: %(default)s)"
    )
    certs.add_argument(
        "--out", default="dev-certs", help="folder to write into (default: %(default)s)"
    )
    certs.add_argument(
        "--svid",
        action="append",
        default=None,
        metavar="SPIFFE_ID",
        help="a SPIFFE ID to mint an X.509-SVID for (repeatable; default: "
        "spiffe://<trust domain>/ns/default/sa/default)",
    )
    certs.add_argument(
        "--server-name",
        action="append",
        default=None,
        metavar="NAME",
        help="a DNS name for the TLS server certificate (repeatable; default: localhost)",
    )
    explain = commands.add_parser(
        "explain",
        help="explain the decision for one request, or --dump the effective policy",
    )
    _policy_sources(explain)
    explain.add_argument("--as", dest="principal", default=None, help="the caller's SPIFFE ID")
    explain.add_argument(
        "--proof", default="mtls", help="how the caller proved it (default: %(default)s)"
    )
    explain.add_argument(
        "--header", action="append", default=[], metavar="NAME:VALUE", help="a request header"
    )
    explain.add_argument("--token-claims", default=None, help="the bearer token's claims, JSON")
    explain.add_argument("--port", type=int, default=None, help="the port the app was reached on")
    explain.add_argument("--source", default=None, help="the connection's peer address")
    explain.add_argument("--dump", action="store_true", help="print the effective policy")
    explain.add_argument("--json", action="store_true", help="JSON output")
    explain.add_argument("method", nargs="?")
    explain.add_argument("path", nargs="?")
    lint = commands.add_parser("check", help="lint the policy against the app's routes")
    _policy_sources(lint)
    lint.add_argument("--strict", action="store_true", help="warnings fail too")
    args = parser.parse_args(argv)
    if args.command == "explain":
        return _explain(parser, args)
    if args.command == "check":
        return _check(parser, args)
    if args.command == "dev-certs":
        try:
            dev_certs(
                Path(args.out),
                trust_domain=args.trust_domain,
                svids=args.svid or (),
                server_names=args.server_name or ("localhost",),
            )
        except ValueError as exc:
            parser.error(str(exc))
        return 0
    if args.command == "demo":
        needed = ("fastapi", "httpx", "uvicorn") if args.app == DEMO_APP else ("httpx", "uvicorn")
        missing = [name for name in needed if importlib.util.find_spec(name) is None]
        if missing:
            parser.exit(
                2,
                f"peer-middleware demo needs the demo extra (missing: {', '.join(missing)}):\n"
                "    pip install 'peer-middleware[demo]'\n",
            )
        from ._demo import run_demo

        return run_demo(app_spec=args.app, envoy_binary=args.envoy)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse exits first
    return 2  # pragma: no cover


def _policy_sources(command: argparse.ArgumentParser) -> None:
    """The options naming where the policy (and the app's routes) come from."""
    command.add_argument("--app", default=None, help="module:attribute of the app or policy")
    command.add_argument(
        "--istio", default=None, metavar="PATH", help="Istio resources (a file or a folder)"
    )
    command.add_argument("--namespace", default=None, help="the workload's namespace (--istio)")
    command.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="a workload label"
    )
    command.add_argument("--root-namespace", default="istio-system", help="Istio's root namespace")
    command.add_argument("--trusted-hops", type=int, default=0, help="Istio's numTrustedProxies")
    command.add_argument(
        "--consul", default=None, metavar="PATH", help="Consul service-intentions entries"
    )
    command.add_argument("--service", default=None, help="the destination service (--consul)")
    command.add_argument("--consul-trust-domain", default=None, help="<cluster id>.consul")


def _target(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The policy to inspect: the app's, or one read from Istio or Consul files
    (with the app's routes and route rules when ``--app`` is given too)."""
    from .inspection import Target, load_target, with_policy

    target = load_target(args.app) if args.app else None
    if args.istio and args.consul:
        parser.error("give --istio or --consul, not both")
    policy = None
    if args.istio:
        from .istio import load_istio

        if not args.namespace:
            parser.error("--istio needs --namespace")
        labels = {}
        for item in args.label:
            key, sep, value = item.partition("=")
            if not sep or not key:
                parser.error(f"--label {item!r} must be KEY=VALUE")
            labels[key] = value
        policy = load_istio(
            args.istio,
            namespace=args.namespace,
            labels=labels,
            root_namespace=args.root_namespace,
            trusted_hops=args.trusted_hops,
        )
    elif args.consul:
        from .consul import load_consul

        if not args.service or not args.consul_trust_domain:
            parser.error("--consul needs --service and --consul-trust-domain")
        policy = load_consul(
            args.consul,
            service=args.service,
            trust_domain=args.consul_trust_domain,
            namespace=args.namespace or "default",
        )
    if policy is None:
        if target is None:
            parser.error("give --app, --istio or --consul")
        return target
    return Target(policy) if target is None else with_policy(target, policy)


def _explain(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .errors import ConfigurationError, InvalidSpiffeIdError
    from .inspection import dump, explain, peer_for

    try:
        target = _target(parser, args)
        if args.dump:
            print(dump(target.policy, as_json=args.json))
            return 0
        if not args.method or not args.path:
            parser.error("explain needs METHOD PATH (or --dump)")
        headers: dict[str, str] = {}
        for item in args.header:
            name, sep, value = item.partition(":")
            if not sep or not name.strip():
                parser.error(f"--header {item!r} must be NAME:VALUE")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = value if key not in headers else headers[key] + "," + value
        claims = json.loads(args.token_claims) if args.token_claims else None
        peer = peer_for(args.principal, claims, args.proof)
        explanation = explain(
            target, args.method, args.path, peer, headers, port=args.port, source=args.source
        )
    except (
        ConfigurationError,
        InvalidSpiffeIdError,
        ValueError,
        ImportError,
        AttributeError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(explanation.as_dict(), indent=2))
    else:
        print(explanation.format())
    return 0


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .errors import ConfigurationError
    from .inspection import check

    strict = args.strict
    try:
        target = _target(parser, args)
    except (ConfigurationError, ImportError, AttributeError) as exc:
        print(f"error: {exc}")
        return 1
    findings = check(target)
    if target.routes is None:
        print("note: no app routes known (a bare policy or middleware): route checks skipped")
    for finding in findings:
        print(finding)
    failed = any(f.level == "error" or strict for f in findings)
    errors = sum(f.level == "error" for f in findings)
    print(f"{errors} error(s), {len(findings) - errors} warning(s)")
    return 1 if failed else 0


def _file_name(spiffe_id: str) -> str:
    # spiffe://td/ns/shop/sa/cart -> ns-shop-sa-cart; path characters are [A-Za-z0-9._-].
    return spiffe_id.split("/", 3)[3].replace("/", "-")


def dev_certs(
    out: Path,
    *,
    trust_domain: str = "cluster.local",
    svids: Sequence[str] = (),
    server_names: Sequence[str] = ("localhost",),
    stdout: TextIO | None = None,
) -> list[Path]:
    """Write a throwaway CA's bundle, SVIDs and a server certificate into ``out``.

    Returns the paths written. Raises :class:`ValueError` for an invalid trust
    domain or SPIFFE ID, an ID of another trust domain, or a duplicate.
    """
    from .bundles import spiffe_bundle_json
    from .errors import InvalidSpiffeIdError
    from .spiffe import SpiffeId, validate_trust_domain
    from .testing.pki import TestCA

    stdout = sys.stdout if stdout is None else stdout
    try:
        validate_trust_domain(trust_domain)
    except InvalidSpiffeIdError as exc:
        raise ValueError(f"--trust-domain {trust_domain!r}: {exc}") from None
    ids = list(svids) or [f"spiffe://{trust_domain}/ns/default/sa/default"]
    names: dict[str, str] = {}
    for value in ids:
        try:
            spiffe_id = SpiffeId.parse(value)
        except InvalidSpiffeIdError as exc:
            raise ValueError(f"--svid {value!r}: {exc}") from None
        if spiffe_id.trust_domain != trust_domain:
            raise ValueError(f"--svid {value!r} is not in trust domain {trust_domain!r}")
        if spiffe_id.is_trust_domain_id:
            raise ValueError(f"--svid {value!r} names the trust domain, not a workload")
        name = _file_name(spiffe_id.uri)
        if name in names or name in ("bundle", "server"):
            raise ValueError(f"--svid {value!r} would overwrite another file ({name}.pem)")
        names[name] = spiffe_id.uri
    for host in server_names:
        if not host or any(c.isspace() or c in "/\\" for c in host):
            raise ValueError(f"--server-name {host!r} is not a host name")
    out.mkdir(parents=True, exist_ok=True)
    ca = TestCA.create(trust_domain, common_name=f"peer-middleware dev CA ({trust_domain})")
    written: list[tuple[Path, str]] = []
    bundle_pem = out / "bundle.pem"
    bundle_pem.write_bytes(ca.pem)
    written.append((bundle_pem, f"trust bundle for {trust_domain}, PEM"))
    bundle_json = out / "bundle.json"
    bundle_json.write_text(spiffe_bundle_json([ca.certificate], sequence=1), encoding="ascii")
    written.append((bundle_json, f"trust bundle for {trust_domain}, SPIFFE bundle JSON"))
    for name, uri in names.items():
        cert_path, key_path = ca.issue_svid(uri).write(out, name)
        written.append((cert_path, f"X.509-SVID {uri}"))
        written.append((key_path, f"private key of {uri} (mode 0600)"))
    server = ca.issue_server_cert(tuple(server_names))
    cert_path, key_path = server.write(out, "server")
    written.append((cert_path, f"TLS server certificate for {', '.join(server_names)}"))
    written.append((key_path, "private key of the server certificate (mode 0600)"))
    for path, what in written:
        print(f"wrote {path}  ({what})", file=stdout)
    print(
        "the CA's private key was not kept: run dev-certs again to mint more. For local work only.",
        file=stdout,
    )
    return [path for path, _ in written]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
