"""Tap latency through the real transports: PC/SC (pcscd + vpcd) and a PN532 on a pty.

Each transport is timed from "card present" to the decision with ``run_tap``, the same
call the gate makes. In the same run, interleaved tap by tap, the engine alone is timed
through the in-process virtual reader on an identical card, so the transport's share of
the latency is visible. The pcscd and the PN532 emulator are started here and stopped
at the end.

    python benchmarks/bench_readers.py [--quick] [--skip pcsc] [--out PATH]

``--skip pcsc`` leaves out the transport that starts a pcscd (on a machine where
another pcscd must not be disturbed); its goal is then reported as not measured.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _report import goal, logged, p50, percentile, write_report

from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.reader_port import CardChannel
from farecore.gate.tap import run_tap
from readers.virtual import VirtualReader
from sim.issuer import Issuer

NOW_MS = 1_796_083_200_000
ISSUER = Issuer.from_seed("bench-readers")
clock = time.perf_counter_ns
_log = logging.getLogger(__name__)


def _validator() -> Validator:
    return Validator(TerminalPolicy(1, frozenset({370200})), ISSUER.keyring())


def _interleave(channel: CardChannel, taps: int) -> tuple[list[float], list[float], int]:
    """Alternate a tap through ``channel`` and an engine-only tap; milliseconds each."""
    transport_v, engine_v = _validator(), _validator()
    engine = VirtualReader().tap(ISSUER.card(2))
    run_tap(channel, transport_v, NOW_MS, os.urandom(16))
    run_tap(engine, engine_v, NOW_MS, os.urandom(16))
    via, alone, wrong = [], [], 0
    for _ in range(taps):
        t0 = clock()
        decision = run_tap(channel, transport_v, NOW_MS, os.urandom(16))
        t1 = clock()
        run_tap(engine, engine_v, NOW_MS, os.urandom(16))
        t2 = clock()
        wrong += not decision.accepted
        via.append((t1 - t0) / 1e6)
        alone.append((t2 - t1) / 1e6)
    return via, alone, wrong


def measure_pcsc(taps: int) -> dict[str, Any]:
    from readers.pcsc import PcscReader
    from sim.pcscd import PcscDaemon
    from sim.vpcd import VpcdCardServer

    with PcscDaemon(isolated=None) as daemon:
        os.environ.update(daemon.client_env)
        with VpcdCardServer(daemon.port) as server:
            server.insert(ISSUER.card(1))
            with PcscReader(daemon.reader_names[0]) as reader:
                channel = reader.wait_for_card(10.0)
                if channel is None:
                    raise RuntimeError("pcscd never saw the virtual card")
                via, alone, wrong = _interleave(channel, taps)
    return {"via": via, "alone": alone, "wrong": wrong}


def measure_pn532(taps: int, line_baud: int | None = None) -> dict[str, Any]:
    """Taps through the PN532 emulator on a pty; ``line_baud`` models a real UART."""
    from readers.pn532 import Pn532Reader
    from sim.pn532_emulator import Pn532Emulator

    with Pn532Emulator(line_baud=line_baud) as emulator:
        emulator.insert(ISSUER.card(1))
        speed = None if line_baud in (None, 115200) else line_baud
        reader = Pn532Reader(emulator.path, speed=speed)
        reader.open()
        try:
            channel = reader.wait_for_card(10.0)
            if channel is None:
                raise RuntimeError("the reader never listed the emulated card")
            via, alone, wrong = _interleave(channel, taps)
        finally:
            reader.close()
    return {"via": via, "alone": alone, "wrong": wrong}


def _measure(
    name: str, measure: Callable[[int], dict[str, Any]], taps: int, metrics: dict[str, Any]
) -> dict[str, Any] | None:
    try:
        return measure(taps)
    except Exception as exc:
        _log.warning("%s: not measured: %s: %s", name, type(exc).__name__, exc)
        metrics[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer taps")
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["pcsc", "pn532"],
        help="leave out a transport (repeatable); its goal is reported as not measured",
    )
    args = parser.parse_args()
    taps = 1000 if args.quick else 5000
    metrics: dict[str, Any] = {"taps_per_transport": taps}
    rows = []
    goals = []
    transports: list[tuple[str, Callable[[int], dict[str, Any]], bool]] = [
        ("pcsc", measure_pcsc, True),
        ("pn532", measure_pn532, True),
        # A real PN532 sits on a UART: model the wire at the speed the reader switches to,
        # and at the power-on 115200 baud (which alone costs ~29 ms per tap).
        ("pn532_921600_baud", lambda n: measure_pn532(n, 921_600), False),
        ("pn532_115200_baud", lambda n: measure_pn532(n, 115_200), False),
    ]
    for name, measure, has_goal in transports:
        line_taps = taps if has_goal else max(200, taps // 5)
        if name.split("_")[0] in args.skip:
            metrics[f"{name}_error"] = "skipped (--skip)"
            got = None
        else:
            got = _measure(name, measure, line_taps, metrics)
        if got is not None:
            metrics[f"{name}_p50_ms"] = p50(got["via"])
            metrics[f"{name}_p99_ms"] = percentile(got["via"], 99)
            metrics[f"{name}_engine_p50_ms"] = p50(got["alone"])
            metrics[f"{name}_engine_p99_ms"] = percentile(got["alone"], 99)
            metrics[f"{name}_transport_share_p50"] = 1 - p50(got["alone"]) / p50(got["via"])
            metrics[f"{name}_wrong_decisions"] = got["wrong"]
            rows.append(
                (
                    f"tap via {name} p50 / p99",
                    f"{p50(got['via']):.2f}/{percentile(got['via'], 99):.2f} ms",
                    f"{p50(got['alone']):.2f} ms",
                    f"{p50(got['via']) / p50(got['alone']):.1f}",
                    "p99 ≤ 30 ms" if has_goal else "(modelled UART)",
                )
            )
        if has_goal:
            value = metrics.get(f"{name}_p99_ms")
            goals.append(goal(f"p99 via {name}", value, "<=", 30.0, "ms"))
    write_report("readers", args.quick, metrics, goals, args.out, rows)


if __name__ == "__main__":
    with logged("bench_readers"):
        main()
