"""A station controller for the crash test: three gates, one station journal, group commit.

Usage: python station_gate_driver.py STATION_JOURNAL MAX_GROUP [MOVES]

MOVES: ``commit`` (the default) moves records out of the recent table in every commit
that gathers 16, so kills land before, in and after moves; ``idle`` leaves them to the
controller's idle moves (after 5 ms without a group) and to the next open; ``none``
leaves every record of this run in the recent table for the next open to move.

Prints ``READY <records so far>`` once open, then ``OPEN <terminal> <time_ms> <card>``
for each accepted ride, from the gate's actuator, which the controller signals only
after the commit that holds the ride returned. Runs until killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from journal_support import BASE_MS, CTX

from farecore.decide.decision import Decision
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.controller import StationController
from farecore.gate.runtime import Gate
from farecore.journal.passback import PassbackRule, PassbackStore
from farecore.journal.station import StationJournal
from readers.virtual import VirtualReader
from sim.issuer import Issuer

STATION_TERMINALS = (5101, 5102, 5103)


class PrintOpen:
    def signal(self, decision: Decision) -> None:
        if decision.accepted:
            print(f"OPEN {decision.terminal_id} {decision.time_ms} {decision.card_id}", flush=True)


def main() -> None:
    path, max_group = sys.argv[1], int(sys.argv[2])
    moves = sys.argv[3] if len(sys.argv) > 3 else "commit"
    issuer = Issuer.from_seed("journal-tests")
    if moves == "commit":
        station = StationJournal.open(path, STATION_TERMINALS, move_at=16)
    elif moves == "idle":
        station = StationJournal.open(path, STATION_TERMINALS, move_when_idle_s=0.005)
    else:
        station = StationJournal.open(path, STATION_TERMINALS, move_when_idle_s=None)
    store = PassbackStore.in_station(station, PassbackRule(window_s=60), CTX.place)
    clock = {"now": 0}
    gates = []
    for tid in STATION_TERMINALS:
        validator = Validator(
            TerminalPolicy(tid, frozenset({370200})), issuer.keyring(), passback=store
        )
        reader = VirtualReader()
        gate = Gate(
            reader,
            validator,
            journal=station.terminal(tid),
            context=CTX,
            passback=store,
            actuator=PrintOpen(),
            clock_ms=lambda: clock["now"],
        )
        gates.append((gate, reader))
    controller = StationController(station, max_group)
    i = sum(station.head(t)[0] for t in STATION_TERMINALS)
    print(f"READY {i}", flush=True)
    cards = {}
    while True:
        card_id = i % 500 + 1
        card = cards.get(card_id) or cards.setdefault(card_id, issuer.card(card_id))
        clock["now"] = BASE_MS + i * 1000
        gate, reader = gates[(i * 7 // 3) % 3]
        controller.tap(gate, reader.tap(card))
        reader.remove()
        i += 1


if __name__ == "__main__":
    main()
