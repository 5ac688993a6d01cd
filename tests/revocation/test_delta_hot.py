"""HotRevocation.offer: a base and its newest delta go in force off the tap path.

Real files, a real table store, real threads. The base in force is reused (the same
verified object, never verified again per delta); every bad or older offer is refused
with the view in force kept; a restarted gate gets the view its marks name back from
its store.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from farecore.card.keys import PublicKeyFile, SigningKey
from farecore.decide.revocation import (
    HotRevocation,
    RevocationInForce,
    RevocationTable,
    RevocationView,
    TableStore,
    build_delta,
    build_table,
)
from farecore.errors import TableChanged, TableRejected

BASE_IDS = [10, 20, 30, 40]


def write_base(path: Path, ids: list[int], generation: int, key: SigningKey) -> Path:
    n = len(ids)
    build_table(np.array(ids, dtype=np.uint64), np.full(n, 1000, dtype=np.int64),
                np.ones(n, dtype=np.uint8), key, generation, 1_790_000_000 + generation, path)  # fmt: skip
    return path


def write_delta(path: Path, base: Path, ids: list[int], generation: int, key: SigningKey) -> Path:
    """The delta from ``base`` to the current list ``ids`` (each revoked at 2000, stolen)."""
    table = RevocationTable.open(base, key.public())
    n = len(ids)
    build_delta(table, np.array(sorted(ids), dtype=np.uint64), np.full(n, 2000, dtype=np.int64),
                np.full(n, 2, dtype=np.uint8), key, generation, 1_790_000_000 + generation, path)  # fmt: skip
    return path


def revoked(held: RevocationInForce, probes: range = range(0, 80)) -> list[int]:
    return [p for p in probes if held.lookup(p) is not None]


class Gate:
    """A HotRevocation with a store and marks-like floor, as ``build_gate`` wires it."""

    def __init__(self, tmp: Path, signer: PublicKeyFile, published: Path) -> None:
        self.tmp, self.signer, self.published = tmp, signer, published
        self.store = TableStore(tmp / "state" / "tables")
        self.floor: Any = None
        self.adopted: list[RevocationInForce] = []

    def adopt(self, held: RevocationInForce) -> None:
        self.floor = held.floor_mark()
        self.adopted.append(held)

    def start(self) -> HotRevocation:
        return HotRevocation(self.published, self.signer, poll_interval_s=None,
                             store=self.store, floor=self.floor, on_adopt=self.adopt)  # fmt: skip


@pytest.fixture
def key(keys: dict[str, SigningKey]) -> SigningKey:
    return keys["signer"]


@pytest.fixture
def gate(tmp_path: Path, signer: PublicKeyFile, key: SigningKey) -> Gate:
    (tmp_path / "pub").mkdir()
    return Gate(tmp_path, signer, write_base(tmp_path / "pub" / "base5.frt", BASE_IDS, 5, key))


@pytest.fixture
def hot(gate: Gate) -> Iterator[HotRevocation]:
    with gate.start() as source:
        yield source


def test_a_delta_over_the_base_in_force_goes_in_without_verifying_the_base_again(
    gate: Gate, hot: HotRevocation, key: SigningKey
) -> None:
    first = hot.snapshot()
    assert isinstance(first, RevocationTable) and revoked(first) == BASE_IDS
    delta = write_delta(gate.tmp / "pub" / "d7.frd", gate.published, [10, 30, 40, 50], 7, key)
    assert hot.offer(gate.published, delta) is True
    view = hot.snapshot()
    assert isinstance(view, RevocationView) and view.generation == 7
    assert view.base is first  # the verified base in force, reused as it is
    assert revoked(view) == [10, 30, 40, 50] and revoked(first) == BASE_IDS
    entry = view.lookup(50)
    assert entry is not None and (entry.revoked_at, entry.reason) == (2000, 2)
    assert gate.adopted[-1] is view and gate.floor == view.floor_mark()
    assert gate.floor == (7, first.path.name, view.path.name)
    assert view.path.parent == gate.store.directory and view.source == delta
    assert stat.S_IMODE(os.stat(view.path).st_mode) == 0o444
    assert hot.offer(gate.published, delta) is False  # in force already: nothing to do
    assert (hot.swaps, hot.rejected, len(gate.adopted)) == (1, 0, 2)


def test_newer_deltas_replace_older_ones_and_older_ones_are_refused(
    gate: Gate, hot: HotRevocation, key: SigningKey
) -> None:
    pub = gate.tmp / "pub"
    d7 = write_delta(pub / "d7.frd", gate.published, [10, 50], 7, key)
    d8 = write_delta(pub / "d8.frd", gate.published, [10, 50, 60], 8, key)
    assert hot.offer(gate.published, d8) is True
    in_force = hot.snapshot()
    for older, says in ((d7, "generation 7 is not newer than generation 8"),
                        (None, "generation 5 is not newer than generation 8")):  # fmt: skip
        with pytest.raises(TableRejected, match=says):
            hot.offer(gate.published, older)
        assert hot.snapshot() is in_force
    assert hot.rejected == 2 and "rollback refused" in (hot.last_rejection or "")
    assert revoked(hot.snapshot()) == [10, 50, 60]
    copies = sorted(p.suffix for p in gate.store.directory.iterdir())
    assert copies == [".frd", ".frt"]  # d7 was never stored


def test_a_new_base_comes_with_its_delta_and_the_old_copies_go(
    gate: Gate, hot: HotRevocation, key: SigningKey
) -> None:
    pub = gate.tmp / "pub"
    assert hot.offer(gate.published, write_delta(pub / "d7.frd", gate.published, [10], 7, key))
    base9 = write_base(pub / "base9.frt", [10, 70], 9, key)
    assert hot.offer(base9, write_delta(pub / "d11.frd", base9, [70, 71], 11, key)) is True
    view = hot.snapshot()
    assert isinstance(view, RevocationView) and view.base.generation == 9
    assert revoked(view) == [70, 71]
    left = sorted(p.name for p in gate.store.directory.iterdir())
    assert left == sorted([view.base.path.name, view.path.name])  # base 5 and delta 7 pruned
    with pytest.raises(TableRejected, match="generation 9 is not newer than generation 11"):
        hot.offer(base9)  # the view's own base alone is older than the view


def test_a_base_alone_newer_than_the_view_goes_in(
    gate: Gate, hot: HotRevocation, key: SigningKey
) -> None:
    pub = gate.tmp / "pub"
    assert hot.offer(gate.published, write_delta(pub / "d7.frd", gate.published, [10], 7, key))
    assert hot.offer(write_base(pub / "base8.frt", [33], 8, key)) is True
    assert isinstance(hot.snapshot(), RevocationTable) and revoked(hot.snapshot()) == [33]
    assert gate.floor[0] == 8 and len(gate.floor) == 2


@pytest.mark.parametrize(
    "damage",
    ["tampered", "truncated", "other base", "wrong signer", "missing", "a directory"],
)
def test_a_bad_offer_is_refused_and_the_view_in_force_kept(
    gate: Gate, hot: HotRevocation, key: SigningKey, keys: dict[str, SigningKey], damage: str
) -> None:
    pub = gate.tmp / "pub"
    assert hot.offer(gate.published, write_delta(pub / "d7.frd", gate.published, [10, 50], 7, key))
    in_force, stored = hot.snapshot(), sorted(os.listdir(gate.store.directory))
    bad = pub / "d9.frd"
    if damage == "other base":
        other = write_base(pub / "other5.frt", [10, 20, 30, 40, 41], 5, key)
        write_delta(bad, other, [10, 50], 9, key)
    elif damage == "wrong signer":
        impostor = write_base(pub / "imp.frt", BASE_IDS, 5, keys["impostor"])
        write_delta(bad, impostor, [10, 50], 9, keys["impostor"])
    elif damage == "a directory":
        bad.mkdir()
    elif damage != "missing":
        data = bytearray(write_delta(bad, gate.published, [10, 50, 60], 9, key).read_bytes())
        if damage == "tampered":
            data[-1] ^= 0x04
        else:
            del data[-3:]
        bad.write_bytes(bytes(data))
    with pytest.raises(TableRejected):
        hot.offer(gate.published, bad)
    assert hot.snapshot() is in_force and revoked(in_force) == [10, 50]
    assert sorted(os.listdir(gate.store.directory)) == stored  # nothing unverified kept
    assert hot.rejected == 1 and len(gate.adopted) == 2


def test_what_happens_to_the_published_delta_afterwards_changes_nothing(
    gate: Gate, hot: HotRevocation, key: SigningKey
) -> None:
    delta = write_delta(gate.tmp / "pub" / "d7.frd", gate.published, [10, 50], 7, key)
    assert hot.offer(gate.published, delta)
    view = hot.snapshot()
    delta.write_bytes(b"\0" * delta.stat().st_size)  # in place
    assert revoked(view) == [10, 50] and revoked(hot.snapshot()) == [10, 50]
    delta.unlink()
    assert revoked(hot.snapshot()) == [10, 50]


def test_on_adopt_failing_leaves_the_table_in_force(gate: Gate, key: SigningKey) -> None:
    def refuse(held: RevocationInForce) -> None:
        if isinstance(held, RevocationView):
            raise OSError(28, "No space left on device")

    with HotRevocation(gate.published, gate.signer, poll_interval_s=None, store=gate.store,
                       on_adopt=refuse) as hot:  # fmt: skip
        first = hot.snapshot()
        delta = write_delta(gate.tmp / "pub" / "d7.frd", gate.published, [10], 7, key)
        with pytest.raises(TableChanged, match="cannot record generation 7"):
            hot.offer(gate.published, delta)
        assert hot.snapshot() is first


def test_offer_needs_a_store(gate: Gate) -> None:
    with (
        HotRevocation(gate.published, gate.signer, poll_interval_s=None) as hot,
        pytest.raises(ValueError, match="TableStore"),
    ):
        hot.offer(gate.published)


def test_a_restarted_gate_gets_its_view_back_from_the_store(
    gate: Gate, key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    pub = gate.tmp / "pub"
    with gate.start() as hot:
        hot.offer(gate.published, write_delta(pub / "d7.frd", gate.published, [10, 50], 7, key))
        floor = gate.floor
    # The published table is still the base: the view comes back quietly.
    with gate.start() as hot:
        assert hot.snapshot().floor_mark() == floor and hot.rejected == 0
        assert revoked(hot.snapshot()) == [10, 50]
        assert hot.offer(gate.published, pub / "d7.frd") is False
    # An older table at the published path is refused for the view.
    write_base(gate.published, [10], 4, key)
    with gate.start() as hot:
        assert revoked(hot.snapshot()) == [10, 50] and hot.rejected == 1
        assert "older than generation 7" in (hot.last_rejection or "")
    # A newer one goes past the floor.
    write_base(gate.published, [12], 8, key)
    with gate.start() as hot:
        assert revoked(hot.snapshot()) == [12] and gate.floor[0] == 8


def test_a_lost_delta_copy_falls_back_to_a_later_one_or_refuses_to_start(
    gate: Gate, key: SigningKey
) -> None:
    pub = gate.tmp / "pub"
    with gate.start() as hot:
        hot.offer(gate.published, write_delta(pub / "d7.frd", gate.published, [10, 50], 7, key))
    floor = gate.floor
    (gate.store.directory / floor[2]).unlink()
    with pytest.raises(TableRejected, match="no verified copy of generation 7"):
        gate.start()
    # Another gate sharing the store put a later view there: that one serves.
    other = Gate(gate.tmp, gate.signer, gate.published)
    with other.start() as hot:
        hot.offer(gate.published, write_delta(pub / "d9.frd", gate.published, [10, 60], 9, key))
    gate.floor = floor
    with gate.start() as hot:
        assert hot.generation == 9 and revoked(hot.snapshot()) == [10, 60]
    # A damaged delta copy is no copy.
    gate.floor = other.floor
    path = gate.store.directory / other.floor[2]
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(TableRejected, match="no verified copy of generation 9"):
        gate.start()


def test_the_watched_path_and_offers_agree(gate: Gate, hot: HotRevocation, key: SigningKey) -> None:
    pub = gate.tmp / "pub"
    hot.offer(gate.published, write_delta(pub / "d7.frd", gate.published, [10, 50], 7, key))
    view = hot.snapshot()
    assert hot.poll() is False and hot.snapshot() is view
    os.utime(gate.published, ns=(1, 1))  # the same base, touched: not newer, not refused
    assert hot.poll() is False and hot.snapshot() is view and hot.rejected == 0
    write_base(gate.published, [11], 6, key)  # older than the view: a rollback
    assert hot.poll() is False and hot.rejected == 1
    write_base(gate.published, [11], 8, key)
    assert hot.poll() is True and revoked(hot.snapshot()) == [11]


def test_taps_during_offers_always_see_one_whole_generation(
    gate: Gate, hot: HotRevocation, key: SigningKey
) -> None:
    # Each delta's current list is 100 + its generation and a fixed id, so a tap can
    # tell from its snapshot's generation exactly what every lookup must answer.
    pub = gate.tmp / "pub"
    deltas = [write_delta(pub / f"d{g}.frd", gate.published, [10, 100 + g], g, key)
              for g in range(6, 46)]  # fmt: skip
    stop = threading.Event()
    problems: list[str] = []
    seen: set[int] = set()

    def taps() -> None:
        while not stop.is_set():
            held = hot.snapshot()
            gen = held.generation
            want = BASE_IDS if gen == 5 else [10, 100 + gen]
            got = revoked(held, range(0, 150))
            seen.add(gen)
            if got != want:
                problems.append(f"generation {gen}: {got} != {want}")

    tapper = threading.Thread(target=taps)
    tapper.start()
    try:
        for delta in deltas:
            assert hot.offer(gate.published, delta) is True
    finally:
        stop.set()
        tapper.join()
    assert problems == [] and seen and hot.generation == 45
    assert hot.swaps == len(deltas)
