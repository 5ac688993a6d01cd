"""``farecore collect`` over HTTP: the collection point directory, served by the stdlib.

The protocol (``farecore.fleet.collect_protocol``; docs/collection.md):

- ``GET|HEAD /v1/batches/<terminal>/<name>``: what the point holds under ``name``: a
  verified copy (its acknowledgement) and/or an upload in progress (offset, total,
  SHA-256 announced).
- ``PUT /v1/batches/<terminal>/<name>`` with ``Content-Range: bytes FIRST-LAST/TOTAL``
  and ``X-Farecore-Sha256`` (of the whole file): appends the chunk at exactly the offset
  held (else 416, with the offset). The chunk that completes the file has it verified
  against the register and stored (201, the acknowledgement); the same bytes again are
  acknowledged again (200); other bytes under a held name are a conflict (409). A batch
  that fails verification is kept in ``rejected/`` and refused (422).
- ``POST /v1/heads/<terminal>``: a signed chain head (200; 409 for a conflicting one).
  ``GET /v1/heads/<terminal>`` returns ``latest.json``.

Every reply carries the point's clock (``X-Farecore-Time-Ms``) and a JSON body; every
refusal is one log line and never a traceback. Requests are bounded: the request line
and headers (by the stdlib), a chunk, a head, the connections open at once, the time a
client may stay silent. This module reads the wall clock only through the point's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from farecore.boundedinput import read_limited
from farecore.card.crypto import PublicKey
from farecore.errors import BadSignature, ConfigError, MalformedFile
from farecore.fleet.collect import CollectionPoint, Conflict, Interrupted
from farecore.fleet.collect_protocol import (
    MAX_PUT_BYTES,
    SHA256_HEADER,
    TIME_HEADER,
    BatchName,
    Partial,
    UploadRefused,
    UploadStatus,
    parse_content_length,
    parse_content_range,
    parse_path,
    parse_sha256,
)
from farecore.journal.heads import MAX_HEAD_BYTES
from farecore.settlement.terminals import TerminalInfo, parse_terminals

__all__ = ["CollectServer", "Register", "ssl_context"]

_log = logging.getLogger(__name__)
_MAX_REGISTER_BYTES = 64 << 20
_EXPIRE_EVERY_S = 600.0
_DRAIN_MAX = 2 << 20  # a refused body up to this size is read first (the courier's chunk: 1 MiB)


class Register:
    """The terminal register (terminals.csv), read again when the file changes.

    A register that no longer parses is reported and the one in force is kept: a typo
    must not lock every gate out.
    """

    def __init__(self, path: Path, check_every_s: float = 5.0) -> None:
        self.path = path
        self.check_every_s = check_every_s
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._terminals = self._read()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()
        except OSError as exc:
            raise ConfigError(f"register {self.path}: {exc.strerror or exc}") from None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _read(self) -> dict[int, TerminalInfo]:
        try:
            raw = read_limited(self.path, _MAX_REGISTER_BYTES, f"register {self.path}", ConfigError)
            text = raw.decode("utf-8")
        except OSError as exc:
            raise ConfigError(f"register {self.path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"register {self.path}: not UTF-8") from None
        return parse_terminals(text, str(self.path))

    def __len__(self) -> int:
        return len(self._terminals)

    def key(self, terminal: int) -> PublicKey:
        """The registered key of ``terminal``; UploadRefused (404) if it is not registered."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self.check_every_s:
                self._checked = now
                self._reload()
            info = self._terminals.get(terminal)
        if info is None:
            raise UploadRefused(f"terminal {terminal} is not in the register", 404)
        return info.key()

    def _reload(self) -> None:
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return
            self._terminals = self._read()
            self._stamp = stamp
            _log.info("register %s read again: %d terminals", self.path, len(self._terminals))
        except (ConfigError, MalformedFile) as exc:
            _log.error("register not read again, the one in force is kept: %s", exc)


class CollectServer(ThreadingHTTPServer):
    """The collection point ``point`` on ``address``, for the terminals of ``register``.

    ``serve_forever`` runs it; ``shutdown`` (from another thread) stops it. At most
    ``max_connections`` are served at once (more are closed at once, with a log line);
    a client silent for ``timeout_s`` is dropped.
    """

    daemon_threads = True
    block_on_close = False  # a stop never waits for a slow client; its upload resumes later
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        point: CollectionPoint,
        register: Register,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 64,
        timeout_s: float = 60.0,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.point = point
        self.register = register
        self.timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self._receiving: set[str] = set()
        self._receiving_lock = threading.Lock()
        self._expired_at = 0.0
        super().__init__(address, _Handler)
        if ssl_context is not None:
            # The handshake runs in the connection's own thread, at its first read, so a
            # client that never completes it holds no one else up.
            self.socket = ssl_context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's name up in DNS, which can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _log.warning("refused a connection from %s: too many open", client_address[0])
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        _log.warning(
            "connection from %s failed: %s: %s", client_address[0], type(exc).__name__, exc
        )

    def service_actions(self) -> None:
        now = time.monotonic()
        if now - self._expired_at >= _EXPIRE_EVERY_S:
            self._expired_at = now
            try:
                with self._receiving_lock:
                    busy = set(self._receiving)
                self.point.expire(busy)
            except OSError as exc:
                _log.error("cannot drop stale uploads: %s", exc)

    @contextlib.contextmanager
    def receiving(self, name: BatchName) -> Iterator[None]:
        """One upload of a name at a time; a second is refused (409), not queued."""
        with self._receiving_lock:
            if name.text in self._receiving:
                raise UploadRefused(f"{name.text}: another upload of it is in progress", 409)
            self._receiving.add(name.text)
        try:
            yield
        finally:
            with self._receiving_lock:
                self._receiving.discard(name.text)


class _Handler(BaseHTTPRequestHandler):
    server: CollectServer
    _unread = 0
    protocol_version = "HTTP/1.1"
    server_version = "farecore-collect"
    sys_version = ""
    error_content_type = "application/json"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.timeout_s)

    # -- replies -----------------------------------------------------------------------

    def end_headers(self) -> None:
        self.send_header(TIME_HEADER, str(self.server.point.clock_ms()))
        super().end_headers()

    def _reply(self, status: int, doc: dict[str, Any], *, close: bool = False) -> None:
        body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own refusals (a garbled request line, too many headers, an
        unknown method), in the point's form: one log line, a JSON body."""
        text = message or HTTPStatus(code).phrase
        self._refused(code, text)
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # a status line and headers, whatever came
        with contextlib.suppress(OSError):
            self._reply(code, {"error": text}, close=True)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s %s", self.client_address[0], format % args)

    def log_error(self, format: str, *args: Any) -> None:
        pass  # refusals are logged once, by _refused

    def _refused(self, status: int, message: str) -> None:
        what = f"{self.command or '?'} {(getattr(self, 'path', '') or '')[:100]}"
        _log.warning(
            "refused %s from %s: %d %s",
            _printable(what),
            self.client_address[0],
            status,
            _printable(message),
        )

    def _refuse(
        self, exc: UploadRefused, name: BatchName | None, partial: Partial | None = None
    ) -> None:
        self._refused(exc.status, str(exc))
        self._drain()
        if name is None:
            self._reply(exc.status, {"error": str(exc)}, close=True)
            return
        verified = exc.existing if isinstance(exc, Conflict) else None
        status = UploadStatus(name.terminal, name.text, verified, partial, str(exc))
        self._reply(exc.status, status.to_json(), close=True)

    def _drain(self) -> None:
        """Read a small body nobody will use before refusing it: a client still sending
        (a courier's chunk) then reads the refusal instead of a reset connection."""
        left, self._unread = self._unread, 0
        if left > _DRAIN_MAX:
            return
        with contextlib.suppress(OSError, ValueError):
            while left > 0:
                piece = self.rfile.read(min(left, 1 << 16))
                if not piece:
                    return
                left -= len(piece)

    def _guarded(self, work: Any) -> None:
        """Run one request; whatever goes wrong becomes one log line and a reply."""
        self._unread = 0  # body bytes announced and not read (see _drain)
        try:
            work()
        except UploadRefused as exc:
            self._refuse(exc, None)
        except (BrokenPipeError, ConnectionError, TimeoutError) as exc:
            self.close_connection = True
            _log.info("connection from %s lost: %s", self.client_address[0], exc)
        except Exception as exc:
            self.close_connection = True
            _log.error(
                "%s %s failed: %s: %s", self.command, self.path[:100], type(exc).__name__, exc
            )
            with contextlib.suppress(OSError):
                self._reply(500, {"error": "internal error at the collection point"}, close=True)

    # -- requests ----------------------------------------------------------------------

    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_HEAD(self) -> None:
        self._guarded(self._get)

    def do_PUT(self) -> None:
        self._guarded(self._put)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _route(self, want: str) -> tuple[int, BatchName | None, PublicKey]:
        kind, terminal, name = parse_path(self.path)
        if kind != want:
            raise UploadRefused(f"{self.command} is not for {kind}", 405)
        return terminal, name, self.server.register.key(terminal)

    def _get(self) -> None:
        kind, terminal, name = parse_path(self.path)
        self.server.register.key(terminal)
        point = self.server.point
        if kind == "heads":
            try:
                data = (point.head_dir(terminal) / "latest.json").read_bytes()[:MAX_HEAD_BYTES]
            except FileNotFoundError:
                raise UploadRefused(f"no head of terminal {terminal} yet", 404) from None
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            return
        assert name is not None
        try:
            status = UploadStatus(terminal, name.text, point.verified(name), point.partial(name))
        except UploadRefused as exc:
            self._refuse(exc, name)
            return
        self._reply(200, status.to_json())

    def _put(self) -> None:
        if self.headers.get("Transfer-Encoding") is not None:
            raise UploadRefused("send the body with a Content-Length, not chunked", 411)
        _, name, key = self._route("batches")
        assert name is not None
        point = self.server.point
        try:
            point.check_day(name)
            length = parse_content_length(self.headers.get("Content-Length"), MAX_PUT_BYTES)
            self._unread = length
            first, last, total = parse_content_range(self.headers.get("Content-Range"))
            if last - first + 1 != length:
                raise UploadRefused(
                    f"Content-Range {first}-{last} is not the {length} bytes of the body"
                )
            sha = parse_sha256(self.headers.get(SHA256_HEADER))
            # The reply goes out once the name is free again: the client's next chunk
            # (through a proxy, on a new connection) must not find it still taken.
            with self.server.receiving(name):
                reply = self._receive(name, key, first, length, total, sha)
        except UploadRefused as exc:
            self._refuse(exc, name, _quiet_partial(point, name))
            return
        if reply is not None:
            code, doc, close = reply
            self._drain()
            self._reply(code, doc, close=close)

    def _receive(
        self, name: BatchName, key: PublicKey, first: int, length: int, total: int, sha: bytes
    ) -> tuple[int, dict[str, Any], bool] | None:
        """Take one chunk; the reply to send (None: the client is gone)."""
        point = self.server.point
        held = point.verified(name)
        if held is not None:
            if held.sha256 != sha:
                raise Conflict(
                    f"{name.text}: the point holds other bytes under this name "
                    f"(sha256 {held.sha256.hex()[:16]}…)",
                    held,
                )
            _log.info("%s from %s: held already, acknowledged again", name.text, self._peer())
            return 200, UploadStatus(name.terminal, name.text, held, None).to_json(), True
        partial = point.partial(name)
        if partial is None or (partial.sha256, partial.total) != (sha, total):
            if first != 0:
                raise UploadRefused(
                    f"{name.text}: no upload of these bytes in progress; start at 0", 416
                )
            partial = point.start_partial(name, sha, total)
        try:
            offset = point.append(name, partial, first, length, self.rfile.read)
        except Interrupted as exc:
            self._unread = 0
            self.close_connection = True
            _log.info(
                "%s from %s: interrupted at offset %d of %d",
                name.text,
                self._peer(),
                exc.offset,
                total,
            )
            return None
        self._unread = 0
        now = Partial(offset, total, sha)
        if offset < total:
            _log.debug("%s from %s: %d of %d bytes", name.text, self._peer(), offset, total)
            return 202, UploadStatus(name.terminal, name.text, None, now).to_json(), False
        ack, new = point.complete(name, now, key)
        _log.info(
            "%s %s from %s: %d records, seq %d..%d, sha256 %s…",
            "accepted" if new else "acknowledged again",
            name.text,
            self._peer(),
            ack.count,
            ack.first_seq,
            ack.last_seq,
            ack.sha256.hex()[:16],
        )
        return (
            201 if new else 200,
            UploadStatus(name.terminal, name.text, ack, None).to_json(),
            False,
        )

    def _post(self) -> None:
        if self.headers.get("Transfer-Encoding") is not None:
            raise UploadRefused("send the body with a Content-Length, not chunked", 411)
        terminal, _, key = self._route("heads")
        length = parse_content_length(self.headers.get("Content-Length"), MAX_HEAD_BYTES)
        data = self.rfile.read(length)
        if len(data) != length:
            self.close_connection = True
            _log.info("head of terminal %d from %s: cut short", terminal, self._peer())
            return
        try:
            stored = self.server.point.accept_head(terminal, data, key, f"head from {self._peer()}")
        except (MalformedFile, BadSignature) as exc:
            raise UploadRefused(str(exc), 422) from None
        head = stored.head
        doc = {
            "terminal": terminal,
            "seq": head.seq,
            "latest": stored.latest,
            "of_day": stored.of_day,
            "conflict": stored.conflict is not None,
        }
        if stored.conflict is not None:
            _log.error(
                "terminal %d signed two heads at seq %d with different hashes: its journal "
                "was rewritten; kept as %s",
                terminal,
                head.seq,
                stored.conflict,
            )
            self._reply(
                409, {**doc, "error": f"a head of seq {head.seq} with another hash is held"}
            )
            return
        _log.debug("head of terminal %d at seq %d from %s", terminal, head.seq, self._peer())
        self._reply(200, doc)

    def _peer(self) -> str:
        return str(self.client_address[0])


def _printable(text: str) -> str:
    """``text`` for one log line: what a client sent cannot start another line or move
    the terminal's cursor."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _quiet_partial(point: CollectionPoint, name: BatchName) -> Partial | None:
    """What is held of ``name`` for a refusal's body; nothing if even that fails."""
    try:
        return point.partial(name)
    except (OSError, UploadRefused):
        return None


def ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for ``--cert``/``--key`` (TLS 1.2 and later)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert} and key {key}: {exc}") from None
    return ctx
