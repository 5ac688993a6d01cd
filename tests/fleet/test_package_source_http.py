"""A package source that misbehaves at the HTTP level: every failure is "unreachable",
bounded in time, never a traceback and never a refusal of the package."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from farecore.fleet.follow import HttpSource, SourceUnavailable


@contextmanager
def server(answer: bytes, drip_s: float = 0.0) -> Iterator[str]:
    """A TCP server that answers every connection with ``answer`` (a byte every
    ``drip_s`` when set) and then closes it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.recv(65536)
                    if drip_s:
                        for b in answer:
                            if stop.is_set():
                                break
                            conn.sendall(bytes([b]))
                            time.sleep(drip_s)
                    else:
                        conn.sendall(answer)
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        stop.set()
        t.join()
        listener.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HELLO\r\n\r\n",  # no status line
        b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",  # too many headers
        b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",  # cut body
    ],
)
def test_garbled_answers_are_unreachable_not_tracebacks(answer: bytes) -> None:
    with server(answer) as url, pytest.raises(SourceUnavailable):
        HttpSource(url, timeout_s=2).manifest(None)


def test_a_dripping_server_cannot_hold_a_poll() -> None:
    """One byte every 50 ms, each read well inside the socket timeout: the request's own
    deadline (twice the timeout for a manifest) ends it."""
    body = b"x" * 5000
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    with server(answer, drip_s=0.05) as url:
        t0 = time.monotonic()
        with pytest.raises(SourceUnavailable, match="too slow"):
            HttpSource(url, timeout_s=0.5).manifest(None)
        assert time.monotonic() - t0 < 5
