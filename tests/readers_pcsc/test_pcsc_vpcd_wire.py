"""The vpcd card server's wire protocol, with the test playing vpcd on a loopback socket."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.card import CardFaults
from sim.issuer import Issuer
from sim.vpcd import CONTACTLESS_ATR, VpcdCardServer

ISSUER = Issuer.from_seed("vpcd-wire")
SELECT = bytes.fromhex("00A4040007F0524A4341524400")


class FakeVpcd:
    """The listening side, as vpcd is: accepts the card, sends framed messages."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(5)
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None

    def accept(self) -> socket.socket:
        conn, _ = self.listener.accept()
        conn.settimeout(5)
        self.conn = conn
        return conn

    def send(self, payload: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(struct.pack(">H", len(payload)) + payload)

    def recv(self) -> bytes:
        assert self.conn is not None
        head = self._exact(2)
        return self._exact(struct.unpack(">H", head)[0])

    def _exact(self, size: int) -> bytes:
        assert self.conn is not None
        out = b""
        while len(out) < size:
            chunk = self.conn.recv(size - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out

    def exchange(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.recv()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def vpcd() -> Iterator[FakeVpcd]:
    fake = FakeVpcd()
    yield fake
    fake.close()


@pytest.fixture
def served(vpcd: FakeVpcd) -> Iterator[VpcdCardServer]:
    with VpcdCardServer(vpcd.port, reconnect_delay=0.05) as server:
        server.insert(ISSUER.card(1))
        vpcd.accept()
        assert server.wait_connected(2)
        yield server


def test_control_bytes_and_apdu(vpcd: FakeVpcd, served: VpcdCardServer) -> None:
    assert vpcd.exchange(b"\x04") == CONTACTLESS_ATR
    vpcd.send(b"\x01")  # power on: no answer
    vpcd.send(b"\x02")  # reset: no answer
    vpcd.send(b"\x00")  # power off: no answer
    assert vpcd.exchange(SELECT) == b"\x01\x00\x90\x00"
    assert served.apdus == 1
    assert served.connected


def test_split_frames_are_reassembled(vpcd: FakeVpcd, served: VpcdCardServer) -> None:
    assert vpcd.conn is not None
    frame = struct.pack(">H", len(SELECT)) + SELECT
    for byte in frame:  # one byte per segment, as a slow stack might deliver them
        vpcd.conn.sendall(bytes([byte]))
        time.sleep(0.001)
    assert vpcd.recv() == b"\x01\x00\x90\x00"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(min_size=0, max_size=300))
def test_any_payload_gets_a_framed_answer_or_none(
    vpcd: FakeVpcd, served: VpcdCardServer, payload: bytes
) -> None:
    """Random bytes from vpcd never kill the card server: it answers, then still serves."""
    vpcd.send(payload)
    if len(payload) != 1 or payload[0] == 4:
        answer = vpcd.recv()
        assert len(answer) >= 2
    assert vpcd.exchange(b"\x04") == CONTACTLESS_ATR
    assert served.connected


def test_card_fault_drops_the_connection_and_empties_the_field(vpcd: FakeVpcd) -> None:
    with VpcdCardServer(vpcd.port) as server:
        server.insert(ISSUER.card(2, faults=CardFaults(remove_at="select")))
        conn = vpcd.accept()
        vpcd.send(SELECT)
        assert conn.recv(10) == b""  # closed at once, never a stall
        assert server.wait_disconnected(2)
        assert server.card is None


def test_drop_reconnects_but_remove_does_not(vpcd: FakeVpcd) -> None:
    with VpcdCardServer(vpcd.port, reconnect_delay=0.05) as server:
        server.insert(ISSUER.card(3))
        first = vpcd.accept()
        assert server.wait_connected(2)
        server.drop()
        assert first.recv(10) == b""
        vpcd.accept()  # the card is still inserted: it comes back
        assert vpcd.exchange(b"\x04") == CONTACTLESS_ATR
        server.remove()
        assert server.wait_disconnected(2)
        vpcd.listener.settimeout(0.3)
        with pytest.raises(TimeoutError):
            vpcd.listener.accept()


def test_peer_restart_reconnects(vpcd: FakeVpcd) -> None:
    """pcscd dying closes the socket from vpcd's side; the inserted card connects again."""
    with VpcdCardServer(vpcd.port) as server:
        server.insert(ISSUER.card(4))
        vpcd.accept().close()
        vpcd.accept()
        assert vpcd.exchange(SELECT) == b"\x01\x00\x90\x00"
        assert server.connected


def test_nodelay_set_and_close_is_clean(vpcd: FakeVpcd) -> None:
    server = VpcdCardServer(vpcd.port).start()
    server.insert(ISSUER.card(5))
    vpcd.accept()
    assert server.wait_connected(2)
    sock = server._sock
    assert sock is not None
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    server.close()
    assert server._thread is None and not server.connected


def test_insert_twice_is_refused_and_bad_port_rejected(vpcd: FakeVpcd) -> None:
    with VpcdCardServer(vpcd.port) as server:
        server.insert(ISSUER.card(6))
        with pytest.raises(ValueError):
            server.insert(ISSUER.card(7))
    with pytest.raises(ValueError):
        VpcdCardServer(0)


def test_mute_card_drops_the_link_instead_of_an_empty_frame(vpcd: FakeVpcd) -> None:
    """vpcd would wait forever for an empty frame's payload; the server closes instead."""

    class Mute:
        def power_on(self) -> None:
            pass

        def process_apdu(self, apdu: bytes) -> bytes:
            return b""

    with VpcdCardServer(vpcd.port, reconnect_delay=0.05) as server:
        server.insert(Mute())
        conn = vpcd.accept()
        vpcd.send(SELECT)
        assert conn.recv(10) == b""
        vpcd.accept()  # still inserted: it comes back, and answers control bytes
        assert vpcd.exchange(b"\x04") == CONTACTLESS_ATR
