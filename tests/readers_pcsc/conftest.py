"""Fixtures for the PC/SC reader tests: a real pcscd with vpcd, a card server, a reader.

The pcscd runs isolated (its own socket and vpcd port), once per session; a test that
kills it leaves it to the ``pcscd`` fixture to start it again for the next test.
These tests are never skipped: CI has pcscd and vsmartcard-vpcd, and a missing one is
a failure with a message naming the package.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
from smartcard import scard

from readers.pcsc import PcscReader
from sim.deck import Deck
from sim.issuer import Issuer
from sim.pcscd import PcscDaemon
from sim.vpcd import VpcdCardServer

NOW_MS = 1_796_083_200_000
READER_00 = "Virtual PCD 00 00"
READER_01 = "Virtual PCD 00 01"


@pytest.fixture(scope="session")
def deck() -> Deck:
    return Deck(Issuer.from_seed("pcsc-tests", key_id=9), Issuer.from_seed("forger", key_id=9))


@pytest.fixture(scope="session")
def _pcscd_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PcscDaemon]:
    # Isolated where the machine allows it (CI runs as root), else the stock daemon.
    daemon = PcscDaemon(tmp_path_factory.mktemp("pcscd"), isolated=None)
    # libpcsclite reads the socket name once per process: set it before any client call.
    os.environ.update(daemon.client_env)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.close()


@pytest.fixture
def pcscd(_pcscd_session: PcscDaemon) -> PcscDaemon:
    """The session's pcscd, running (restarted if an earlier test killed it)."""
    if not _pcscd_session.running:
        _pcscd_session.start()
    return _pcscd_session


def wait_field(reader_name: str, *, present: bool = False, timeout: float = 3.0) -> None:
    """Block until pcscd itself reports a card (or none) in ``reader_name``.

    A card server closed by the previous test leaves pcscd believing in a card until
    its next presence poll (~400 ms); a test must not start inside that window.
    """
    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hr == 0, "pcscd unreachable"
    try:
        state = scard.SCARD_STATE_UNAWARE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hr, states = scard.SCardGetStatusChange(ctx, 200, [(reader_name, state)])
            if hr == 0:
                state = states[0][1]
                if bool(state & scard.SCARD_STATE_PRESENT) == present:
                    return
            elif hr & 0xFFFFFFFF != scard.SCARD_E_TIMEOUT & 0xFFFFFFFF:
                time.sleep(0.05)  # pcscd busy or the reader not listed yet
        raise AssertionError(f"{reader_name}: pcscd never saw present={present} in {timeout} s")
    finally:
        scard.SCardReleaseContext(ctx)


@pytest.fixture
def card_server(pcscd: PcscDaemon) -> Iterator[VpcdCardServer]:
    """The card side of reader 00; its field starts empty, and is emptied afterwards."""
    wait_field(READER_00)
    with VpcdCardServer(pcscd.port) as server:
        yield server


@pytest.fixture
def card_server_01(pcscd: PcscDaemon) -> Iterator[VpcdCardServer]:
    """The card side of reader 01 (port + 1)."""
    wait_field(READER_01)
    with VpcdCardServer(pcscd.port + 1) as server:
        yield server


@pytest.fixture
def field() -> Callable[..., None]:
    """``field(reader_name, present=..., timeout=...)``: wait for pcscd to see that state."""
    return wait_field


@pytest.fixture
def now_ms() -> int:
    return NOW_MS


@pytest.fixture
def reader(pcscd: PcscDaemon) -> Iterator[PcscReader]:
    """An open PcscReader on reader 00, closed afterwards."""
    with PcscReader(READER_00) as opened:
        yield opened
