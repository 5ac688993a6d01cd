"""A small deterministic transit world for the settlement tests (a plain module).

Real parts only: sim cards tapped through the virtual reader, a real validator, real
SQLite journals, batches exported and signed with terminal keys.
"""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from farecore.card.keys import SigningKey
from farecore.decide.issued import IssuedList
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.tap import run_tap
from farecore.journal.batch import day_bounds_ms, export_batch
from farecore.journal.terminal import Direction, Journal, TapContext
from farecore.settlement.terminals import TerminalInfo, format_terminals
from readers.virtual import VirtualReader
from sim.card import VirtualCard
from sim.issuer import Issuer, derive_key

DAY = dt.date(2026, 3, 2)
SEED = "settle-tests"

FARES = """
[unpaired]
entry = "max"
exit = "min"

[[operator]]
id = "qd-bus"
regions = [370200]

[[operator]]
id = "qd-metro"
regions = [370200]

[[bus]]
operator = "qd-bus"
line = "1"
fare_fen = 200
effective_from = "2026-01-01"

[[bus]]
operator = "qd-bus"
line = "1"
fare_fen = 150
effective_from = "2026-04-01"

[[bus]]
operator = "qd-bus"
line = "2"
fare_fen = 100
effective_from = "2026-01-01"

[[metro]]
operator = "qd-metro"
effective_from = "2026-01-01"
bands = [{up_to_m = 6000, fare_fen = 200}, {up_to_m = 16000, fare_fen = 300}, {fare_fen = 400}]
[metro.stations]
A = 0
B = 5000
C = 12000
D = 30000
"""

# terminal id: operator, line, place, direction, x_m, y_m
LAYOUT: dict[int, tuple[str, str, str, Direction, int, int]] = {
    101: ("qd-bus", "1", "V1", Direction.BOARD, 0, 0),
    102: ("qd-bus", "2", "V2", Direction.BOARD, 3000, 0),
    201: ("qd-metro", "M1", "A", Direction.ENTRY, 0, 0),
    202: ("qd-metro", "M1", "A", Direction.EXIT, 0, 0),
    203: ("qd-metro", "M1", "B", Direction.ENTRY, 5000, 0),
    204: ("qd-metro", "M1", "B", Direction.EXIT, 5000, 0),
    205: ("qd-metro", "M2", "C", Direction.ENTRY, 12000, 0),
    206: ("qd-metro", "M2", "D", Direction.EXIT, 30000, 0),
}


def terminal_key(tid: int) -> SigningKey:
    return SigningKey("terminal", tid, derive_key(SEED, f"terminal-{tid}"))


@dataclass
class World:
    root: Path
    issuer: Issuer = field(default_factory=lambda: Issuer.from_seed(SEED))
    cards: dict[int, VirtualCard] = field(default_factory=dict)
    journals: dict[int, Journal] = field(default_factory=dict)
    validators: dict[int, Validator] = field(default_factory=dict)
    reader: VirtualReader = field(default_factory=VirtualReader)
    rng: random.Random = field(default_factory=lambda: random.Random(4))
    layout: dict[int, tuple[str, str, str, Direction, int, int]] = field(
        default_factory=lambda: dict(LAYOUT)
    )
    fares: str = FARES
    issued: tuple[IssuedList, ...] = ()  # the issuer's lists the gates trust

    def __post_init__(self) -> None:
        (self.root / "batches").mkdir(parents=True, exist_ok=True)
        infos = []
        for tid, (op, line, place, direction, x, y) in self.layout.items():
            key = terminal_key(tid)
            infos.append(
                TerminalInfo(
                    tid, op, line, place, direction, key.algorithm, key.private.public_bytes, x, y
                )
            )
        (self.root / "terminals.csv").write_text(format_terminals(infos))
        self.issuer.keyring().save(self.root / "keyring.json")
        (self.root / "fares.toml").write_text(self.fares)

    @property
    def batches(self) -> Path:
        return self.root / "batches"

    def card(self, card_id: int) -> VirtualCard:
        if card_id not in self.cards:
            self.cards[card_id] = self.issuer.card(card_id)
        return self.cards[card_id]

    def tap(self, tid: int, card_id: int, time_ms: int) -> bool:
        if tid not in self.journals:
            self.journals[tid] = Journal.open(self.root / f"journal-{tid}.sqlite", tid)
            self.validators[tid] = Validator(
                TerminalPolicy(tid, frozenset({370200})), self.issuer.keyring(), issued=self.issued
            )
        op, line, place, direction, _, _ = self.layout[tid]
        nonce = self.rng.randbytes(16)
        decision = run_tap(
            self.reader.tap(self.card(card_id)), self.validators[tid], time_ms, nonce
        )
        self.journals[tid].append(decision, TapContext(op, line, place, direction))
        return decision.accepted

    def export(self, day: dt.date = DAY) -> list[Path]:
        """Every registered terminal's batch of ``day`` (an idle one's is empty)."""
        out = []
        for tid in self.layout:
            if tid not in self.journals:
                self.journals[tid] = Journal.open(self.root / f"journal-{tid}.sqlite", tid)
        for tid in sorted(self.journals):
            path = self.batches / f"{tid}-{day.isoformat()}.fcb"
            path.write_bytes(
                export_batch(self.root / f"journal-{tid}.sqlite", day, terminal_key(tid))
            )
            out.append(path)
        return out

    def close(self) -> None:
        for j in self.journals.values():
            j.close()


def day_ms(hour: float) -> int:
    return day_bounds_ms(DAY, 480)[0] + int(hour * 3_600_000)


def random_day(world: World, n_cards: int, n_taps: int, seed: int) -> None:
    """Plausible random travel: bus boardings and metro trips, spread over the day."""
    rng = random.Random(seed)
    t = day_ms(6)
    plan: list[tuple[int, int, int]] = []  # (time, terminal, card), tapped in time order
    for _ in range(n_taps):
        card = rng.randint(1, n_cards)
        t += rng.randint(60_000, 600_000)
        kind = rng.random()
        if kind < 0.4:
            plan.append((t, rng.choice([101, 102]), card))
        elif kind < 0.85:
            plan.append((t, rng.choice([201, 203, 205]), card))
            if rng.random() < 0.9:
                exit_t = t + rng.randint(600_000, 1_800_000)
                plan.append((exit_t, rng.choice([202, 204, 206]), card))
        else:
            plan.append((t, rng.choice([202, 204]), card))  # an exit with no entry
    for when, tid, card in sorted(plan):
        world.tap(tid, card, when)


def settle_cli(world: World, tmp: Path, *more: object) -> subprocess.CompletedProcess[str]:
    """``farecore settle`` over the world's batches in a real process, writing ``tmp/out``
    and ``tmp/ledger.sqlite``."""
    args = ["settle", "--quiet", "--batches", world.batches, "--terminals",
            world.root / "terminals.csv", "--keyring", world.root / "keyring.json", "--fares",
            world.root / "fares.toml", "--day", DAY.isoformat(), "--out", tmp / "out",
            "--ledger", tmp / "ledger.sqlite", *more]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "farecore", *map(str, args)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def forged_world(world: World, forged_id: int, listed: Path) -> IssuedList:
    """A card ``forged_id`` whose credential's issuer signature is broken but which the
    issuer's list at ``listed`` holds; the world's gates trust that list and tap it once.
    The list, opened."""
    import hashlib

    from farecore.decide.issued import encode_list

    good = world.issuer.card(forged_id)
    raw = bytearray(good.credential)
    raw[-1] ^= 0x01  # the last byte is the issuer signature's
    forged = world.cards[forged_id] = VirtualCard(bytes(raw), good.key)
    digest = hashlib.sha256(forged.credential).digest()
    listed.write_bytes(encode_list([digest], world.issuer.key, 2, 1))
    opened = IssuedList.open(listed, world.issuer.keyring())
    world.issued = (opened,)
    assert world.tap(101, forged_id, day_ms(9))  # the gate trusted the list
    return opened
