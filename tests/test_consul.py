"""Consul: SPIFFE IDs of Consul services, and service-intentions entries in HCL and JSON.

The entries follow the examples of Consul's service-intentions reference and
L7 traffic docs (same shapes and values).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from peer_middleware import Policy
from peer_middleware.conditions import RequestFacts
from peer_middleware.consul import (
    ConsulConfigError,
    ConsulService,
    consul_identity,
    load_consul,
)
from peer_middleware.inspection import peer_for
from peer_middleware.peer import Peer

TD = "11111111-2222-3333-4444-555555555555.consul"


def svc(
    name: str, namespace: str = "default", dc: str = "dc1", partition: str | None = None
) -> Peer:
    prefix = f"/ap/{partition}" if partition else ""
    peer = peer_for(f"spiffe://{TD}{prefix}/ns/{namespace}/dc/{dc}/svc/{name}")
    assert peer is not None
    return peer


def write(tmp_path: Path, text: str, name: str = "intentions.hcl") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def status(policy: Policy, method: str, path: str, peer: Peer | None, facts: Any = None) -> int:
    return policy.decide(method, path, peer, facts=facts).enforced_status


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/ns/default/dc/dc1/svc/web", ("default", "default", "dc1", "web")),
        ("/ap/finance/ns/billing/dc/dc2/svc/api", ("finance", "billing", "dc2", "api")),
        ("/ns/default/sa/web", None),
        ("/ns/default/dc/dc1/svc", None),
        ("/ap/x/ns/default/dc/dc1/svc/web/extra", None),
    ],
)
def test_consul_identity(path: str, expected: Any) -> None:
    assert consul_identity(path) == expected


def test_consul_service_matcher() -> None:
    web = ConsulService("web", trust_domain=TD)
    assert web(svc("web"))
    assert web(svc("web", dc="dc2"))
    assert not web(svc("api"))
    assert not web(svc("web", namespace="other"))
    assert not web(svc("web", partition="finance"))
    assert not web(peer_for("spiffe://other.consul/ns/default/dc/dc1/svc/web"))
    assert not web(peer_for("spiffe://" + TD + "/ns/default/sa/web"))
    assert not web(None)
    assert ConsulService("*", trust_domain=TD, namespace="*")(svc("x", namespace="y"))
    assert ConsulService("web", trust_domain=TD, datacenter="dc1")(svc("web"))
    assert not ConsulService("web", trust_domain=TD, datacenter="dc1")(svc("web", dc="dc2"))
    assert ConsulService("web", trust_domain=TD, partition="finance")(
        svc("web", partition="finance")
    )
    assert ConsulService("web", trust_domain=TD, datacenter="dc1").describe() == (
        "ConsulService('web', datacenter='dc1')"
    )


L4 = """\
    Kind = "service-intentions"
    Name = "db"
    Sources = [
      {
        Name   = "web"
        Action = "deny"
      },
      {
        Name   = "api"
        Action = "allow"
      }
    ]
    """


def test_reference_l4_hcl_and_json(tmp_path: Path) -> None:
    hcl = load_consul(write(tmp_path, L4), service="db", trust_domain=TD)
    document = {
        "Kind": "service-intentions",
        "Name": "db",
        "Sources": [{"Name": "web", "Action": "deny"}, {"Name": "api", "Action": "allow"}],
    }
    path = tmp_path / "db.json"
    path.write_text(json.dumps(document))
    from_json = load_consul(path, service="db", trust_domain=TD)
    for policy in (hcl, from_json):
        assert status(policy, "GET", "/x", svc("web")) == 403
        assert status(policy, "POST", "/x", svc("api")) == 200
        assert status(policy, "GET", "/x", svc("other")) == 403  # default deny
        assert status(policy, "GET", "/x", None) == 401


def test_reference_wildcard_precedence(tmp_path: Path) -> None:
    policy = load_consul(
        write(
            tmp_path,
            """\
            Kind = "service-intentions"
            Name = "db"
            Sources = [
              {
                Name   = "*"
                Action = "deny"
              },
              {
                Name   = "web"
                Action = "allow"
              }
            ]
            """,
        ),
        service="db",
        trust_domain=TD,
    )
    # The exact name wins over "*", whatever the order written.
    assert status(policy, "GET", "/x", svc("web")) == 200
    assert status(policy, "GET", "/x", svc("api")) == 403


L7 = """\
    Kind = "service-intentions"
    Name = "api"
    Sources = [
      {
        Name = "admin-dashboard"
        Permissions = [
          {
            Action = "allow"
            HTTP {
              PathPrefix = "/v2/"
              Methods   = ["GET", "PUT", "POST", "DELETE", "HEAD"]
            }
          }
        ]
      },
      {
        Name = "report-generator"
        Permissions = [
          {
            Action = "deny"
            HTTP {
              Header = [ { Name = "x-debug", Present = true } ]
            }
          },
          {
            Action = "allow"
            HTTP {
              PathPrefix = "/v2/widgets/"
              Methods   = ["GET"]
            }
          },
          {
            Action = "allow"
            HTTP {
              PathExact = "/healthz"
              Header = [
                { Name = "x-team", Prefix = "reports-" },
                { Name = "x-team", Suffix = "-test", Invert = true }
              ]
            }
          }
        ]
      },
      {
        Name   = "*"
        Action = "allow"
      }
    ]
    """


def test_reference_l7_permissions(tmp_path: Path) -> None:
    policy = load_consul(write(tmp_path, L7), service="api", trust_domain=TD)
    admin, reports = svc("admin-dashboard"), svc("report-generator")
    assert status(policy, "DELETE", "/v2/users/1", admin) == 200
    assert status(policy, "PATCH", "/v2/users/1", admin) == 403
    assert status(policy, "GET", "/v1/users", admin) == 403  # not "*": its own intention decides
    assert status(policy, "GET", "/v2/widgets/7", reports) == 200
    assert status(policy, "POST", "/v2/widgets/7", reports) == 403
    team = RequestFacts(headers={"x-team": "reports-eu"})
    assert status(policy, "GET", "/healthz", reports, team) == 200
    debug = RequestFacts(headers={"x-team": "reports-eu", "x-debug": "1"})
    assert status(policy, "GET", "/healthz", reports, debug) == 403
    assert status(policy, "GET", "/v2/widgets/7", reports, debug) == 403
    test_team = RequestFacts(headers={"x-team": "reports-test"})
    assert status(policy, "GET", "/healthz", reports, test_team) == 403
    assert status(policy, "GET", "/anything", svc("other")) == 200  # the "*" intention


def test_the_reference_prefix_without_slash_is_refused(tmp_path: Path) -> None:
    text = L7.replace('"/v2/widgets/"', '"/v2/widgets"')
    with pytest.raises(ConsulConfigError) as caught:
        load_consul(write(tmp_path, text), service="api", trust_domain=TD)
    assert "service-intentions 'api'" in str(caught.value)
    assert "Sources[1].Permissions[1].HTTP.PathPrefix: '/v2/widgets' is a prefix" in str(
        caught.value
    )


def test_deny_permissions_first(tmp_path: Path) -> None:
    policy = load_consul(
        write(
            tmp_path,
            """\
            Kind = "service-intentions"
            Name = "api"
            Sources = [
              {
                Name = "web"
                Permissions = [
                  { Action = "deny", HTTP { PathPrefix = "/admin/" } },
                  { Action = "allow", HTTP { PathPrefix = "/" } }
                ]
              }
            ]
            """,
        ),
        service="api",
        trust_domain=TD,
    )
    assert status(policy, "GET", "/admin/x", svc("web")) == 403
    assert status(policy, "GET", "/x", svc("web")) == 200


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ('{ Name = "web", Peer = "cluster-02", Action = "allow" }', "Peer"),
        ('{ Name = "web", SamenessGroup = "g", Action = "allow" }', "SamenessGroup"),
        ('{ Name = "web", Action = "maybe" }', "'maybe' must be 'allow' or 'deny'"),
        ('{ Name = "web" }', "exactly one of Action and Permissions"),
        ('{ Name = "web", Action = "allow", Colour = "red" }', "Colour"),
        (
            '{ Name = "web", Permissions = [ { Action = "allow", HTTP { PathRegex = "/a.*" } } ] }',
            "PathRegex",
        ),
        (
            '{ Name = "web", Permissions = [ { Action = "allow", JWT { Providers = [] } } ] }',
            "JWT",
        ),
        (
            '{ Name = "web", Permissions = [ { Action = "allow", HTTP { Methods = ["DELTE"] } } ]'
            " }",
            "unknown method 'DELTE'",
        ),
        (
            '{ Name = "web", Permissions = [ { Action = "allow", HTTP { Header = '
            '[ { Name = "x", Present = true, Invert = true } ] } } ] }',
            "Invert",
        ),
        (
            '{ Name = "web", Permissions = [ { Action = "allow" }, { Action = "deny" } ] }',
            "a deny after an allow",
        ),
        (
            '{ Name = "web", Permissions = [ { Action = "allow", HTTP { Header = '
            '[ { Name = "x", Regex = "a.*" } ] } } ] }',
            "Regex",
        ),
    ],
)
def test_what_cannot_be_evaluated_is_a_load_error(tmp_path: Path, source: str, field: str) -> None:
    text = f'Kind = "service-intentions"\nName = "api"\nSources = [\n  {source}\n]\n'
    with pytest.raises(ConsulConfigError, match="service-intentions 'api'") as caught:
        load_consul(write(tmp_path, text), service="api", trust_domain=TD)
    assert field in str(caught.value)


def test_malformed_and_duplicate(tmp_path: Path) -> None:
    with pytest.raises(ConsulConfigError, match="duplicate key 'Name'"):
        load_consul(
            write(
                tmp_path, 'Kind = "service-intentions"\nName = "api"\nName = "db"\nSources = []\n'
            ),
            service="api",
            trust_domain=TD,
        )
    with pytest.raises(ConsulConfigError, match="duplicate key 'Action'"):
        load_consul(
            write(
                tmp_path,
                'Kind = "service-intentions"\nName = "api"\n'
                'Sources = [ { Name = "a", Action = "allow", Action = "deny" } ]\n',
            ),
            service="api",
            trust_domain=TD,
        )
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"Kind": "service-intentions", "Kind": "x"}')
    with pytest.raises(ConsulConfigError, match="duplicate key 'Kind'"):
        load_consul(bad_json, service="api", trust_domain=TD)
    bad_json.write_text("{")
    with pytest.raises(ConsulConfigError, match="malformed"):
        load_consul(bad_json, service="api", trust_domain=TD)
    with pytest.raises(ConsulConfigError, match="Kind: must be 'service-intentions'"):
        load_consul(
            write(tmp_path, 'Kind = "service-defaults"\nName = "api"\n'),
            service="api",
            trust_domain=TD,
        )
    with pytest.raises(ConsulConfigError, match="no service-intentions entry for 'web'"):
        load_consul(write(tmp_path, L4), service="web", trust_domain=TD)


def test_a_directory_of_entries(tmp_path: Path) -> None:
    folder = tmp_path / "entries"
    folder.mkdir()
    write(folder, L4, "db.hcl")
    write(folder, L7, "api.hcl")
    (folder / "notes.txt").write_text("ignored")
    assert status(load_consul(folder, service="db", trust_domain=TD), "GET", "/", svc("api")) == 200
    api = load_consul(folder, service="api", trust_domain=TD)
    assert status(api, "GET", "/v2/x", svc("admin-dashboard")) == 200


def test_reload_swaps_and_keeps_the_last_good(tmp_path: Path, caplog: Any) -> None:
    import logging

    from peer_middleware import Guard, XfccAuthenticator
    from peer_middleware.consul import ConsulPolicyFiles
    from peer_middleware.testing import xfcc_header

    path = write(tmp_path, L4)
    files = ConsulPolicyFiles(path, service="db", trust_domain=TD, interval=None)
    guard = Guard(policy=Policy([]), authenticators=[XfccAuthenticator(trusted_proxies=["::1"])])
    files.bind(guard)

    def check(name: str) -> int:
        headers = {
            "x-forwarded-client-cert": xfcc_header(f"spiffe://{TD}/ns/default/dc/dc1/svc/{name}")
        }
        return guard.check("GET", "/x", "/x", ("::1", 1), headers).decision.enforced_status

    assert [check("api"), check("api"), check("web")] == [200, 200, 403]
    path.write_text(L4.replace('Action = "deny"', 'Action = "allow"').replace("    ", ""))
    assert files.reload()
    assert check("web") == 200
    path.write_text('Kind = "service-intentions"\nName = "db"\nSources = [ { Name = "web" } ]\n')
    with caplog.at_level(logging.ERROR, logger="peer_middleware"):
        assert not files.reload()
    assert "exactly one of Action and Permissions" in caplog.text
    assert files.last_error is not None
    assert check("web") == 200  # the last good policy
    files.close()
