"""Istio resources from YAML: the examples of Istio's reference docs, selection, reload, refusals.

The resources follow the examples of istio.io's AuthorizationPolicy and
PeerAuthentication reference pages (same shapes, fields and values).
"""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest

from peer_middleware import Guard, Policy, XfccAuthenticator
from peer_middleware.conditions import RequestFacts
from peer_middleware.inspection import peer_for
from peer_middleware.istio import IstioPolicyError, IstioPolicyFiles, load_istio
from peer_middleware.peer import Peer
from peer_middleware.testing import xfcc_header

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
TEST_NS = "spiffe://cluster.local/ns/test/sa/any"
FOO = "spiffe://cluster.local/ns/foo/sa/app"
OTHER = "spiffe://cluster.local/ns/bar/sa/app"
GOOGLE = {"iss": "https://accounts.google.com", "sub": SLEEP, "groups": ["admins", "dev"]}


def write(tmp_path: Path, text: str, name: str = "policies.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, **options: Any) -> Policy:
    options.setdefault("namespace", "foo")
    options.setdefault("labels", {"app": "httpbin", "version": "v1"})
    return load_istio(write(tmp_path, text), **options)


def status(
    policy: Policy,
    method: str,
    path: str,
    peer: Peer | None,
    facts: RequestFacts | None = None,
) -> int:
    return policy.decide(method, path, peer, facts=facts).enforced_status


HTTPBIN = """\
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata:
      name: httpbin
      namespace: foo
    spec:
      selector:
        matchLabels:
          app: httpbin
          version: v1
      action: ALLOW
      rules:
      - from:
        - source:
            principals: ["cluster.local/ns/default/sa/sleep"]
        - source:
            namespaces: ["test"]
        to:
        - operation:
            methods: ["GET"]
            paths: ["/info/*"]
        - operation:
            methods: ["POST"]
            paths: ["/data"]
        when:
        - key: request.auth.claims[iss]
          values: ["https://accounts.google.com"]
    """


def test_reference_allow_example(tmp_path: Path) -> None:
    policy = load(tmp_path, HTTPBIN)
    with_token = peer_for(SLEEP, GOOGLE)
    assert status(policy, "GET", "/info/a/b", with_token) == 200
    assert status(policy, "POST", "/data", with_token) == 200
    assert status(policy, "GET", "/data", with_token) == 403
    assert status(policy, "GET", "/info", with_token) == 403  # "/info/*" needs the slash
    assert status(policy, "GET", "/info/a", peer_for(SLEEP)) == 403  # no token: no claim
    assert status(policy, "GET", "/info/a", peer_for(TEST_NS, {**GOOGLE, "sub": TEST_NS})) == 200
    assert status(policy, "GET", "/info/a", peer_for(OTHER, {**GOOGLE, "sub": OTHER})) == 403
    assert status(policy, "GET", "/info/a", None) == 401


def test_the_reference_prefix_path_is_refused_not_widened(tmp_path: Path) -> None:
    with pytest.raises(IstioPolicyError) as caught:
        load(tmp_path, HTTPBIN.replace('"/info/*"', '"/info*"'))
    assert str(caught.value).startswith("AuthorizationPolicy foo/httpbin (")
    assert "spec.rules[0].to[0].operation.paths: path '/info*'" in str(caught.value)


def test_reference_allow_all_allow_nothing_deny_all(tmp_path: Path) -> None:
    allow_all = """\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: allow-all, namespace: foo}
        spec:
          rules:
          - {}
        """
    assert status(load(tmp_path, allow_all), "DELETE", "/x", None) == 200
    allow_nothing = """\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: allow-nothing, namespace: foo}
        spec: {}
        """
    assert status(load(tmp_path, allow_nothing), "GET", "/x", peer_for(SLEEP)) == 403
    deny_all = """\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: deny-all, namespace: foo}
        spec:
          action: DENY
          rules:
          - {}
        """
    assert status(load(tmp_path, deny_all), "GET", "/x", peer_for(SLEEP)) == 403
    # No policy selects the workload: Istio allows every request.
    assert status(load(tmp_path, allow_all, namespace="bar"), "GET", "/x", None) == 200


def test_reference_deny_other_namespaces(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        """\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: httpbin-deny, namespace: foo}
        spec:
          selector:
            matchLabels: {app: httpbin, version: v1}
          action: DENY
          rules:
          - from:
            - source:
                notNamespaces: ["foo"]
        """,
    )
    assert status(policy, "GET", "/x", peer_for(FOO)) == 200
    assert status(policy, "GET", "/x", peer_for(OTHER)) == 403
    assert status(policy, "GET", "/x", None) == 403  # no identity: not in foo, denied


def test_reference_ip_blocks_hosts_ports_headers_and_templates(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        """\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: ingress, namespace: istio-system}
        spec:
          action: ALLOW
          rules:
          - from:
            - source:
                ipBlocks: ["1.2.3.4", "5.6.7.0/24"]
            to:
            - operation:
                hosts: ["api.example.com"]
                ports: ["8080"]
                paths: ["/store/{*}/inventory", "/docs/{**}"]
          - from:
            - source:
                remoteIpBlocks: ["203.0.113.0/24"]
            when:
            - key: request.headers[version]
              values: ["v1", "v2"]
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: audit, namespace: foo}
        spec:
          action: AUDIT
          rules:
          - to:
            - operation:
                paths: ["/user/profile/*"]
        """,
        trusted_hops=1,
    )
    good = RequestFacts("api.example.com", 8080, {}, "5.6.7.8")
    assert status(policy, "GET", "/store/s1/inventory", None, good) == 200
    assert status(policy, "GET", "/docs/a/b", None, good) == 200
    assert status(policy, "GET", "/docs", None, good) == 401  # {**}: one or more segments
    assert status(policy, "GET", "/store/s1/x/inventory", None, good) == 401
    wrong_port = RequestFacts("api.example.com", 9090, {}, "5.6.7.8")
    assert status(policy, "GET", "/store/s1/inventory", None, wrong_port) == 401
    wrong_ip = RequestFacts("api.example.com", 8080, {}, "5.6.8.1")
    assert status(policy, "GET", "/store/s1/inventory", None, wrong_ip) == 401
    remote = RequestFacts(
        None, None, {"x-forwarded-for": "9.9.9.9, 203.0.113.7", "version": "v2"}, "10.0.0.1"
    )
    assert status(policy, "GET", "/any", None, remote) == 200
    decision = policy.decide("GET", "/user/profile/7", None, facts=remote)
    assert decision.audit == ("istio:foo/audit/rules[0]",)


def peer_authentication(name: str, namespace: str, body: str) -> str:
    header = f"""\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: {name}, namespace: {namespace}}}
spec:
"""
    return header + textwrap.indent(textwrap.dedent(body), "  ") + "---\n"


NAMESPACE_STRICT = peer_authentication("default", "foo", "mtls: {mode: STRICT}\n")
MESH_STRICT = peer_authentication("default", "istio-system", "mtls: {mode: STRICT}\n")
WORKLOAD_PERMISSIVE = peer_authentication(
    "httpbin", "foo", "selector: {matchLabels: {app: httpbin}}\nmtls: {mode: PERMISSIVE}\n"
)
WORKLOAD_PORTS = peer_authentication(
    "finance",
    "foo",
    """\
    selector: {matchLabels: {app: httpbin}}
    mtls: {mode: STRICT}
    portLevelMtls:
      8080: {mode: DISABLE}
    """,
)


@pytest.mark.parametrize(
    ("documents", "port", "expected"),
    [
        # (no identity, a certificate, a token alone)
        ([NAMESPACE_STRICT], None, (403, 200, 403)),
        ([NAMESPACE_STRICT, WORKLOAD_PERMISSIVE], None, (200, 200, 200)),
        ([MESH_STRICT], None, (403, 200, 403)),
        ([MESH_STRICT, peer_authentication("unset", "foo", "mtls: {}\n")], None, (403, 200, 403)),
        ([WORKLOAD_PORTS], 8080, (200, 200, 200)),
        ([WORKLOAD_PORTS], 8000, (403, 200, 403)),
        ([WORKLOAD_PORTS], None, (403, 200, 403)),
    ],
    ids=[
        "namespace",
        "workload-over-namespace",
        "mesh",
        "unset-inherits",
        "port",
        "other-port",
        "port-unknown",
    ],
)
def test_reference_peer_authentication(
    tmp_path: Path, documents: list[str], port: int | None, expected: tuple[int, int, int]
) -> None:
    policy = load(tmp_path, "".join(documents))
    facts = RequestFacts(port=port)
    token_only = peer_for(None, {"iss": "https://i", "sub": SLEEP})
    got = tuple(
        status(policy, "GET", "/x", peer, facts) for peer in (None, peer_for(SLEEP), token_only)
    )
    assert got == expected


def test_peer_authentication_refusals(tmp_path: Path) -> None:
    with pytest.raises(IstioPolicyError, match=r"spec\.portLevelMtls: needs a selector"):
        load(tmp_path, peer_authentication("p", "foo", "portLevelMtls:\n  80: {mode: STRICT}\n"))
    with pytest.raises(IstioPolicyError, match=r"spec\.mtls\.mode: 'STRICTER' must be one of"):
        load(tmp_path, peer_authentication("p", "foo", "mtls: {mode: STRICTER}\n"))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("action: CUSTOM\n  provider: {name: ext}", "spec.provider"),
        ("action: CUSTOM", "spec.action: CUSTOM"),
        ("targetRef: {kind: Gateway, name: g}", "spec.targetRef"),
        ("rules:\n  - to:\n    - operation:\n        notPaths: ['/a']", "notPaths"),
        ("rules:\n  - to:\n    - operation:\n        pathz: ['/a']", "operation.pathz"),
        (
            "rules:\n  - when:\n    - key: destination.ip\n      values: ['1.2.3.4']",
            "destination.ip",
        ),
        ("rules:\n  - when:\n    - key: connection.sni\n      values: ['a']", "connection.sni"),
        ("rules:\n  - to:\n    - operation:\n        paths: ['*.html']", "'*.html'"),
        ("rules:\n  - to:\n    - operation:\n        methods: ['DELTE']", "unknown method"),
        ("rules:\n  - from:\n    - source:\n        ipBlocks: ['1.2.3.4/8']", "ipBlocks"),
        (
            "action: DENY\n  rules:\n  - to:\n    - operation:\n        notMethods: ['GET']",
            "notMethods",
        ),
        ("rules:\n  - to:\n    - operation:\n        hosts: ['caf\\xe9.example']", "hosts"),
    ],
)
def test_what_cannot_be_evaluated_is_a_load_error(tmp_path: Path, spec: str, field: str) -> None:
    text = f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: p, namespace: foo}}
spec:
  {spec}
"""
    with pytest.raises(IstioPolicyError, match="AuthorizationPolicy foo/p") as caught:
        load_istio(write(tmp_path, text), namespace="foo")
    assert field in str(caught.value)


def test_malformed_duplicate_and_unknown(tmp_path: Path) -> None:
    base = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
    with pytest.raises(IstioPolicyError, match="malformed YAML"):
        load_istio(write(tmp_path, base + "metadata: [\n"), namespace="foo")
    with pytest.raises(IstioPolicyError, match="duplicate key 'spec'"):
        load_istio(
            write(tmp_path, base + "metadata: {name: a}\nspec: {}\nspec: {rules: [{}]}\n"),
            namespace="default",
        )
    twice = base + "metadata: {name: a, namespace: foo}\nspec: {}\n"
    with pytest.raises(IstioPolicyError, match="two resources"):
        load_istio(write(tmp_path, twice + "---\n" + twice), namespace="foo")
    with pytest.raises(IstioPolicyError, match="kind"):
        load_istio(
            write(
                tmp_path, "apiVersion: security.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\n"
            ),
            namespace="foo",
        )


def test_a_directory_of_documents_selected_by_namespace_and_labels(tmp_path: Path) -> None:
    folder = tmp_path / "config"
    folder.mkdir()
    write(
        folder,
        """\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: mesh-deny, namespace: istio-system}
        spec:
          action: DENY
          rules:
          - to:
            - operation:
                paths: ["/admin/*"]
        """,
        "mesh.yaml",
    )
    write(
        folder,
        """\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: reviews-only, namespace: foo}
        spec:
          selector:
            matchLabels: {app: reviews}
          rules:
          - {}
        """,
        "other.yml",
    )
    (folder / "README.txt").write_text("not a policy")
    httpbin = load_istio(folder, namespace="foo", labels={"app": "httpbin"})
    assert status(httpbin, "GET", "/admin/x", peer_for(SLEEP)) == 403
    assert status(httpbin, "GET", "/x", peer_for(SLEEP)) == 200  # no ALLOW policy selects it
    reviews = load_istio(folder, namespace="foo", labels={"app": "reviews"})
    assert [r.name for r in reviews.rules] == [
        "istio:istio-system/mesh-deny/rules[0]",
        "istio:foo/reviews-only/rules[0]",
    ]


def test_reload_swaps_the_policy_and_keeps_the_last_good(tmp_path: Path, caplog: Any) -> None:
    path = write(
        tmp_path,
        """\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: open, namespace: foo}
        spec:
          rules:
          - {}
        """,
    )
    files = IstioPolicyFiles(path, namespace="foo", interval=None)
    guard = Guard(policy=Policy([]), authenticators=[XfccAuthenticator(trusted_proxies=["::1"])])
    files.bind(guard)
    headers = {"x-forwarded-client-cert": xfcc_header(SLEEP)}

    def check(extra: dict[str, str] | None = None) -> int:
        verdict = guard.check("GET", "/x", "/x", ("::1", 1), {**headers, **(extra or {})})
        return verdict.decision.enforced_status

    assert [check(), check(), check()] == [200, 200, 200]
    path.write_text(
        textwrap.dedent(
            """\
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: closed, namespace: foo}
            spec:
              action: DENY
              rules:
              - when:
                - key: request.headers[x-block]
                  values: ["yes"]
            """
        )
    )
    assert files.reload()
    assert check() == 200
    assert check({"x-block": "yes"}) == 403
    assert "x-block" in guard.header_names
    path.write_text("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: [\n")
    with caplog.at_level(logging.ERROR, logger="peer_middleware"):
        assert not files.reload()
    assert "malformed YAML" in caplog.text
    assert check({"x-block": "yes"}) == 403  # the last good policy
    files.close()


def request_authentication(jwks: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata: {{name: jwt-example, namespace: foo}}
        spec:
          selector:
            matchLabels: {{app: httpbin}}
          jwtRules:
          - issuer: "issuer-foo"
            audiences: ["httpbin"]
            jwks: '{jwks}'
        """
    ) + textwrap.indent(textwrap.dedent(extra), "    ")


def test_reference_request_authentication(tmp_path: Path) -> None:
    from peer_middleware.istio import istio_authenticators
    from peer_middleware.testing.tokens import TokenMinter

    minter = TokenMinter(issuer="issuer-foo")
    other = TokenMinter(issuer="issuer-bar")
    jwks = json.dumps(minter.jwks())
    path = write(
        tmp_path,
        request_authentication(
            jwks,
            "fromHeaders:\n- name: Authorization\n  prefix: 'Bearer '\n- name: x-jwt-assertion\n",
        )
        + "---\n"
        + HTTPBIN.replace(
            'principals: ["cluster.local/ns/default/sa/sleep"]',
            'requestPrincipals: ["issuer-foo/*"]',
        ).replace("https://accounts.google.com", "issuer-foo"),
    )
    authenticators = istio_authenticators(path, namespace="foo", labels={"app": "httpbin"})
    assert [a.name for a in authenticators] == ["istio:foo/jwt-example"]
    assert istio_authenticators(path, namespace="foo", labels={"app": "other"}) == []
    policy = load_istio(path, namespace="foo", labels={"app": "httpbin", "version": "v1"})
    guard = Guard(policy=policy, authenticators=authenticators)

    def check(headers: dict[str, str]) -> int:
        verdict = guard.check("POST", "/data", "/data", ("10.0.0.1", 1), headers)
        return verdict.decision.enforced_status

    token = minter.jwt_svid(SLEEP, "httpbin")
    assert check({"authorization": f"Bearer {token}"}) == 200
    assert check({"x-jwt-assertion": token}) == 200
    assert check({"authorization": f"Bearer {other.jwt_svid(SLEEP, 'httpbin')}"}) == 401
    assert check({"authorization": f"Bearer {minter.jwt_svid(SLEEP, 'elsewhere')}"}) == 401
    assert check({}) == 401  # no token: no request principal for the ALLOW rule


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("fromCookies: [session]\n", "fromCookies"),
        ("fromParams: [a, b]\n", "fromParams"),
        ("fromHeaders:\n- name: x-jwt\n", "fromHeaders"),
        ("fromHeaders:\n- name: Authorization\n  prefix: 'Token '\n", "prefix"),
    ],
)
def test_request_authentication_refusals(tmp_path: Path, extra: str, field: str) -> None:
    from peer_middleware.istio import istio_authenticators
    from peer_middleware.testing.tokens import TokenMinter

    jwks = json.dumps(TokenMinter(issuer="issuer-foo").jwks())
    path = write(tmp_path, request_authentication(jwks, extra))
    with pytest.raises(IstioPolicyError, match="RequestAuthentication foo/jwt-example") as caught:
        istio_authenticators(path, namespace="foo", labels={"app": "httpbin"})
    assert field in str(caught.value)
    no_audience = request_authentication(jwks).replace('    audiences: ["httpbin"]\n', "")
    with pytest.raises(IstioPolicyError, match="audiences"):
        istio_authenticators(
            write(tmp_path, no_audience), namespace="foo", labels={"app": "httpbin"}
        )


def test_namespace_globs_header_presence_and_claim_stars(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        """\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: deny-debug, namespace: foo}
        spec:
          action: DENY
          rules:
          - from:
            - source:
                namespaces: ["team-*"]
            when:
            - key: request.headers[x-debug]
              values: ["*"]
        """,
    )
    team = peer_for("spiffe://cluster.local/ns/team-a/sa/x")
    empty = RequestFacts(headers={"x-debug": ""})
    assert status(policy, "GET", "/x", team, empty) == 403  # "*": present, even empty
    assert status(policy, "GET", "/x", team) == 200
    assert status(policy, "GET", "/x", peer_for(FOO), empty) == 200
    with pytest.raises(IstioPolicyError, match=r"request\.auth\.claims\[groups\].*'\*'"):
        load(
            tmp_path,
            """\
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: claims, namespace: foo}
            spec:
              rules:
              - when:
                - key: request.auth.claims[groups]
                  values: ["admin*"]
            """,
        )
