"""CLOCK_FAULT: the clock guard through the real validator and tap, and the time marks.

The guard's floor is the latest time the gate has seen; a tap more than the tolerance
behind it is a DENY CLOCK_FAULT whatever the card, right after UNREADABLE in rank. The
fault is noted even on an unreadable tap, and the journal reopens with the latest of
its recent records as the floor, so a record written a little behind cannot lower it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from farecore.decide.checks import InMemoryRevocation
from farecore.decide.clockguard import ClockGuard
from farecore.decide.decision import Reason
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.marks import GateMarks
from farecore.gate.tap import run_tap
from farecore.journal.records import Direction
from farecore.journal.terminal import Journal, TapContext
from readers.virtual import VirtualReader
from sim.card import CardFaults
from sim.issuer import Issuer

ISSUER = Issuer.from_seed("clock-guard")
NOW_MS = 1_796_083_200_000
DAY_MS = 86_400_000
POLICY = TerminalPolicy(9001, frozenset({370200}))
CTX = TapContext("qd-metro", "M3", "wusi", Direction.ENTRY)


def _validator(guard: ClockGuard, created_s: int = 0) -> Validator:
    return Validator(
        POLICY, ISSUER.keyring(), InMemoryRevocation(created_at=created_s), clock=guard
    )


def _tap(validator: Validator, now_ms: int, card_id: int = 7, **card: object) -> Reason | None:
    channel = VirtualReader().tap(ISSUER.card(card_id, **card))  # type: ignore[arg-type]
    return run_tap(channel, validator, now_ms, os.urandom(16)).reason


def test_a_clock_set_back_a_day_denies_every_card_until_it_is_right() -> None:
    changes: list[tuple[bool, int, int]] = []
    guard = ClockGuard(0, 300, lambda *change: changes.append(change))
    validator = _validator(guard)
    assert _tap(validator, NOW_MS) is None
    lapsed = {"valid_from": 1_609_459_200, "valid_until": 1_672_531_200}  # 2021 to 2023
    for now in (NOW_MS - DAY_MS, 1_654_084_800_000):  # a day back; June 2022
        assert _tap(validator, now) is Reason.CLOCK_FAULT
        assert _tap(validator, now, **lapsed) is Reason.CLOCK_FAULT  # not ACCEPT, not EXPIRED
    assert _tap(validator, NOW_MS - 299_000) is None  # within the tolerance
    assert [c[0] for c in changes] == [True, False]  # said once as it starts, once as it ends
    assert changes[0][2] == NOW_MS


def test_a_table_made_in_the_gates_future_is_a_clock_fault() -> None:
    guard = ClockGuard(0, 300)
    validator = _validator(guard, created_s=NOW_MS // 1000 + 3600)
    assert _tap(validator, NOW_MS) is Reason.CLOCK_FAULT
    assert _tap(validator, NOW_MS + 3600_000) is None


def test_an_unreadable_tap_behind_the_clock_notes_the_fault() -> None:
    changes: list[bool] = []
    guard = ClockGuard(NOW_MS, 300, lambda faulted, *_: changes.append(faulted))
    validator = _validator(guard)
    pulled = {"faults": CardFaults(remove_at="select")}
    assert _tap(validator, NOW_MS - DAY_MS, **pulled) is Reason.UNREADABLE  # it ranks first
    assert changes == [True] and guard.floor_ms == NOW_MS


@given(
    floor=st.integers(0, 2**62),
    tolerance=st.integers(0, 86_400),
    delta=st.integers(-(2**40), 2**40),
)
def test_the_guard_faults_exactly_beyond_the_tolerance(
    floor: int, tolerance: int, delta: int
) -> None:
    guard = ClockGuard(floor, tolerance)
    now = floor + delta
    fault = guard.check(now)
    assert (fault is not None) == (now < floor - tolerance * 1000)
    assert guard.floor_ms == max(floor, now) if fault is None else guard.floor_ms == floor


def test_the_journal_floor_is_its_latest_recent_record(tmp_path: Path) -> None:
    validator = _validator(ClockGuard(0, 300))
    path = tmp_path / "journal.sqlite"
    with Journal.open(path, 9001) as journal:
        for now in (NOW_MS, NOW_MS + 60_000, NOW_MS - 200_000):  # the last one a little behind
            channel = VirtualReader().tap(ISSUER.card(7))
            journal.append(run_tap(channel, validator, now, os.urandom(16)), CTX)
    with Journal.open(path, 9001) as journal:
        assert journal.last_time_ms == NOW_MS + 60_000


def test_marks_saved_from_two_threads_at_once_all_land(tmp_path: Path) -> None:
    marks = GateMarks.load(tmp_path / "marks.json", 9001)
    failures: list[BaseException] = []

    def save(offset: int) -> None:
        for i in range(150):
            try:
                marks.raise_time(NOW_MS + 2 * i + offset)
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=save, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert GateMarks.load(tmp_path / "marks.json", 9001).time_ms == marks.time_ms
    assert [p.name for p in tmp_path.iterdir()] == ["marks.json"]
