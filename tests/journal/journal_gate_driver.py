"""A gate loop for the crash test: real validator, virtual reader, sim cards, journal.

Usage: python journal_gate_driver.py JOURNAL PASSBACK_STORE [GROUP_COMMIT_MS]

Prints ``READY <last seq>`` once open, then ``OPEN <seq>`` for each accepted ride, only
after ``Journal.append`` returned (the moment a real gate would open). Runs until killed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from journal_support import BASE_MS, CTX, TERMINAL_ID

from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.tap import run_tap
from farecore.journal.passback import PassbackRule, PassbackStore
from farecore.journal.terminal import Journal
from readers.virtual import VirtualReader
from sim.issuer import Issuer


def main() -> None:
    journal_path, store_path = sys.argv[1], sys.argv[2]
    group = float(sys.argv[3]) if len(sys.argv) > 3 else None
    issuer = Issuer.from_seed("journal-tests")
    store = PassbackStore.open(store_path, PassbackRule(window_s=60), CTX.place)
    validator = Validator(
        TerminalPolicy(TERMINAL_ID, frozenset({370200})), issuer.keyring(), passback=store
    )
    journal = Journal.open(journal_path, TERMINAL_ID, group_commit_ms=group)
    reader = VirtualReader()
    cards = {}
    i = journal.last_seq
    print(f"READY {i}", flush=True)
    while True:
        card_id = i % 500 + 1
        card = cards.get(card_id) or cards.setdefault(card_id, issuer.card(card_id))
        now = BASE_MS + i * 1000
        i += 1
        decision = run_tap(reader.tap(card), validator, now, os.urandom(16))
        record = journal.append(decision, CTX)
        if decision.accepted and decision.card_id is not None:
            store.record(decision.card_id, now)
            print(f"OPEN {record.seq}", flush=True)


if __name__ == "__main__":
    main()
