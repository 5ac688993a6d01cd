"""The HTTP endpoint of a gate process's metrics (docs/monitoring.md).

:func:`start_gate_metrics` serves a process's ``farecore.fleet.metrics`` on the address
``[metrics] listen`` names: its own registry, or, in multi-process mode
(``[metrics] multiprocess_dir``), the sum of every gate process of the host. Then each
process writes into the directory and whichever holds the address serves; the others
stand by and take it over when it goes. Before each scrape of the sum, the live gauges
of writers that died are removed. :func:`serve_metrics_dir` serves such a directory
without writing (the simulator's parent).

The endpoint answers ``GET /metrics`` and nothing else, with a bounded number of
threads, and never lets a failure reach the gates: a scrape that cannot be rendered is
a 500 and one log line.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from farecore.closing import Closing
from farecore.errors import ConfigError
from farecore.fleet.metrics import ENV_DIR, FleetMetrics, sweep_dead, use_multiprocess_dir

__all__ = [
    "MetricsServer",
    "MetricsService",
    "parse_listen",
    "serve_metrics_dir",
    "start_gate_metrics",
]

_log = logging.getLogger(__name__)

# The classic text format, which every Prometheus reads (generate_latest writes it).
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LISTEN = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-]+)):(?P<port>[0-9]{1,5})"
)


def parse_listen(text: str, where: str = "metrics.listen") -> tuple[str, int]:
    """``HOST:PORT`` (``127.0.0.1:9464``, ``[::1]:9464``, ``0.0.0.0:9464``) as (host, port)."""
    m = _LISTEN.fullmatch(text) if isinstance(text, str) and len(text) <= 300 else None
    if m is None or int(m["port"]) > 65535:
        raise ConfigError(
            f"{where} must be HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464), not {text!r}"
        )
    return (m["v6"] or m["host"], int(m["port"]))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # not SO_REUSEPORT: a second listener still gets EADDRINUSE

    def __init__(self, address: tuple[str, int], render: Callable[[], bytes], clients: int):
        self.address_family = socket.getaddrinfo(
            address[0], address[1], type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0][0]
        self.render = render
        self._slots = threading.BoundedSemaphore(clients)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # A peer that opens connections and sends nothing holds a thread until the
        # handler's timeout: past a few at once, new ones are closed unanswered.
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "farecore-metrics"
    sys_version = ""
    timeout = 5  # seconds a peer may take to send its request
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics is served here")
            return
        try:
            data = self.server.render()
        except Exception as exc:  # one line in the log; the scraper sees the failure
            _log.warning("metrics: cannot render: %s", exc)
            self.send_error(500, "metrics cannot be rendered")
            return
        self.send_response(200)
        self.send_header("Content-Type", _CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("metrics: %s %s", self.address_string(), format % args)


class MetricsServer(Closing):
    """An HTTP endpoint on ``address`` answering ``GET /metrics`` with ``render()``.

    Raises OSError if it cannot listen. ``close`` stops it and frees the address.
    """

    def __init__(
        self, address: tuple[str, int], render: Callable[[], bytes], *, clients: int = 8
    ) -> None:
        self._httpd = _Server(address, render, clients)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="farecore-metrics",
            daemon=True,
        )
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return (str(host), int(port))

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()


class _Files:
    """prometheus_client's MultiProcessCollector, less the files a writer has only just
    created: empty until the writer sizes them, and reading one would fail the scrape.
    Leaving one out leaves out nothing but zeros."""

    def __init__(self, d: Path) -> None:
        self._d = d

    def collect(self) -> Any:
        files = []
        for path in glob.glob(str(self._d / "*.db")):
            try:
                if os.path.getsize(path) >= 8:
                    files.append(path)
            except FileNotFoundError:  # a dead writer's live gauges, just swept
                continue
        return MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]


def _render_dir(d: Path, before: Callable[[], None] | None = None) -> Callable[[], bytes]:
    registry = CollectorRegistry()
    registry.register(_Files(d))
    lock = threading.Lock()

    def render() -> bytes:
        if before is not None:
            before()
        with lock:  # a sweep must not remove files another scrape is reading
            sweep_dead(d)
            return generate_latest(registry)

    return render


def serve_metrics_dir(
    listen: str, directory: str | os.PathLike[str], where: str = "metrics.listen"
) -> MetricsServer:
    """Serve the sum of what every process writes into ``directory``, writing nothing
    (the simulator's parent, or a host's own metrics service). ``where`` names the
    setting in error messages."""
    address = parse_listen(listen, where)
    d = Path(directory).absolute()
    if not d.is_dir():
        raise ConfigError(f"metrics directory {d}: no such directory")
    try:
        return MetricsServer(address, _render_dir(d))
    except OSError as exc:
        raise ConfigError(f"{where} {listen}: cannot listen: {exc}") from None


class MetricsService(Closing):
    """A gate process's metrics and their endpoint (made by :func:`start_gate_metrics`).

    ``metrics`` is what the gates of this process report into. ``serving`` says whether
    this process answers on the address now; in multi-process mode a process that found
    it taken stands by and tries again every ``interval_s``.
    """

    def __init__(
        self, listen: str, multiprocess_dir: str | os.PathLike[str] | None, interval_s: float
    ) -> None:
        self._address = parse_listen(listen)
        self._listen = listen
        self._interval_s = interval_s
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._server: MetricsServer | None = None
        self._threads: list[threading.Thread] = []
        if multiprocess_dir is None:
            if os.environ.get(ENV_DIR):
                raise ConfigError(
                    f"{ENV_DIR} is set in the environment but metrics.multiprocess_dir is not"
                )
            self.metrics = FleetMetrics()
            self._dir: Path | None = None
            self._render = self._render_own
        else:
            if self._address[1] == 0:
                raise ConfigError(
                    "metrics.listen needs a fixed port with metrics.multiprocess_dir: every "
                    "gate process of the host names the same address"
                )
            self._dir = use_multiprocess_dir(multiprocess_dir)
            self.metrics = FleetMetrics()
            self._render = _render_dir(self._dir, self.metrics.refresh)
        try:
            self._listen_now()
        except BaseException:
            self.close()
            raise

    def _render_own(self) -> bytes:
        self.metrics.refresh()
        return generate_latest(self.metrics.registry)

    def _listen_now(self) -> None:
        try:
            self._server = MetricsServer(self._address, self._render)
        except OSError as exc:
            if self._dir is None or exc.errno != errno.EADDRINUSE:
                raise ConfigError(f"metrics.listen {self._listen}: cannot listen: {exc}") from None
            _log.info(
                "metrics: %s is taken (another gate of this host serves); standing by",
                self._listen,
            )
            self._start(self._stand_by)
        if self._dir is not None:
            self._start(self._tick)  # the table in force and the clock, kept current

    def _start(self, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name="farecore-metrics", daemon=True)
        self._threads.append(t)
        t.start()

    def _stand_by(self) -> None:
        while not self._closed.wait(self._interval_s):
            try:
                server = MetricsServer(self._address, self._render)
            except OSError:
                continue
            with self._lock:
                if self._closed.is_set():
                    server.close()
                    return
                self._server = server
            _log.info("metrics: serving this host's gates on %s", self._listen)
            return

    def _tick(self) -> None:
        while not self._closed.wait(self._interval_s):
            self.metrics.refresh()

    @property
    def serving(self) -> bool:
        return self._server is not None

    @property
    def address(self) -> tuple[str, int] | None:
        server = self._server
        return None if server is None else server.address

    def close(self) -> None:
        """Stop serving (freeing the address for another gate of the host); in
        multi-process mode, remove this process's live gauges."""
        self._closed.set()
        for t in self._threads:
            t.join()
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.close()
        self.metrics.close()


def start_gate_metrics(
    listen: str,
    multiprocess_dir: str | os.PathLike[str] | None = None,
    *,
    interval_s: float = 5.0,
) -> MetricsService:
    """Serve a gate process's metrics on ``listen`` (``[metrics] listen``).

    With ``multiprocess_dir`` (``[metrics] multiprocess_dir``) the process writes into
    that directory and serves every writer's sum if it gets the address, or stands by
    for it. Raises ConfigError when the address or the directory cannot be used.
    """
    if not 0 < interval_s <= 3600:
        raise ValueError("interval_s must be in (0, 3600]")
    return MetricsService(listen, multiprocess_dir, interval_s)
