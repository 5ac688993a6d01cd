"""Anti-passback: window, scope, restart, clocks that jump, and two real gate processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from journal_support import BASE_MS

from farecore.decide.checks import PassbackCheck
from farecore.errors import ConfigError
from farecore.journal.passback import (
    PASSBACK_PRUNE,
    PASSBACK_TABLE,
    PASSBACK_UPSERT,
    PassbackRule,
    PassbackStore,
    forgets,
)
from farecore.journal.station import replay_passback

WINDOW_S = 600


class Clock:
    """An injected monotonic clock (ms)."""

    def __init__(self, start: int = 1_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


def _store(path: Path, clock: Clock, boot: str = "boot-a", place: str = "bus-7") -> PassbackStore:
    return PassbackStore.open(
        path, PassbackRule(window_s=WINDOW_S), place, monotonic=clock, boot=boot
    )


def test_refuses_within_window_then_allows(tmp_path: Path) -> None:
    clock = Clock()
    with _store(tmp_path / "s.sqlite", clock) as s:
        check: PassbackCheck = s
        assert not check.refuses(5, BASE_MS)
        check.record(5, BASE_MS)
        clock.now += 599_999
        assert check.refuses(5, BASE_MS + 599_999)
        assert not check.refuses(6, BASE_MS + 1)  # another card
        clock.now += 1
        assert not check.refuses(5, BASE_MS + 600_000)


def test_places_are_separate_and_terminal_scope(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "s.sqlite"
    with _store(path, clock, place="wusi") as a, _store(path, clock, place="taidong") as b:
        a.record(1, BASE_MS)
        assert a.refuses(1, BASE_MS) and not b.refuses(1, BASE_MS)
    with pytest.raises(ConfigError):
        PassbackStore.open(path, PassbackRule(60, scope="terminal"), "x")
    with pytest.raises(ConfigError):
        PassbackRule(0)


def test_state_survives_restart(tmp_path: Path) -> None:
    clock = Clock()
    with _store(tmp_path / "s.sqlite", clock) as s:
        s.record(2**64 - 1, BASE_MS)  # the largest card id fits
    clock.now += 1000
    with _store(tmp_path / "s.sqlite", clock) as s:
        assert s.refuses(2**64 - 1, BASE_MS + 1000)


def test_wall_clock_jumping_back_never_extends_lockout(tmp_path: Path) -> None:
    clock = Clock()
    with _store(tmp_path / "s.sqlite", clock) as s:
        s.record(9, BASE_MS)
        # Same boot: the wall clock jumps back a day, but real (monotonic) time passes.
        clock.now += WINDOW_S * 1000
        assert not s.refuses(9, BASE_MS - 86_400_000)


def test_across_reboot_wall_clock_back_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with _store(path, Clock(), boot="boot-a") as s:
        s.record(9, BASE_MS)
    # After a reboot the monotonic clock restarts at 0; only the wall clock compares.
    with _store(path, Clock(0), boot="boot-b") as s:
        assert s.refuses(9, BASE_MS + 10_000)  # 10 s later: still within the window
        assert s.refuses(9, BASE_MS - 30_000)  # slight step back (< max skew): refuse
        assert not s.refuses(9, BASE_MS - 3_600_000)  # far back: distrusted, never locks
        assert not s.refuses(9, BASE_MS + WINDOW_S * 1000)


@settings(max_examples=60, deadline=None)
@given(
    wall_jump_ms=st.integers(-(10**10), 10**10),
    real_elapsed_ms=st.integers(0, 10**8),
    reboot=st.booleans(),
)
def test_lockout_never_exceeds_window_plus_skew(
    tmp_path_factory: pytest.TempPathFactory, wall_jump_ms: int, real_elapsed_ms: int, reboot: bool
) -> None:
    path = tmp_path_factory.mktemp("pb") / "s.sqlite"
    clock = Clock()
    with _store(path, clock, boot="a") as s:
        s.record(1, BASE_MS)
    clock.now += real_elapsed_ms
    wall_now = BASE_MS + real_elapsed_ms + wall_jump_ms
    with _store(path, Clock(5) if reboot else clock, boot="b" if reboot else "a") as s:
        refused = s.refuses(1, wall_now)
    if not reboot:
        assert refused == (real_elapsed_ms < WINDOW_S * 1000)
    elif refused:
        # Across a reboot the wall clock is all there is; a refusal is bounded by it.
        assert -60_000 <= wall_now - BASE_MS < WINDOW_S * 1000


_GATE = textwrap.dedent(
    """
    import sys
    from farecore.journal.passback import PassbackRule, PassbackStore
    store = PassbackStore.open(sys.argv[1], PassbackRule(window_s=600), "station-1")
    first, count, now = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    refused = 0
    for card in range(first, first + count):
        if store.refuses(card, now):
            refused += 1
        else:
            store.record(card, now)
    print(refused, flush=True)
    """
)


def test_two_gate_processes_share_one_station_store(tmp_path: Path) -> None:
    path = str(tmp_path / "station.sqlite")
    started: list[subprocess.Popen[str]] = []

    def gate(first: int, count: int) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", _GATE, path, str(first), str(count), str(BASE_MS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(p)
        return p

    def result(p: subprocess.Popen[str]) -> str:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        return out.strip()

    try:
        # Two gates record disjoint cards concurrently: no lock errors, nothing lost.
        a, b = gate(1, 150), gate(1001, 150)
        assert result(a) == "0" and result(b) == "0"
        # Other gate processes of the same station now refuse every one of those cards.
        assert result(gate(1, 150)) == "150"
        assert result(gate(1001, 150)) == "150"
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait()


_EDGE = st.integers(-3, 3)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(_EDGE, _EDGE, st.sampled_from(["a", "b"])), min_size=1, max_size=12),
    st.tuples(_EDGE, st.sampled_from(["a", "b"]), _EDGE),
)
def test_one_prune_rule_in_the_store_file_and_the_station_log(
    rides: list[tuple[int, int, str]], limits: tuple[int, str, int]
) -> None:
    # The store's SQL and the station log's replay forget exactly the rides ``forgets``
    # names, on every side of each limit.
    wall_before, boot, mono_before = limits
    expected = {card for card, (w, m, b) in enumerate(rides) if not forgets(w, m, b, limits)}
    db = sqlite3.connect(":memory:")
    db.execute(PASSBACK_TABLE)
    for card, (wall, mono, b) in enumerate(rides):
        db.execute(PASSBACK_UPSERT, ("P", card, wall, mono, b))
        db.execute(PASSBACK_UPSERT, ("Q", card, wall, mono, b))  # another place: kept
    db.execute(PASSBACK_PRUNE, ("P", wall_before, boot, mono_before))
    kept = {card for (card,) in db.execute("SELECT card_id FROM passback WHERE place = 'P'")}
    assert kept == expected
    assert db.execute("SELECT COUNT(*) FROM passback WHERE place = 'Q'").fetchone()[0] == len(rides)
    log = [(i + 1, "P", card, w, m, b) for i, (card, (w, m, b)) in enumerate(enumerate(rides))]
    log.append((len(log) + 1, "P", None, wall_before, mono_before, boot))
    assert set(replay_passback(log).get("P", {})) == expected
