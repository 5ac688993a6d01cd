"""Pushing some of the simulator's taps through a real transport: pcscd with vpcd.

The simulator normally taps through the in-process virtual reader. With
``--reader pcsc`` it starts a private pcscd (``sim.pcscd``) for the tap phase, serves the
card of each chosen tap to vpcd over TCP (``sim.vpcd``) and lets the gate read it with
the pyscard reader (``readers.pcsc``), so those decisions cross real sockets, a real
daemon and real card insertion and removal. This module must never leave a pcscd
running: whoever calls :func:`start_pcsc` calls :func:`stop_pcsc`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from farecore.decision import Decision
from farecore.errors import ReaderIOError
from farecore.gate import Gate

__all__ = ["PcscLink", "Transport", "start_pcsc", "stop_pcsc", "transport_figures"]


@dataclass(frozen=True, slots=True)
class Transport:
    """The taps of one gate that go through the transport instead of the virtual reader."""

    gate: int
    taps: frozenset[int]
    port: int
    reader_name: str


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
        deadline = time.monotonic() + 10.0
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


def start_pcsc(workdir: Path, gate: int, taps: npt.NDArray[np.int64]) -> tuple[Any, Transport]:
    """Start an isolated pcscd with vpcd (its socket path goes into os.environ, which
    forked workers inherit); return it and the transport plan for ``taps`` of ``gate``."""
    from sim.pcscd import PcscDaemon

    daemon = PcscDaemon(workdir, isolated=None)
    daemon.start()
    os.environ.update(daemon.client_env)
    plan = Transport(gate, frozenset(int(i) for i in taps), daemon.port, daemon.reader_names[0])
    return daemon, plan


def stop_pcsc(daemon: Any) -> None:
    if daemon is not None:
        daemon.stop()


def transport_figures(
    reader: str, via: list[int], latency: npt.NDArray[np.float64]
) -> dict[str, Any]:
    """Count and decision latency of the taps that went through the transport."""
    if not via:
        return {"reader": "virtual", "taps": 0}
    lat = latency[via]
    return {
        "reader": reader,
        "taps": len(via),
        "latency_p50_us": round(float(np.percentile(lat, 50)), 1),
        "latency_p99_us": round(float(np.percentile(lat, 99)), 1),
    }
