"""A gate's marks name a view (a base and a delta) as strictly as they name a table.

The marks file keeps reading the files gates wrote before deltas existed; ``"delta"`` is
one more key of ``revocation``, checked like the others. Through the real wiring
(``build_gate`` over a virtual reader): a delta offered to a running gate is recorded
before it goes in force, and a restarted gate puts that same view back in force from
its store, and refuses an older table for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from farecore.card.keys import SigningKey, save_signing_key
from farecore.decide.revocation import RevocationTable, RevocationView, build_delta, build_table
from farecore.errors import ConfigError
from farecore.gate.config import load_gate_config
from farecore.gate.marks import FORMAT, GateMarks
from farecore.gate.wiring import build_gate
from readers.virtual import VirtualReader
from sim.issuer import Issuer, derive_key

TERMINAL = 77
SIGNER = SigningKey("revocation", 5, derive_key("marks-delta", "revocation"))


def _doc(revocation: Any) -> dict[str, Any]:
    return {"format": FORMAT, "terminal_id": TERMINAL, "revocation": revocation,
            "issued": {}, "time_ms": 12}  # fmt: skip


def test_marks_written_before_deltas_still_read(tmp_path: Path) -> None:
    path = tmp_path / "marks.json"
    path.write_text(json.dumps(_doc({"generation": 4, "copy": "k1-g4.frt"})))
    marks = GateMarks.load(path, TERMINAL)
    assert marks.revocation == (4, "k1-g4.frt") and marks.time_ms == 12
    marks.save()
    assert json.loads(path.read_text())["revocation"] == {"generation": 4, "copy": "k1-g4.frt"}


def test_a_view_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "marks.json"
    marks = GateMarks.load(path, TERMINAL)
    marks.revocation = (9, "base.frt", "delta.frd")
    marks.save()
    doc = json.loads(path.read_text())["revocation"]
    assert doc == {"generation": 9, "copy": "base.frt", "delta": "delta.frd"}
    assert GateMarks.load(path, TERMINAL).revocation == (9, "base.frt", "delta.frd")


@pytest.mark.parametrize(
    "revocation",
    [
        {"generation": 9, "copy": "base.frt", "delta": None},
        {"generation": 9, "copy": "base.frt", "delta": 7},
        {"generation": 9, "copy": "base.frt", "delta": ""},
        {"generation": 9, "copy": "base.frt", "delta": "../elsewhere.frd"},
        {"generation": 9, "copy": "base.frt", "delta": "x" * 256},
        {"generation": 9, "copy": "base.frt", "delta": "d.frd", "base": "b.frt"},
        {"generation": 9, "delta": "d.frd"},
        {"generation": -1, "copy": "base.frt", "delta": "d.frd"},
        {"generation": 9, "copy": "", "delta": "d.frd"},
    ],
)
def test_a_damaged_view_mark_is_refused(tmp_path: Path, revocation: Any) -> None:
    path = tmp_path / "marks.json"
    path.write_text(json.dumps(_doc(revocation)))
    with pytest.raises(ConfigError, match="damaged gate marks"):
        GateMarks.load(path, TERMINAL)


def _config(tmp: Path) -> Path:
    Issuer.from_seed("marks-delta").keyring().save(tmp / "keyring.json")
    _, pub = save_signing_key(SIGNER, tmp / "revocation")
    _base(tmp / "pub" / "base.frt", [10, 20, 30], 5)
    cfg = tmp / "gate.toml"
    cfg.write_text(
        f'[terminal]\nid = {TERMINAL}\noperator = "qd-metro"\nline = "M3"\nplace = "wusi"\n'
        'role = "metro_entry"\n[policy]\nregions = [370200]\n[keyring]\npath = "keyring.json"\n'
        '[journal]\npath = "journal.sqlite"\n'
        f'[revocation]\ntable = "pub/base.frt"\nsigner = "{pub.name}"\nmax_age_s = 315360000\n'
    )
    return cfg


def _base(path: Path, ids: list[int], generation: int) -> Path:
    path.parent.mkdir(exist_ok=True)
    n = len(ids)
    build_table(np.array(ids, dtype=np.uint64), np.full(n, 100), np.ones(n, dtype=np.uint8),
                SIGNER, generation, 1_790_000_000, path)  # fmt: skip
    return path


def _delta(base: Path, ids: list[int], generation: int, out: Path) -> Path:
    table = RevocationTable.open(base, SIGNER.public())
    n = len(ids)
    build_delta(table, np.array(ids, dtype=np.uint64), np.full(n, 100), np.ones(n, dtype=np.uint8),
                SIGNER, generation, 1_790_000_000, out)  # fmt: skip
    return out


def _revoked(wired: Any) -> list[int]:
    held = wired.revocation.snapshot()
    return [c for c in range(60) if held.lookup(c) is not None]


def test_a_wired_gate_records_the_view_and_restores_it(tmp_path: Path) -> None:
    cfg = load_gate_config(_config(tmp_path))
    base = tmp_path / "pub" / "base.frt"
    with build_gate(cfg, VirtualReader("m1"), revocation_poll_s=None) as wired:
        assert _revoked(wired) == [10, 20, 30]
        assert wired.revocation.offer(base, _delta(base, [10, 30, 40], 8, tmp_path / "d8.frd"))
        view = wired.revocation.snapshot()
        assert isinstance(view, RevocationView)
        mark = GateMarks.load(cfg.marks, TERMINAL).revocation
        assert mark == view.floor_mark() and mark is not None and len(mark) == 3
    (tmp_path / "d8.frd").unlink()  # the store's copy is what a restart uses
    with build_gate(cfg, VirtualReader("m2"), revocation_poll_s=None) as wired:
        assert wired.revocation.generation == 8 and _revoked(wired) == [10, 30, 40]
        assert wired.revocation.rejected == 0  # its own base at the path is no rollback
    _base(base, [10], 6)  # an older generation than the view handed to the gate
    with build_gate(cfg, VirtualReader("m3"), revocation_poll_s=None) as wired:
        assert wired.revocation.generation == 8 and _revoked(wired) == [10, 30, 40]
        assert "older than generation 8" in (wired.revocation.last_rejection or "")
    assert GateMarks.load(cfg.marks, TERMINAL).revocation == mark
