"""Serves a virtual card to the vpcd driver of a real pcscd, over TCP on the loopback.

vpcd listens (35963 for reader "Virtual PCD 00 00", 35964 for "00 01") and the card
connects to it. Every message either way is a 2-byte big-endian length and a payload;
a 1-byte payload from vpcd is a control byte (0 power off, 1 power on, 2 reset, 4 ATR),
anything longer is a C-APDU that the card answers with its R-APDU.

``VpcdCardServer`` runs that card side in a thread it owns: ``insert``/``remove`` move a
card in and out of the field, ``swap`` puts another card behind a live connection (fast
tap loops), ``drop`` closes the socket mid-transaction (a card pulled), and a card that
raises CardIOError (its ``remove_at`` fault) is pulled the same way. When pcscd dies the
server reconnects the inserted card to the next pcscd by itself.

``python -m sim.vpcd --card-file alice.card`` serves a card file (``farecore card new``,
docs/card-office.md) to a running pcscd, so a real ``farecore gate --reader pcsc:`` can
accept it.

It must never stall vpcd (that would hang pcscd's reader thread): every failure closes
the socket at once. It never connects anywhere but the host it was given (127.0.0.1).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Protocol

from farecore.errors import CardIOError, FarecoreError

__all__ = ["CONTACTLESS_ATR", "VpcdCard", "VpcdCardServer", "main"]

# PC/SC part 3 ATR of an ISO 14443-4 card with no historical bytes: T=1 only.
CONTACTLESS_ATR = bytes.fromhex("3B80800101")
_LEN = struct.Struct(">H")
_POWER_OFF, _POWER_ON, _RESET, _GET_ATR = 0, 1, 2, 4


class VpcdCard(Protocol):
    def process_apdu(self, apdu: bytes) -> bytes: ...

    def power_on(self) -> None: ...


class _Dropped(Exception):
    """The connection to vpcd is over (peer closed, or we pulled the card)."""


class VpcdCardServer:
    """The card side of one vpcd reader slot, run in a background thread.

    ``reconnect_delay`` is how long a dropped-but-still-inserted card waits before it
    connects again: pcscd polls presence about every 400 ms, so a shorter gap may hide
    the removal from it.
    """

    def __init__(
        self,
        port: int = 35963,
        host: str = "127.0.0.1",
        *,
        atr: bytes = CONTACTLESS_ATR,
        reconnect_delay: float = 0.6,
        retry_interval: float = 0.05,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range")
        self.host = host
        self.port = port
        self.atr = bytes(atr)
        self.reconnect_delay = reconnect_delay
        self.retry_interval = retry_interval
        self.apdus = 0  # C-APDUs answered, for tests and benchmarks
        # The last few things that happened on the link (monotonic time, what), so a
        # test that sees a failed exchange can say which side ended it.
        self.events: collections.deque[tuple[float, str]] = collections.deque(maxlen=64)
        self._card: VpcdCard | None = None
        self._sock: socket.socket | None = None
        self._not_before = 0.0
        self._closed = False
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    # -- the field ---------------------------------------------------------------------

    @property
    def card(self) -> VpcdCard | None:
        return self._card

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def insert(self, card: VpcdCard) -> None:
        """Put ``card`` in the (empty) field; it connects to vpcd as soon as it can."""
        self._note("insert")
        with self._changed:
            if self._card is not None:
                raise ValueError("a card is already in the field: remove() it or swap() it")
            self._card = card
            self._changed.notify_all()

    def remove(self) -> None:
        """Take the card out of the field (its socket closes at once)."""
        self._note("remove")
        with self._changed:
            self._card = None
            self._shutdown_locked()
            self._changed.notify_all()

    def swap(self, card: VpcdCard) -> None:
        """Replace the card behind the live connection, without a removal pcscd could see."""
        card.power_on()
        with self._changed:
            self._card = card
            self._changed.notify_all()

    def drop(self) -> None:
        """Close the live socket now but leave the card inserted: it reconnects after a pause.

        Only a connection that :meth:`wait_connected` has seen can be dropped.
        """
        with self._changed:
            self._shutdown_locked()
            self._changed.notify_all()

    def wait_connected(self, timeout: float) -> bool:
        """Block until the inserted card holds a connection to vpcd."""
        with self._changed:
            return self._changed.wait_for(lambda: self._sock is not None, timeout)

    def wait_disconnected(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._sock is None, timeout)

    def _shutdown_locked(self) -> None:
        if self._sock is not None:
            # shutdown() wakes the serving thread out of recv(); it closes the socket.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._not_before = time.monotonic() + self.reconnect_delay

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> VpcdCardServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vpcd-card", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._card = None
            self._shutdown_locked()
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> VpcdCardServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the serving thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closed or self._card is not None)
                if self._closed:
                    return
                pause = self._not_before - time.monotonic()
            if pause > 0:
                with self._changed:
                    self._changed.wait_for(lambda: self._closed, pause)
                continue
            sock = self._connect()
            if sock is None:
                with self._changed:
                    self._changed.wait_for(lambda: self._closed, self.retry_interval)
                continue
            with self._changed:
                if self._closed or self._card is None:
                    sock.close()
                    continue
                self._sock = sock
                self._changed.notify_all()
            self._note("connected")
            try:
                self._serve(sock)
            except _Dropped:
                self._note("link closed")
            except OSError as exc:
                self._note(f"link failed: {exc}")
            finally:
                with self._changed:
                    self._sock = None
                    self._changed.notify_all()
                sock.close()

    def _connect(self) -> socket.socket | None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=1.0)
        except OSError:
            return None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _note(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    def _serve(self, sock: socket.socket) -> None:
        while True:
            (length,) = _LEN.unpack(_recv_exact(sock, 2))
            payload = _recv_exact(sock, length)
            card = self._card
            self._note(f"got {payload[:5].hex()} ({length} bytes)")
            if card is None:
                self._note("no card in the field: link dropped")
                raise _Dropped
            if length == 1:
                control = payload[0]
                if control in (_POWER_ON, _RESET):
                    card.power_on()
                elif control == _GET_ATR:
                    sock.sendall(_LEN.pack(len(self.atr)) + self.atr)
                # power off and unknown control bytes need no answer
                continue
            try:
                response = card.process_apdu(payload)
            except CardIOError:
                # The card left the field mid-APDU: it is out until inserted again.
                with self._changed:
                    if self._card is card:
                        self._card = None
                raise _Dropped from None
            if not response:
                # vpcd waits forever for the payload of an empty frame, hanging pcscd's
                # reader: a mute card is a dropped link instead (it reconnects later).
                with self._changed:
                    self._not_before = time.monotonic() + self.reconnect_delay
                raise _Dropped
            self.apdus += 1
            sock.sendall(_LEN.pack(len(response)) + response)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise _Dropped
        chunks += chunk
        # vpcd writes the length and the payload separately; without an immediate ACK,
        # delayed ACK plus Nagle on its side costs ~40 ms per APDU.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    return bytes(chunks)


def main(argv: list[str] | None = None) -> int:
    """``python -m sim.vpcd``: serve one deterministic demo card until Ctrl-C."""
    from sim.issuer import Issuer

    parser = argparse.ArgumentParser(
        prog="python -m sim.vpcd",
        description="Serve a deterministic virtual Rongjun card to vpcd (a running pcscd).",
    )
    parser.add_argument("--port", type=int, default=35963, help="vpcd port (35964 is reader 01)")
    parser.add_argument("--seed", default="demo", help="issuer seed for the card")
    parser.add_argument("--card-id", type=int, default=1, help="card id to personalise")
    parser.add_argument(
        "--card-file",
        help="serve this card file (farecore card new) instead; its counter is saved in it",
    )
    args = parser.parse_args(argv)
    card: VpcdCard
    if args.card_file is not None:
        from readers.virtual import FileCard

        try:
            card = file_card = FileCard(args.card_file)
        except FarecoreError as exc:
            parser.error(str(exc))
        card_id = file_card.card_id
    else:
        card, card_id = Issuer.from_seed(args.seed).card(args.card_id), args.card_id
    with VpcdCardServer(args.port) as server:
        server.insert(card)
        print(f"card {card_id} inserted on 127.0.0.1:{args.port}; Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
