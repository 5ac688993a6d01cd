"""Where a courier hands in: a ``farecore collect`` server, or a collection point directory.

``HttpPoint`` speaks the protocol of ``farecore.fleet.collect_http``: it asks what the
point holds of a batch, sends the rest in chunks from that offset, and returns the
point's acknowledgement; every reply's clock header is a sample of the gate's clock
offset. ``DirectoryPoint`` writes the same layout itself (``farecore.fleet.collect``),
reading each copy back and verifying it before it counts as acknowledged. Both raise
``Conflict`` when the point holds other bytes under the name, ``UploadRefused`` when it
refuses, and OSError or ``http.client.HTTPException`` when it cannot be reached.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from farecore.card.crypto import PublicKey
from farecore.errors import ConfigError
from farecore.fleet.collect import CollectionPoint, Conflict
from farecore.fleet.collect_protocol import (
    MAX_REPLY_BYTES,
    SHA256_HEADER,
    TIME_HEADER,
    Ack,
    BatchName,
    UploadRefused,
    UploadStatus,
    batch_url_path,
    head_url_path,
    parse_reply,
    parse_status,
    parse_time_header,
)

__all__ = ["DirectoryPoint", "HttpPoint", "Point", "open_point"]

_RESYNCS = 3
_BUSY_TRIES = 20
_BUSY_WAIT_S = 0.5


class Point(Protocol):
    """A collection point as a courier sees it."""

    bytes_sent: int

    def hand_in(self, name: BatchName, data: bytes) -> Ack: ...

    def send_head(self, terminal: int, data: bytes) -> None: ...

    def clock_offset_ms(self) -> int | None: ...


class HttpPoint:
    """A ``farecore collect`` server at ``url`` (``http://`` or ``https://``, any path
    prefix a reverse proxy maps; ``ca``: the trust anchors for https)."""

    def __init__(
        self,
        url: str,
        *,
        clock_ms: Callable[[], int],
        chunk_bytes: int = 1 << 20,
        timeout_s: float = 30.0,
        ca: Path | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"collection point {url!r} is not an http:// or https:// URL")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigError(f"collection point {url!r}: no query, fragment or user here")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"collection point {url!r}: bad port") from None
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port
        self._base = parts.path if parts.path.endswith("/") else parts.path + "/"
        self._context: ssl.SSLContext | None = None
        if self._https:
            try:
                self._context = ssl.create_default_context(cafile=None if ca is None else str(ca))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"trust anchors {ca}: {exc}") from None
        self._clock_ms = clock_ms
        self._chunk = chunk_bytes
        self._timeout = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._offset: tuple[int, int] | None = None  # (round trip, offset) in ms
        self.bytes_sent = 0

    def clock_offset_ms(self) -> int | None:
        """The gate's clock minus the point's, from the quickest recent round trip."""
        return None if self._offset is None else self._offset[1]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._context
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        return self._conn

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        conn = self._connection()
        sent = self._clock_ms()
        try:
            conn.request(method, self._base + path, body=body, headers=headers or {})
            resp = conn.getresponse()
            came = self._clock_ms()
            data = resp.read(MAX_REPLY_BYTES + 1)
        except BaseException:
            self.close()  # a half-used connection is never reused
            raise
        if resp.will_close or len(data) > MAX_REPLY_BYTES:
            self.close()
        if body is not None:
            self.bytes_sent += len(body)
        self._sample(sent, came, parse_time_header(resp.getheader(TIME_HEADER)))
        try:
            doc = parse_reply(data)
        except UploadRefused as exc:
            raise UploadRefused(f"{method} {path}: {resp.status}, {exc}", resp.status) from None
        return resp.status, doc

    def _sample(self, sent: int, came: int, point: int | None) -> None:
        if point is None or came < sent:
            return
        rtt = came - sent
        offset = (sent + came) // 2 - point
        # A quicker round trip bounds the offset more tightly; an old sample ages out
        # by doubling its round trip each time a new one comes.
        if self._offset is None or rtt <= self._offset[0]:
            self._offset = (rtt, offset)
        else:
            self._offset = (self._offset[0] * 2 + 1, self._offset[1])

    @staticmethod
    def _status(doc: dict[str, Any]) -> UploadStatus | None:
        return parse_status(doc) if "format" in doc else None

    def hand_in(self, name: BatchName, data: bytes) -> Ack:
        with self._lock:
            return self._hand_in(name, data)

    def _hand_in(self, name: BatchName, data: bytes) -> Ack:
        sha = hashlib.sha256(data).digest()
        total = len(data)
        path = batch_url_path(name)
        code, doc = self._request("GET", path)
        status = self._status(doc)
        if code != 200 or status is None:
            raise UploadRefused(f"{name.text}: the point answered {code}: {_error(doc)}", code)
        offset = self._resume_at(status, sha, total)
        if status.verified is not None:
            return self._held(name, status.verified, sha)
        resyncs = busy = 0
        while True:
            end = min(offset + self._chunk, total)
            code, doc = self._request(
                "PUT",
                path,
                data[offset:end],
                {
                    "Content-Range": f"bytes {offset}-{end - 1}/{total}",
                    SHA256_HEADER: sha.hex(),
                    "Content-Type": "application/octet-stream",
                },
            )
            status = self._status(doc)
            if code == 202 and status is not None and status.partial is not None:
                offset = self._resume_at(status, sha, total)
                if offset == end:
                    continue
            elif code in (200, 201) and status is not None and status.verified is not None:
                return status.verified
            elif code == 409 and status is not None and status.verified is not None:
                return self._held(name, status.verified, sha)
            elif code == 416 and status is not None:
                offset = self._resume_at(status, sha, total)
            elif code == 409 and status is not None and busy < _BUSY_TRIES:
                # Another upload of it in progress: most likely this courier's own cut
                # connection, which the point (or a proxy before it) has not seen end yet.
                busy += 1
                time.sleep(_BUSY_WAIT_S)
                code, doc = self._request("GET", path)
                status = self._status(doc)
                if code != 200 or status is None:
                    raise UploadRefused(
                        f"{name.text}: the point answered {code}: {_error(doc)}", code
                    )
                if status.verified is not None:
                    return self._held(name, status.verified, sha)
                offset = self._resume_at(status, sha, total)
                continue
            else:
                raise UploadRefused(f"{name.text}: the point answered {code}: {_error(doc)}", code)
            resyncs += 1  # the point holds another offset than this courier sent up to
            if resyncs > _RESYNCS:
                raise UploadRefused(f"{name.text}: the point's offset keeps moving", 416)

    @staticmethod
    def _resume_at(status: UploadStatus, sha: bytes, total: int) -> int:
        """Where to go on: the offset the point holds of these bytes, else the start."""
        held = status.partial
        if held is None or (held.sha256, held.total) != (sha, total):
            return 0
        return held.offset

    @staticmethod
    def _held(name: BatchName, held: Ack, sha: bytes) -> Ack:
        if held.sha256 != sha:
            raise Conflict(
                f"{name.text}: the point holds other bytes under this name "
                f"(sha256 {held.sha256.hex()[:16]}…)",
                held,
            )
        return held

    def send_head(self, terminal: int, data: bytes) -> None:
        with self._lock:
            code, doc = self._request(
                "POST", head_url_path(terminal), data, {"Content-Type": "application/json"}
            )
        if code != 200:
            raise UploadRefused(
                f"head of terminal {terminal}: the point answered {code}: {_error(doc)}", code
            )


def _error(doc: dict[str, Any]) -> str:
    error = doc.get("error")
    return error[:300] if isinstance(error, str) else "no reason given"


class DirectoryPoint:
    """A collection point directory (a share, or a stick at the depot), written by the
    courier itself with the point's own rules; the terminal's key verifies."""

    def __init__(self, root: Path, utc_offset_min: int, key: PublicKey) -> None:
        self.root = root
        self.utc_offset_min = utc_offset_min
        self._key = key
        self.bytes_sent = 0

    def _point(self) -> CollectionPoint:
        # Opened for each use: a share or stick that is not there now may be later.
        return CollectionPoint(self.root, self.utc_offset_min)

    def clock_offset_ms(self) -> int | None:
        return None

    def close(self) -> None:
        pass

    def hand_in(self, name: BatchName, data: bytes) -> Ack:
        ack, new = self._point().place(name, data, self._key, reverify=True)
        if new:
            self.bytes_sent += len(data)
        return ack

    def send_head(self, terminal: int, data: bytes) -> None:
        stored = self._point().accept_head(terminal, data, self._key, "own head")
        self.bytes_sent += len(data)
        if stored.conflict is not None:
            raise UploadRefused(
                f"head of terminal {terminal}: the point holds a head of seq "
                f"{stored.head.seq} with another hash",
                409,
            )


def open_point(
    destination: str,
    *,
    utc_offset_min: int,
    key: PublicKey,
    clock_ms: Callable[[], int],
    chunk_bytes: int,
    timeout_s: float,
    ca: Path | None,
) -> HttpPoint | DirectoryPoint:
    """The point ``destination`` names: a URL, or a directory path."""
    if destination.startswith(("http://", "https://")):
        return HttpPoint(
            destination, clock_ms=clock_ms, chunk_bytes=chunk_bytes, timeout_s=timeout_s, ca=ca
        )
    if "://" in destination:
        raise ConfigError(f"collection point {destination!r}: only http(s):// or a directory")
    return DirectoryPoint(Path(destination), utc_offset_min, key)
