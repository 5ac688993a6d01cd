"""Gate batches in the merchant report's ``--batches``: a batch of a registered terminal
that is not a till is left alone once its key's signature over the whole file verifies,
without its records being read, and counted in ``files_not_till``. Nothing else is: a
till's batch relabelled as a gate's, a gate's batch with any byte changed or in another
UTC offset, and a batch of a terminal the register says is a till (whatever its records
claim to be) are judged exactly as before, by full verification. The batches are real:
taps of virtual cards at a gate's and a till's validator, journaled, exported and signed
with the terminals' keys."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from merchant_world import World, make_world

from farecore.card.keys import Keyring, load_private_key, load_public_key_file
from farecore.cli import main
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.errors import BadSignature, MalformedInput
from farecore.gate.tap import run_tap
from farecore.journal.batch import (
    BATCH_SIGNING_TAG,
    export_batch,
    peek_header,
    verify_batch,
    verify_batch_rows,
)
from farecore.journal.records import Direction, TapContext
from farecore.journal.terminal import Journal
from farecore.merchant.config import ALLIANCE
from farecore.merchant.findings import Finding
from farecore.merchant.report import Month, load_report_inputs, run_report
from farecore.merchant.report_batches import OpenedBatch, ReadRange, open_batch
from farecore.merchant.report_inputs import ReportInputs
from farecore.settlement.terminals import TerminalInfo, format_terminals
from readers.virtual import FileCard, VirtualReader

Q = dt.timezone(dt.timedelta(hours=8))
DEC_10 = dt.date(2026, 12, 10)
DEC_10_MS = int(dt.datetime(2026, 12, 10, 9, tzinfo=Q).timestamp() * 1000)
DAY_MS = 86_400_000
DETAIL = "amount_fen=10000 discount_fen=1000 percent=10"
TILL, TILL_2, METRO, BUS, STRANGER = 7101, 7102, 1701, 1702, 1799
METRO_AT = TapContext("qingdao-metro", "M3", "wusi-square", Direction.ENTRY)
BUS_AT = TapContext("qingdao-bus", "L1", "bus-88", Direction.BOARD)


class Alliance:
    """A world with two tills and two gates, their real batches of 10 and 11 December."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.root = world.root
        self.batches: dict[str, Path] = {}
        self.world.card("ann", 71)
        for tid in (TILL, TILL_2):
            world.till(tid, "jimo-tea", f"till-{tid}", discount="percent = 10")
        for tid in (METRO, BUS):
            assert main(["keys", "new", "--role", "terminal", "--id", str(tid), "--out",
                         str(self.key(tid).with_suffix(""))]) == 0  # fmt: skip
        self.register()
        self.journal(TILL, _claim_at(TILL), [DEC_10_MS, DEC_10_MS + 60_000], DETAIL)
        self.journal(TILL_2, METRO_AT, [DEC_10_MS + 120_000], "")  # a till saying it is a gate
        self.journal(METRO, METRO_AT, [DEC_10_MS + 1000 * k for k in range(5)], "")
        self.journal(BUS, BUS_AT, [DEC_10_MS + DAY_MS + 1000 * k for k in range(4)], "")
        for tid, day in [
            (TILL, DEC_10),
            (TILL_2, DEC_10),
            (METRO, DEC_10),
            (METRO, DEC_10 + dt.timedelta(days=1)),
            (BUS, DEC_10 + dt.timedelta(days=1)),
        ]:
            self.batches[f"{tid}-{day}"] = self.export(tid, day)

    def key(self, tid: int, suffix: str = ".key") -> Path:
        """A terminal's key file (a till's as ``World.till`` makes it)."""
        kind = "till" if tid in (TILL, TILL_2) else "gate"
        return self.root / "keys" / f"{kind}-{tid}{suffix}"

    def register(
        self,
        rows: dict[int, tuple[str, str, str, Direction]] | None = None,
        keys: dict[int, int] | None = None,
    ) -> Path:
        """tills 7101 and 7102, the metro gate 1701 and the bus 1702 (1799 unregistered);
        ``rows`` re-registers a terminal (operator, line, place, direction), ``keys``
        gives a terminal another one's key."""
        registered = {
            TILL: (ALLIANCE, "jimo-tea", f"till-{TILL}", Direction.CLAIM),
            TILL_2: (ALLIANCE, "jimo-tea", f"till-{TILL_2}", Direction.CLAIM),
            METRO: (METRO_AT.operator, METRO_AT.line, METRO_AT.place, METRO_AT.direction),
            BUS: (BUS_AT.operator, BUS_AT.line, BUS_AT.place, BUS_AT.direction),
        }
        given = {**registered, **(rows or {})}
        infos = []
        for tid, (operator, line, place, direction) in sorted(given.items()):
            pub = load_public_key_file(self.key((keys or {}).get(tid, tid), ".pub"))
            infos.append(
                TerminalInfo(
                    tid, operator, line, place, direction, pub.algorithm, pub.public_key, 0, 0
                )
            )
        out = self.root / "terminals.csv"
        out.write_text(format_terminals(infos))
        return out

    def journal(self, tid: int, ctx: TapContext, times: list[int], detail: str) -> None:
        """Real taps of card 71 at the terminal's validator, journaled as the terminal does."""
        validator = Validator(
            TerminalPolicy(tid, frozenset({370200})), Keyring.load(self.world.keyring)
        )
        with Journal.open(self.root / f"journal-{tid}.sqlite", tid) as journal:
            for at in times:
                channel = VirtualReader().tap(FileCard(self.root / "ann.card"))
                decision = run_tap(channel, validator, at, os.urandom(16))
                assert decision.accepted, decision
                journal.append(replace(decision, detail=detail), ctx)

    def export(self, tid: int, day: dt.date, utc_offset_min: int = 480) -> Path:
        key = load_private_key(self.key(tid))
        out = self.root / "exported" / f"{tid}-{day}-{utc_offset_min}.fcb"
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(export_batch(self.root / f"journal-{tid}.sqlite", day, key, utc_offset_min))
        return out

    def inputs(self) -> ReportInputs:
        return load_report_inputs(
            Month(2026, 12),
            self.root / "terminals.csv",
            self.world.keyring,
            rules=self.world.write_rules(self.root / "rules.csv"),
        )

    def report(
        self, tmp: Path, files: dict[str, bytes | Path]
    ) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
        """``farecore merchant report`` of December over a directory of ``files``."""
        batches = tmp / "batches"
        batches.mkdir(parents=True)
        for name, content in files.items():
            data = content if isinstance(content, bytes) else content.read_bytes()
            (batches / name).write_bytes(data)
        r, summary, findings = self.world.report(batches, tmp / "out", "2026-12")
        assert "Traceback" not in r.stderr, r.stderr
        return r.returncode, summary, findings


def _claim_at(tid: int) -> TapContext:
    return TapContext(ALLIANCE, "jimo-tea", f"till-{tid}", Direction.CLAIM)


@pytest.fixture(scope="module")
def alliance(tmp_path_factory: pytest.TempPathFactory) -> Alliance:
    return Alliance(make_world(tmp_path_factory.mktemp("gates")))


def _gates(a: Alliance) -> dict[str, Path]:
    return {f"{k}.fcb": v for k, v in a.batches.items() if not k.startswith("71")}


def _till(a: Alliance) -> dict[str, Path]:
    return {f"{TILL}-{DEC_10}.fcb": a.batches[f"{TILL}-{DEC_10}"]}


def _relabelled(data: bytes, old: int, new: int) -> bytes:
    """The batch with its header naming terminal ``new`` (same digit count: the header
    stays canonical and its length field right)."""
    assert len(str(old)) == len(str(new))
    got = data.replace(f'"terminal_id":{old},'.encode(), f'"terminal_id":{new},'.encode(), 1)
    assert got != data
    return got


def test_gate_batches_are_left_alone_and_counted(alliance: Alliance, tmp_path: Path) -> None:
    status, alone, findings = alliance.report(tmp_path / "alone", _till(alliance))
    assert status == 0 and findings == []
    status, mixed, findings = alliance.report(
        tmp_path / "mixed", {**_till(alliance), **_gates(alliance)}
    )
    assert status == 0 and findings == [], findings
    assert (
        mixed["merchants"]
        == alone["merchants"]
        == [
            {
                "merchant": "jimo-tea",
                "tills": 1,
                "claims": 2,
                "denied": 0,
                "verified": 2,
                "amount_fen": 20000,
                "discount_fen": 2000,
                "findings": 0,
            }
        ]
    )
    assert (mixed["stats"]["files_not_till"], mixed["stats"]["files_skipped"]) == (3, 3)
    assert (alone["stats"]["files_not_till"], alone["stats"]["files_skipped"]) == (0, 0)
    assert mixed["stats"]["batches"] == alone["stats"]["batches"] == 1
    assert mixed["inputs"]["batches_sha256"] == alone["inputs"]["batches_sha256"]


def test_a_gates_records_are_not_read(alliance: Alliance, tmp_path: Path) -> None:
    """The gate's own key signs a batch whose last record is garbage: full verification
    rejects it, the report leaves it alone unread (the gate's word is the settlement's
    to check). This is what the report no longer pays for."""
    data = alliance.batches[f"{METRO}-{DEC_10}"].read_bytes()
    content = data[: -2 - 64]
    content = content[:-1] + bytes([content[-1] ^ 0xFF])  # the last record's last byte
    key = load_private_key(alliance.key(METRO))
    signed = content + (64).to_bytes(2, "big") + key.sign(BATCH_SIGNING_TAG + content)
    with pytest.raises(MalformedInput):
        verify_batch_rows(signed, load_public_key_file(alliance.key(METRO, ".pub")).key())
    status, summary, findings = alliance.report(tmp_path, {**_till(alliance), "gate.fcb": signed})
    assert status == 0 and findings == [] and summary["stats"]["files_not_till"] == 1


def test_a_till_batch_relabelled_as_a_gates_is_rejected(alliance: Alliance, tmp_path: Path) -> None:
    """A till's batch whose header names the metro gate fails the gate key's signature,
    and is a finding, not a file left alone; so is it when the register gives the gate the
    till's own key (the header is signed too)."""
    data = _relabelled(alliance.batches[f"{TILL}-{DEC_10}"].read_bytes(), TILL, METRO)
    status, summary, findings = alliance.report(tmp_path / "a", {"x.fcb": data})
    assert status == 3
    assert findings == [
        {
            "kind": "batch_rejected",
            "terminal_id": METRO,
            "merchant": "M3",
            "file": "x.fcb",
            "batch_sha256": hashlib.sha256(data).hexdigest(),
            "detail": "batch signature does not verify with the terminal key",
        }
    ]
    assert summary["stats"]["files_not_till"] == 0 and summary["merchants"] == []
    alliance.register(keys={METRO: TILL})
    try:
        status, summary, findings = alliance.report(tmp_path / "b", {"x.fcb": data})
    finally:
        alliance.register()
    assert status == 3 and [f["kind"] for f in findings] == ["batch_rejected"]
    assert summary["stats"]["files_not_till"] == 0


def test_a_tills_batch_of_gate_records_is_read(alliance: Alliance, tmp_path: Path) -> None:
    """Till 7102 journals a record as if it were the metro gate: its register row is what
    counts, so its batch is read in full and the record is a context mismatch."""
    batch = {f"{TILL_2}-{DEC_10}.fcb": alliance.batches[f"{TILL_2}-{DEC_10}"]}
    status, summary, findings = alliance.report(tmp_path, batch)
    assert status == 3 and summary["stats"]["files_not_till"] == 0
    assert [(f["kind"], f["terminal_id"], f["seq"]) for f in findings] == [
        ("context_mismatch", TILL_2, 1)
    ]
    assert "qingdao-metro/M3/wusi-square/ENTRY" in findings[0]["detail"]


def test_a_gate_registered_as_a_till_is_read(alliance: Alliance, tmp_path: Path) -> None:
    """The metro gate's genuine batch, under a register that makes terminal 1701 a till:
    read in full, every record a context mismatch; never left alone as a gate's."""
    alliance.register({METRO: (ALLIANCE, "jimo-tea", "till-x", Direction.CLAIM)})
    try:
        batch = {"m.fcb": alliance.batches[f"{METRO}-{DEC_10}"]}
        status, summary, findings = alliance.report(tmp_path, batch)
    finally:
        alliance.register()
    assert status == 3 and summary["stats"]["files_not_till"] == 0
    assert [(f["kind"], f["seq"]) for f in findings] == [
        ("context_mismatch", s) for s in range(1, 6)
    ]


def test_a_gate_batch_in_another_utc_offset_is_rejected(alliance: Alliance, tmp_path: Path) -> None:
    other = alliance.export(METRO, DEC_10, utc_offset_min=0)
    status, summary, findings = alliance.report(tmp_path, {"utc.fcb": other})
    assert status == 3 and summary["stats"]["files_not_till"] == 0
    assert [(f["kind"], f["detail"]) for f in findings] == [
        ("batch_rejected", "service day in UTC+0 min, not the report's +480")
    ]


def test_the_outputs_do_not_depend_on_the_order_of_the_paths(alliance: Alliance) -> None:
    inputs = alliance.inputs()
    paths = [str(p) for p in alliance.batches.values()]
    reports = {repr(run_report(inputs, order)) for order in (paths, paths[::-1], sorted(paths))}
    assert len(reports) == 1


# -- every file the report is given, against full verification (the report before gates
# were left alone): the outcome is the same unless the file is a gate's, byte for byte.


def _full(data: bytes, inputs: ReportInputs) -> tuple[str, str]:
    """How the report judged a file when it verified every file in full: (kind, detail)
    of its finding, or ("not_till" | "till", "")."""
    claimed = peek_header(data)
    if claimed is None:
        try:
            verify_batch(data, None)
        except MalformedInput as exc:
            return "batch_rejected", str(exc)
        return "batch_rejected", "header names no terminal id"
    info = inputs.terminals.get(claimed[0])
    if info is None:
        return "unknown_terminal", "terminal not registered"
    try:
        rows = verify_batch_rows(data, info.key())
    except (MalformedInput, BadSignature) as exc:
        return "batch_rejected", str(exc)
    if rows.utc_offset_min != inputs.utc_offset_min:
        return (
            "batch_rejected",
            f"service day in UTC{rows.utc_offset_min:+d} min, not the report's +480",
        )
    return ("till" if info.direction == Direction.CLAIM else "not_till"), ""


def _now(data: bytes, inputs: ReportInputs) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.fcb"
        path.write_bytes(data)
        got = open_batch(str(path), inputs, ReadRange.of(inputs.month), set())
    if isinstance(got, Finding):
        return got.kind, got.detail
    if isinstance(got, OpenedBatch):
        return "till", ""
    return got, ""


@st.composite
def _mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with 1 to 4 edits: a byte changed, bytes inserted, a stretch deleted, the
    file cut short, or the header's terminal id replaced by another registered or
    unregistered one."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "relabel", "tail"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "tail" and len(data) > 66:  # the signature's length field and the signature
            at = len(data) - draw(st.integers(1, 66))
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "relabel":
            new = draw(st.sampled_from([TILL, TILL_2, METRO, BUS, STRANGER]))
            data = bytearray(
                re.sub(
                    rb'"terminal_id":[0-9]+,',
                    f'"terminal_id":{new},'.encode(),
                    bytes(data),
                    count=1,
                )
            )
    return bytes(data)


def _genuine(a: Alliance) -> list[bytes]:
    return [p.read_bytes() for p in a.batches.values()]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_file_is_judged_as_full_verification_judges_it(
    alliance: Alliance, data: st.DataObject
) -> None:
    inputs = alliance.inputs()
    base = data.draw(st.sampled_from(_genuine(alliance)))
    mutated = data.draw(_mutated(base))
    full = _full(mutated, inputs)
    assert _now(mutated, inputs) == full
    if full[0] == "not_till":
        assert mutated == base  # only the gate's own bytes are left alone unread


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    head=st.binary(max_size=200),
    tail=st.binary(max_size=80),
    tid=st.sampled_from([METRO, BUS, TILL]),
)
@example(head=b"", tail=b"", tid=METRO)
@example(head=b"", tail=bytes(64), tid=METRO)
@example(head=bytes(12), tail=bytes(64), tid=BUS)
def test_a_forged_header_and_tail_are_never_left_alone(
    alliance: Alliance, head: bytes, tail: bytes, tid: int
) -> None:
    """A file that starts as a genuine gate header naming a registered terminal, then
    anything: judged as full verification judges it (rejected), never left alone."""
    inputs = alliance.inputs()
    header = json.dumps(
        {
            "format": "farecore-batch/1",
            "terminal_id": tid,
            "day": "2026-12-10",
            "utc_offset_min": 480,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    data = (
        b"FCBATCH1"
        + len(header).to_bytes(4, "big")
        + header
        + head
        + (64).to_bytes(2, "big")
        + tail
    )
    assert _now(data, inputs) == _full(data, inputs)
    assert _now(data, inputs)[0] == "batch_rejected"
