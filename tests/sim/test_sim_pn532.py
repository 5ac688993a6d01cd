"""``farecore sim --reader pn532``: a share of one gate's taps over an emulated PN532.

Each run is the real CLI in a subprocess; the worker that owns gate 0 starts a PN532
emulator on a real pty and the gate reads through the real serial PN532 reader. The
checks: no wrong decision, the money equals the ground truth, a pulled card crossing the
serial line is still UNREADABLE, the same seed gives the same bytes, and the journals
say the same as a run over the virtual reader.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sim_support import SMALL, TRANSPORT_SEED, SimRun, run_sim

from farecore.journal.terminal import JournalReader, JournalRecord
from sim.transport import Transport


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _records(run: SimRun) -> dict[int, list[JournalRecord]]:
    """Every terminal's chain, read from the station journals of the run."""
    out: dict[int, list[JournalRecord]] = {}
    for path in sorted((run.out / "work" / "journals").glob("station-*.sqlite")):
        for tid in JournalReader.terminals_in(path):
            with JournalReader(path, tid) as reader:
                out[tid] = list(reader.records())
    return out


def test_a_share_of_taps_goes_through_an_emulated_pn532(pn532_run: SimRun) -> None:
    r = pn532_run
    assert r.returncode == 0, r.stderr + r.stdout
    s = r.summary
    assert s["wrong_decisions"] == 0 and s["settlement_matches"] is True
    assert s["reimbursement_by_operator"] == s["expected_reimbursement_by_operator"]
    transport = s["engine"]["transport"]
    assert transport["reader"] == "pn532" and transport["taps"] == 20
    assert transport["wrong"] == 0
    # Denials crossed the line too: a card pulled mid-tap, and checks that need its data.
    decisions = transport["decisions"]
    assert decisions.get("UNREADABLE", 0) >= 1, decisions
    assert decisions.get("ACCEPT", 0) >= 1, decisions
    assert set(decisions) - {"ACCEPT", "UNREADABLE"}, decisions
    assert sum(decisions.values()) == 20
    # A 115200-baud serial line costs milliseconds a tap, unlike the in-process reader.
    assert transport["latency_p50_us"] > s["latency_us"]["p50"]
    assert "20 taps through pn532" in r.stdout
    assert "Traceback" not in r.stderr


def test_same_seed_over_pn532_gives_byte_identical_settlement(
    pn532_run: SimRun, pn532_run_again: SimRun
) -> None:
    assert pn532_run_again.returncode == 0, pn532_run_again.stderr
    a, b = pn532_run.out, pn532_run_again.out
    assert _digests(a / "settlement") == _digests(b / "settlement")
    assert _digests(a / "batches") == _digests(b / "batches")
    assert pn532_run.summary["confusion"] == pn532_run_again.summary["confusion"]


def test_pn532_journals_match_the_virtual_reader(
    pn532_run: SimRun, virtual_run_seed3: SimRun
) -> None:
    assert virtual_run_seed3.returncode == 0, virtual_run_seed3.stderr
    sp, sv = pn532_run.summary, virtual_run_seed3.summary
    assert sp["confusion"] == sv["confusion"]
    assert sp["reimbursement_by_operator"] == sv["reimbursement_by_operator"]
    got, want = _records(pn532_run), _records(virtual_run_seed3)
    assert got.keys() == want.keys() and len(got) == 8
    differ = 0
    for name, records in got.items():
        assert len(records) == len(want[name]), name
        for rp, rv in zip(records, want[name], strict=True):
            if rp.detail == rv.detail:
                assert rp.body == rv.body, (name, rp.seq)
                continue
            # Only the transport's own words for a card that left may differ: same step,
            # same error kind, same decision, and every other field the same.
            differ += 1
            assert rp.decision == rv.decision == "UNREADABLE", (name, rp.seq)
            assert rp.detail.split(":")[:2] == rv.detail.split(":")[:2] == ["read", " CardIOError"]
            for f in ("seq", "time_ms", "card_id", "challenge", "counter", "flags", "place"):
                assert getattr(rp, f) == getattr(rv, f), (name, rp.seq, f)
    assert 1 <= differ <= 20
    # Terminals other than gate 0's never saw the transport: their batches are identical.
    bp, bv = _digests(pn532_run.out / "batches"), _digests(virtual_run_seed3.out / "batches")
    same = [k for k in bp if bp[k] == bv[k]]
    assert len(same) == len(bp) - 1


def test_transport_taps_must_be_positive_with_pn532(tmp_path: Path) -> None:
    r = run_sim(
        tmp_path / "x",
        "--seed",
        TRANSPORT_SEED,
        *SMALL,
        "--reader",
        "pn532",
        "--transport-taps",
        "0",
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("farecore: error:") and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


def test_transport_plan_validates() -> None:
    Transport("pn532", 0, frozenset({1, 2}))
    with pytest.raises(ValueError, match="unknown transport"):
        Transport("usb", 0, frozenset())
    with pytest.raises(ValueError, match="vpcd port"):
        Transport("pcsc", 0, frozenset({1}))
    with pytest.raises(ValueError, match="gate"):
        Transport("pn532", -1, frozenset())
