"""Pushing some of the simulator's taps through a real transport: pcscd + vpcd, or a PN532.

The simulator normally taps through the in-process virtual reader. With
``--reader pcsc`` it starts a private pcscd (``sim.pcscd``) for the tap phase, serves the
card of each chosen tap to vpcd over TCP (``sim.vpcd``) and lets the gate read it with
the pyscard reader (``readers.pcsc``), so those decisions cross real sockets, a real
daemon and real card insertion and removal. With ``--reader pn532`` the worker that owns
the chosen gate starts an emulated PN532 on a pseudo-terminal (``sim.pn532_emulator``)
and the gate reads through the serial PN532 reader (``readers.pn532``): real HSU frames,
ACKs and checksums over a real tty, polling for the card and for its removal.

This module must never leave a pcscd or an emulator running: whoever calls
:func:`start_transport` calls :func:`stop_transport`, and whoever opens a link closes it.
It must never change what a tap decides: the same card and the same injected clock and
nonce go to the same ``Gate.process`` as on the virtual path.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from farecore.decide.decision import Decision
from farecore.errors import ReaderIOError
from farecore.gate.runtime import Gate
from sim.workload import label_name

__all__ = [
    "TRANSPORTS",
    "Link",
    "PcscLink",
    "Pn532Link",
    "Transport",
    "open_link",
    "start_pcsc",
    "start_transport",
    "stop_pcsc",
    "stop_transport",
    "transport_figures",
]

TRANSPORTS = ("pcsc", "pn532")
# The emulator holds each reply back for the time it would take on a real 115200-baud
# UART (the PN532's HSU default), so the reported latency resembles a real breakout's
# rather than a pty's, which is near-instant.
PN532_LINE_BAUD = 115_200
_PN532_ACK_S = 2.0
_PN532_REPLY_S = 5.0
_CARD_WAIT_S = 10.0
_REMOVAL_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class Transport:
    """The taps of one gate that go through the transport instead of the virtual reader.

    ``port`` and ``reader_name`` locate the vpcd slot in pcscd (pcsc only); a PN532 link
    needs nothing from the parent because each worker makes its own emulator.
    """

    kind: str
    gate: int
    taps: frozenset[int]
    port: int = 0
    reader_name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in TRANSPORTS:
            raise ValueError(f"unknown transport {self.kind!r} (one of {', '.join(TRANSPORTS)})")
        if self.gate < 0:
            raise ValueError("transport gate must be >= 0")
        if self.kind == "pcsc" and (not 0 < self.port < 65536 or not self.reader_name):
            raise ValueError("a pcsc transport needs a vpcd port and a reader name")


class Link(Protocol):
    """One gate's real path: put a card in the field, let the gate take the tap."""

    def tap(self, gate: Gate, card: Any) -> Decision: ...

    def close(self) -> None: ...


class PcscLink:
    """One gate's PC/SC path: a vpcd card server and a pyscard reader through pcscd."""

    def __init__(self, t: Transport) -> None:
        from readers.pcsc import PcscReader
        from sim.vpcd import VpcdCardServer

        self.server = VpcdCardServer(t.port).start()
        self.reader = PcscReader(t.reader_name)
        self.reader.open()

    def tap(self, gate: Gate, card: Any) -> Decision:
        """Insert ``card``, let the gate take the tap through pcscd, remove the card."""
        self.server.insert(card)
        deadline = time.monotonic() + _CARD_WAIT_S
        channel = None
        while channel is None and time.monotonic() < deadline:
            channel = self.reader.wait_for_card(0.5)
        if channel is None:
            self.server.remove()
            raise ReaderIOError("pcsc: the virtual card never appeared in the reader")
        decision = gate.process(channel)
        self.server.remove()
        self.reader.wait_for_removal(5.0)
        return decision

    def close(self) -> None:
        self.reader.close()
        self.server.close()


class Pn532Link:
    """One gate's serial path: an emulated PN532 on a pty and the real PN532 reader.

    Made inside the worker process: the emulator is a thread with a pty, and neither
    survives a fork.
    """

    def __init__(self, t: Transport) -> None:
        from readers.pn532 import Pn532Reader
        from sim.pn532_emulator import Pn532Emulator

        self.emulator = Pn532Emulator(line_baud=PN532_LINE_BAUD).start()
        try:
            # The emulator is a thread in this busy worker, not a chip that ACKs within a
            # millisecond: a tight ACK timeout would only cause resends, and a resent
            # InDataExchange runs the APDU on the card twice (its counter too).
            self.reader = Pn532Reader(
                self.emulator.path, ack_timeout=_PN532_ACK_S, response_timeout=_PN532_REPLY_S
            )
            self.reader.open()
        except BaseException:
            self.emulator.close()
            raise

    def tap(self, gate: Gate, card: Any) -> Decision:
        """Put ``card`` in the field, let the gate take the tap over the line, take it out.

        A pulled card (one that raises CardIOError mid-tap) leaves the emulator's field by
        itself; the reader then reports the card gone and the gate decides UNREADABLE,
        exactly as on the virtual reader.
        """
        self.emulator.insert(card)
        try:
            channel = self.reader.wait_for_card(_CARD_WAIT_S)
            if channel is None:
                raise ReaderIOError("pn532: the virtual card never appeared in the reader")
            decision = gate.process(channel)
        finally:
            self.emulator.remove()
        # The next card must not be taken for this one: wait until the chip sees it gone.
        if not self.reader.wait_for_removal(_REMOVAL_WAIT_S):
            raise ReaderIOError("pn532: the reader still sees a card after it was removed")
        return decision

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self.emulator.close()


def open_link(t: Transport) -> Link:
    """Open the link for ``t`` in the calling (worker) process; the caller closes it."""
    if t.kind == "pcsc":
        return PcscLink(t)
    return Pn532Link(t)


def start_pcsc(workdir: Path, gate: int, taps: npt.NDArray[np.int64]) -> tuple[Any, Transport]:
    """Start an isolated pcscd with vpcd (its socket path goes into os.environ, which
    forked workers inherit); return it and the transport plan for ``taps`` of ``gate``."""
    from sim.pcscd import PcscDaemon

    daemon = PcscDaemon(workdir, isolated=None)
    daemon.start()
    try:
        os.environ.update(daemon.client_env)
        plan = Transport(
            "pcsc",
            gate,
            frozenset(int(i) for i in taps),
            port=daemon.port,
            reader_name=daemon.reader_names[0],
        )
    except BaseException:
        daemon.stop()
        raise
    return daemon, plan


def stop_pcsc(daemon: Any) -> None:
    if daemon is not None:
        daemon.stop()


def start_transport(
    kind: str, workdir: Path, gate: int, taps: npt.NDArray[np.int64]
) -> tuple[Any, Transport]:
    """Start what ``kind`` needs before the workers fork; return it and the plan.

    pcsc starts a shared pcscd here. pn532 starts nothing: the worker that owns ``gate``
    makes its own emulator when it opens the link.
    """
    if kind == "pcsc":
        return start_pcsc(workdir, gate, taps)
    return None, Transport(kind, gate, frozenset(int(i) for i in taps))


def stop_transport(handle: Any) -> None:
    """Stop what :func:`start_transport` started (None: nothing was)."""
    stop_pcsc(handle)


def transport_figures(
    reader: str,
    via: list[int],
    latency: npt.NDArray[np.float64],
    got: npt.NDArray[np.uint8] | None = None,
    expected: npt.NDArray[np.uint8] | None = None,
) -> dict[str, Any]:
    """Count, decisions and decision latency of the taps that went through the transport.

    With ``got`` and ``expected`` (per-tap label codes) it also says what those taps
    decided and how many of them were wrong, so a run shows that denials (a pulled card
    among them) crossed the real transport too, not only accepts.
    """
    if not via:
        return {"reader": "virtual", "taps": 0}
    lat = latency[via]
    figures: dict[str, Any] = {
        "reader": reader,
        "taps": len(via),
        "latency_p50_us": round(float(np.percentile(lat, 50)), 1),
        "latency_p99_us": round(float(np.percentile(lat, 99)), 1),
    }
    if got is not None:
        codes, counts = np.unique(got[via], return_counts=True)
        figures["decisions"] = {
            label_name(int(c)): int(n) for c, n in zip(codes, counts, strict=True)
        }
    if got is not None and expected is not None:
        figures["wrong"] = int(np.count_nonzero(got[via] != expected[via]))
    return figures
