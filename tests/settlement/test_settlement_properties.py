"""Properties: totals equal a simple independent recomputation; parsers never crash."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from settle_world import DAY, LAYOUT, World, random_day

from farecore.errors import MalformedFile
from farecore.journal.terminal import Direction, JournalReader
from farecore.settlement import find_batches, load_inputs, run_settlement
from farecore.settlement.fares import parse_fares
from farecore.settlement.terminals import parse_terminals

BUS = {("qd-bus", "1"): 200, ("qd-bus", "2"): 100}
STATION_M = {"A": 0, "B": 5000, "C": 12000, "D": 30000}


def _band(m: int) -> int:
    return 200 if m <= 6000 else 300 if m <= 16000 else 400


def recompute(world: World) -> dict[tuple[str, str], tuple[int, int]]:
    """Straight from the journals, with none of the settlement's code."""
    taps = []
    for tid in world.journals:
        with JournalReader(world.root / f"journal-{tid}.sqlite") as r:
            taps += [x for x in r.records() if x.decision == "ACCEPT"]
    taps.sort(key=lambda x: (x.time_ms, x.terminal_id, x.seq))
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    open_entry: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for x in taps:
        assert x.card_id is not None
        if x.direction == Direction.BOARD:
            out[(x.operator, x.line)][0] += 1
            out[(x.operator, x.line)][1] += BUS[(x.operator, x.line)]
        elif x.direction == Direction.ENTRY:
            open_entry[x.card_id].append((x.line, x.place))
        elif open_entry[x.card_id]:
            line, place = open_entry[x.card_id].pop()
            out[("qd-metro", line)][0] += 1
            out[("qd-metro", line)][1] += _band(abs(STATION_M[place] - STATION_M[x.place]))
        else:
            out[("qd-metro", x.line)][0] += 1
            out[("qd-metro", x.line)][1] += 200  # unpaired exit: min
    for entries in open_entry.values():
        for line, _ in entries:
            out[("qd-metro", line)][0] += 1
            out[("qd-metro", line)][1] += 400  # unpaired entry: max
    return {k: (v[0], v[1]) for k, v in out.items()}


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), n_cards=st.integers(3, 30))
def test_totals_equal_simple_recomputation(
    tmp_path_factory: pytest.TempPathFactory, seed: int, n_cards: int
) -> None:
    root = tmp_path_factory.mktemp("world")
    world = World(root)
    try:
        random_day(world, n_cards, 40, seed)
        world.export()
        inputs = load_inputs(
            DAY, root / "terminals.csv", root / "keyring.json", root / "fares.toml"
        )
        result = run_settlement(inputs, find_batches(world.batches), None)
        got = {(t.operator, t.line): (t.rides, t.amount_fen) for t in result.totals}
        assert got == recompute(world)
        assert {a.kind for a in result.anomalies} <= {"impossible_travel"}
    finally:
        world.close()


@given(st.text(max_size=300))
def test_fares_parser_never_crashes(text: str) -> None:
    try:
        parse_fares(text)
    except MalformedFile:
        pass


bands = st.lists(st.integers(1, 100_000), min_size=0, max_size=5, unique=True).map(sorted)


@given(
    limits=bands,
    fens=st.lists(st.integers(0, 10_000), min_size=6, max_size=6),
    frm=st.dates(dt.date(2020, 1, 1), dt.date(2030, 1, 1)),
    dist=st.integers(0, 200_000),
)
def test_fares_parse_and_band_lookup(
    limits: list[int], fens: list[int], frm: dt.date, dist: int
) -> None:
    band_toml = ", ".join(
        [f"{{up_to_m = {m}, fare_fen = {f}}}" for m, f in zip(limits, fens, strict=False)]
        + [f"{{fare_fen = {fens[5]}}}"]
    )
    text = (
        f'[[metro]]\noperator = "m"\neffective_from = "{frm}"\nbands = [{band_toml}]\n'
        "[metro.stations]\nX = 0\n"
    )
    table = parse_fares(text)
    m = table.metro_for("m", frm)
    assert m is not None and table.metro_for("m", frm - dt.timedelta(days=1)) is None
    expected = next((f for lim, f in zip(limits, fens, strict=False) if dist <= lim), fens[5])
    assert m.fare_for(dist) == expected


@pytest.mark.parametrize(
    "text",
    [
        '[[bus]]\noperator = "o"\nline = "1"\nfare_fen = 1.5\neffective_from = "2026-01-01"\n',
        '[[bus]]\noperator = "o"\nline = "1"\nfare_fen = -1\neffective_from = "2026-01-01"\n',
        '[[metro]]\noperator = "m"\neffective_from = "2026-01-01"\nbands = [{up_to_m = 5, '
        "fare_fen = 1}]\n",
        '[unpaired]\nentry = "most"\n',
        "[[bus]]\n",
    ],
)
def test_fares_errors_are_specific(text: str) -> None:
    with pytest.raises(MalformedFile, match="fares.toml"):
        parse_fares(text)


@given(st.text(max_size=400))
def test_terminals_parser_never_crashes(text: str) -> None:
    for body in (
        text,
        "terminal_id,operator,line,place,direction,algorithm,public_key,x_m,y_m\n" + text,
    ):
        try:
            parse_terminals(body)
        except MalformedFile:
            pass


def test_terminals_errors_name_the_line(tmp_path: Path) -> None:
    world = World(tmp_path)
    text = (tmp_path / "terminals.csv").read_text()
    assert set(parse_terminals(text)) == set(LAYOUT)
    broken = text.replace("BOARD", "SIDEWAYS", 1)
    with pytest.raises(MalformedFile, match=r"terminals.csv:2"):
        parse_terminals(broken)
    world.close()
