"""Run real servers for tests and demos: bounded waits, clean shutdown, logs on failure.

Everything binds or connects to loopback only. Every wait has a time limit, and every
process or thread started here is stopped when its ``with`` block ends, even when the
block raises. A :class:`ManagedProcess` is stopped by its own process id (and, as a
last resort, its own process group), never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import uvicorn

__all__ = ["ManagedProcess", "ProcessLauncher", "UvicornThread", "free_port", "wait_for_port"]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    Another process may take it before the caller binds it; where the server can
    bind port 0 and report its port instead, prefer that.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 10.0,
    *,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Wait until something accepts TCP connections on ``host:port``.

    Raises :class:`TimeoutError` after ``timeout`` seconds. If ``alive`` is given and
    returns ``False`` (say, the server process exited), raises :class:`RuntimeError`
    at once instead of waiting out the timeout.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        if alive is not None and not alive():
            raise RuntimeError(f"the server for {host}:{port} stopped before it accepted")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"nothing accepted TCP connections on {host}:{port} within {timeout:g} s"
                f" (last error: {last_error})"
            )
        try:
            with socket.create_connection((host, port), timeout=min(remaining, 1.0)):
                return
        except OSError as exc:
            last_error = exc
        time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))


class ManagedProcess:
    """A subprocess in its own session whose output goes to a log file.

    ``with ManagedProcess(["envoy", ...], log_dir=tmp_path, name="envoy") as proc:``
    starts it; leaving the block sends SIGTERM to its pid, waits up to
    ``stop_timeout`` seconds, then SIGKILLs its process group (which only holds the
    process and its own children, thanks to ``start_new_session=True``). The
    arguments are passed to :class:`subprocess.Popen` without a shell.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        log_dir: Path,
        name: str = "process",
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        self.args = [str(arg) for arg in args]
        self.name = name
        self.env = None if env is None else dict(env)
        self.cwd = cwd
        self.stop_timeout = stop_timeout
        self.log_path = self._log_path(Path(log_dir), name)
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @staticmethod
    def _log_path(log_dir: Path, name: str) -> Path:
        candidate = log_dir / f"{name}.log"
        number = 1
        while candidate.exists():
            number += 1
            candidate = log_dir / f"{name}-{number}.log"
        return candidate

    def start(self) -> None:
        """Start the process (called by ``__enter__``)."""
        if self._popen is not None:
            raise RuntimeError(f"{self.name} was already started")
        self._log = self.log_path.open("wb")
        try:
            self._popen = subprocess.Popen(  # noqa: S603 - argument list, no shell
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except BaseException:
            self._log.close()
            self._log = None
            raise

    @property
    def pid(self) -> int:
        """The process id (raises if not started)."""
        return self._process.pid

    @property
    def _process(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self._popen

    def poll(self) -> int | None:
        """The exit status, or ``None`` while it runs."""
        return self._process.poll()

    def is_running(self) -> bool:
        """Whether the process has been started and has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def log_text(self, limit: int = 20_000) -> str:
        """The last ``limit`` characters of the process's output so far."""
        if self._log is not None:
            self._log.flush()
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return text if len(text) <= limit else "...\n" + text[-limit:]

    def stop(self) -> int | None:
        """Stop the process (SIGTERM, then SIGKILL to its group); return its exit status."""
        process = self._popen
        if process is None:
            return None
        try:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    self._kill_group(process)
                    process.wait(timeout=self.stop_timeout)
            return process.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        if sys.platform == "win32":
            process.kill()
            return
        # The session (and so the group) was created for this process alone: its id
        # is the child's pid, so this reaches nothing the caller did not start.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def __enter__(self) -> ManagedProcess:
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
        state = "not started" if self._popen is None else f"pid={self._popen.pid}"
        return f"<ManagedProcess {self.name} {state}>"


class UvicornThread:
    """Serve an ASGI app with uvicorn on ``127.0.0.1`` in a background thread.

    ``with UvicornThread(app) as server: httpx.get(server.url)``. The listening socket
    is bound before uvicorn starts (``port=None`` binds port 0), so :attr:`port` is
    known at once and no other process can take it. Startup and shutdown waits are
    bounded; the lifespan protocol runs (``lifespan="on"``).

    ``proxy_headers`` is always off: otherwise uvicorn rewrites ``scope["client"]``
    and ``scope["scheme"]`` from ``X-Forwarded-For``/``X-Forwarded-Proto`` sent by
    whichever peer it trusts, and the code under test must see the real TCP peer.
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 10.0,
        shutdown_timeout: float = 10.0,
        **config: Any,
    ) -> None:
        if "proxy_headers" in config:
            raise ValueError("UvicornThread always runs with proxy_headers=False")
        self.app = app
        self.host = host
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self._requested_port = 0 if port is None else port
        self._config_overrides = config
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._error: BaseException | None = None
        self.port = self._requested_port

    @property
    def url(self) -> str:
        """``http://<host>:<port>`` (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported by __enter__ / __exit__
            self._error = exc

    def start(self) -> None:
        """Bind, start the thread and wait until uvicorn reports it has started."""
        import uvicorn  # an optional dependency: imported only when used

        sock = socket.socket(_family(self.host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._requested_port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._socket = sock
        self.port = sock.getsockname()[1]
        settings: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "log_level": "warning",
            "lifespan": "on",
            "timeout_graceful_shutdown": 5,
            **self._config_overrides,
        }
        # Never trust X-Forwarded-For here: with proxy_headers on, uvicorn replaces
        # scope["client"] (and scheme) with what the header claims, which would hide
        # the real peer address from the middleware being tested.
        settings["proxy_headers"] = False
        server = uvicorn.Server(uvicorn.Config(self.app, **settings))
        self._server = server
        self._thread = threading.Thread(
            target=self._run, args=(server, sock), name=f"uvicorn-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not server.started:
            if not self._thread.is_alive():
                self._close_socket()
                raise RuntimeError(
                    f"uvicorn stopped during startup on {self.url}"
                    + (f": {self._error!r}" if self._error else " (see its log output)")
                ) from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"uvicorn did not start on {self.url} within {self.startup_timeout:g} s"
                )
            time.sleep(0.01)

    def stop(self) -> None:
        """Ask uvicorn to exit, join the thread (bounded) and close the socket."""
        thread, server = self._thread, self._server
        try:
            if thread is not None and server is not None:
                server.should_exit = True
                thread.join(self.shutdown_timeout)
                if thread.is_alive():
                    server.force_exit = True
                    thread.join(self.shutdown_timeout)
                if thread.is_alive():
                    raise TimeoutError(
                        f"uvicorn on {self.url} did not stop within {2 * self.shutdown_timeout:g} s"
                    )
        finally:
            self._close_socket()

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> UvicornThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._error is not None and exc is None:
            error, self._error = self._error, None
            if not isinstance(error, SystemExit) or error.code not in (0, None):
                raise RuntimeError(f"uvicorn on {self.url} failed: {error!r}") from error


_Launcher = TypeVar("_Launcher", bound="ProcessLauncher")


class ProcessLauncher:
    """Shared plumbing of the proxy launchers: one :class:`ManagedProcess`, stopped by pid.

    Subclasses implement :meth:`start` (which sets ``_process``) and name
    themselves in ``label`` for error messages.
    """

    label = "process"

    def __init__(self) -> None:
        self._process: ManagedProcess | None = None

    def start(self) -> None:  # pragma: no cover - every launcher overrides it
        raise NotImplementedError

    @property
    def pid(self) -> int:
        """The process id."""
        if self._process is None:
            raise RuntimeError(f"the {self.label} has not been started")
        return self._process.pid

    def log_text(self) -> str:
        """The process's output so far (empty before start)."""
        return "" if self._process is None else self._process.log_text()

    def stop(self) -> None:
        """Stop the process (SIGTERM to its pid, then SIGKILL to its process group)."""
        if self._process is not None:
            self._process.stop()

    def __enter__(self: _Launcher) -> _Launcher:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
