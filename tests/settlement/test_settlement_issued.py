"""``farecore settle --issued``: the issuer's signed list vouches for the credentials on it.

A credential on the list needs no issuer signature check of its own, as at a gate; the
list changes what a night costs, never what it pays. A list that is not the issuer's,
or not whole, is refused before anything is written (exit 2, one line); a list whose
bytes change after the night's inputs were checked is not used by the units.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from settle_world import DAY, World, day_ms, forged_world, random_day, settle_cli

from farecore.card.keys import SigningKey
from farecore.decide.issued import build_issued_list, encode_list
from farecore.errors import SettlementError
from farecore.settlement import Ledger, find_batches, load_inputs, run_settlement
from farecore.settlement.inputs import SettlementInputs
from sim.issuer import Issuer, derive_key

FORGED = 77  # the card whose credential's issuer signature is broken


def _real_list(world: World, path: Path) -> Path:
    creds = [(f"card {c}", world.card(c).credential) for c in sorted(world.cards)]
    build_issued_list(creds, world.issuer.key, 1, 1_760_000_000, path)
    return path


def _inputs(world: World, lists: list[Path]) -> SettlementInputs:
    root = world.root
    return load_inputs(
        DAY, root / "terminals.csv", root / "keyring.json", root / "fares.toml",
        issued_lists=lists,
    )  # fmt: skip


def _list_of(key: SigningKey, credentials: list[bytes], path: Path, generation: int = 2) -> Path:
    path.write_bytes(
        encode_list([hashlib.sha256(c).digest() for c in credentials], key, generation, 1)
    )
    return path


def test_a_night_with_the_list_pays_what_it_pays_without(world: World, tmp_path: Path) -> None:
    random_day(world, n_cards=25, n_taps=60, seed=3)
    world.export()
    listed = _real_list(world, tmp_path / "issued-1.fil")
    plain = settle_cli(world, tmp_path / "plain")
    vouched = settle_cli(world, tmp_path / "vouched", "--issued", listed)
    assert plain.returncode == vouched.returncode == 0, plain.stderr + vouched.stderr
    for name in ("totals.csv", "rides.parquet", "anomalies.json", "corrections.csv"):
        a = (tmp_path / "plain" / "out" / name).read_bytes()
        assert a == (tmp_path / "vouched" / "out" / name).read_bytes(), name
    settings = json.loads((tmp_path / "vouched" / "out" / "manifest.json").read_text())
    digest = hashlib.sha256(listed.read_bytes()).hexdigest()
    assert settings["inputs"]["issued_list_key_1_sha256"] == digest
    plain_settings = json.loads((tmp_path / "plain" / "out" / "manifest.json").read_text())
    assert "issued_list_key_1_sha256" not in plain_settings["inputs"]


def test_a_listed_credential_is_vouched_for_and_an_unlisted_one_verified(
    world: World, tmp_path: Path
) -> None:
    """The list is what the night trusts: a credential on it is not verified again (so a
    forgery the issuer listed is paid, as a gate that trusts the list let it through),
    and without the list the same ride is a bad proof, not paid."""
    gate_list = tmp_path / "gate.fil"
    forged_world(world, FORGED, gate_list)
    world.tap(101, 5, day_ms(10))
    world.export()
    vouched = settle_cli(world, tmp_path / "vouched", "--issued", gate_list)
    assert vouched.returncode == 0, vouched.stderr
    plain = settle_cli(world, tmp_path / "plain")
    assert plain.returncode == 3, plain.stderr
    anomalies = json.loads((tmp_path / "plain" / "out" / "anomalies.json").read_text())
    [bad] = anomalies["anomalies"]
    assert (bad["kind"], bad["card_id"]) == ("bad_proof", FORGED)
    assert "credential" in bad["detail"]
    # A list by another issuer key vouches for nothing signed by key 1.
    other = Issuer.from_seed("another", key_id=1)
    _list_of(other.key, [world.cards[FORGED].credential], tmp_path / "other.fil")
    r = settle_cli(world, tmp_path / "other", "--issued", tmp_path / "other.fil")
    assert r.returncode == 2 and "signature does not verify" in r.stderr, r.stderr


def test_a_list_changed_after_the_inputs_were_checked_stops_the_night(
    world: World, tmp_path: Path
) -> None:
    """Every unit judges by the bytes the night's inputs verified (and the manifest
    names): a list swapped in afterwards, even one the issuer signed, or a FIFO put in its
    place, stops the night before anything is paid or written."""
    gate_list = tmp_path / "gate.fil"
    forged_world(world, FORGED, gate_list)
    world.export()
    path = _list_of(world.issuer.key, [world.issuer.card(5).credential], tmp_path / "i.fil")
    inputs = _inputs(world, [path])
    path.write_bytes(gate_list.read_bytes())  # the list that holds the forgery
    with pytest.raises(SettlementError, match="not the file the night checked"):
        run_settlement(inputs, find_batches(world.batches), None, ledger=Ledger.memory())
    path.unlink()
    os.mkfifo(path)  # a reader that blocked on it would hang the night
    with pytest.raises(SettlementError, match="not a regular file"):
        run_settlement(inputs, find_batches(world.batches), None, ledger=Ledger.memory())


def test_one_nights_list_is_not_trusted_on_another_night(world: World, tmp_path: Path) -> None:
    """A process that settles night after night (a Dask worker, an API caller) judges each
    night by its own lists only: what one night's list vouched for is not remembered."""
    gate_list = tmp_path / "gate.fil"
    forged_world(world, FORGED, gate_list)
    world.export()

    def night(lists: list[Path]) -> tuple[list[tuple[str, int]], int]:
        s = run_settlement(
            _inputs(world, lists), find_batches(world.batches), None, ledger=Ledger.memory()
        )
        return [(a.kind, a.card_id) for a in s.anomalies], int(s.stats["rides_paid"])

    assert night([gate_list]) == ([], 1)
    assert night([]) == ([("bad_proof", FORGED)], 0)
    assert night([gate_list]) == ([], 1)


def _bad_lists(world: World, tmp: Path) -> list[tuple[list[str | Path], str]]:
    real = _real_list(world, tmp / "real.fil")
    data = real.read_bytes()
    (tmp / "short.fil").write_bytes(data[:-1])
    (tmp / "junk.fil").write_bytes(b"not a list at all" * 20)
    flipped = bytearray(data)
    flipped[-1] ^= 0x80
    (tmp / "body.fil").write_bytes(bytes(flipped))
    stranger = SigningKey("issuer", 9, derive_key("x", "issuer-9"))
    _list_of(stranger, [], tmp / "key9.fil")
    _list_of(world.issuer.key, [], tmp / "again.fil", generation=7)
    (tmp / "dir.fil").mkdir()
    os.mkfifo(tmp / "fifo.fil")
    return [
        (["--issued", tmp / "fifo.fil"], "not a regular file"),
        (["--issued", tmp / "short.fil"], "truncated"),
        (["--issued", tmp / "junk.fil"], "not an issued-credentials list"),
        (["--issued", tmp / "body.fil"], "body does not match the signed SHA-256"),
        (["--issued", tmp / "key9.fil"], "issuer key id 9, not in the keyring"),
        (["--issued", real, "--issued", tmp / "again.fil"], "both for issuer key 1"),
        (["--issued", tmp / "dir.fil"], "is a directory"),
        (["--issued", tmp / "missing.fil"], "cannot read issued list"),
    ]


def test_a_bad_list_is_refused_in_one_line_and_nothing_is_written(
    world: World, tmp_path: Path
) -> None:
    random_day(world, n_cards=5, n_taps=8, seed=4)
    world.export()
    for n, (more, words) in enumerate(_bad_lists(world, tmp_path)):
        out = tmp_path / f"run{n}"
        r = settle_cli(world, out, *more)
        assert r.returncode == 2, (more, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (more, r.stderr)
        assert "Traceback" not in r.stderr
        assert not (out / "out").exists() and not (out / "ledger.sqlite").exists()


@pytest.mark.parametrize("cut", [0, 100, 255, 256, 300])
def test_a_cut_list_never_vouches(world: World, tmp_path: Path, cut: int) -> None:
    random_day(world, n_cards=4, n_taps=6, seed=5)
    world.export()
    real = _real_list(world, tmp_path / "real.fil")
    (tmp_path / "cut.fil").write_bytes(real.read_bytes()[:cut])
    r = settle_cli(world, tmp_path / "cut", "--issued", tmp_path / "cut.fil")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_settled_night_is_not_settled_again_with_other_lists(
    world: World, tmp_path: Path
) -> None:
    random_day(world, n_cards=5, n_taps=8, seed=6)
    world.export()
    listed = _real_list(world, tmp_path / "issued-1.fil")
    assert settle_cli(world, tmp_path / "run", "--issued", listed).returncode == 0
    (tmp_path / "run" / "out").rename(tmp_path / "first")
    again = settle_cli(world, tmp_path / "run")
    assert again.returncode == 2 and "issued lists" in again.stderr, again.stderr


def test_an_input_that_is_a_fifo_is_refused_not_waited_on(world: World, tmp_path: Path) -> None:
    random_day(world, n_cards=3, n_taps=4, seed=7)
    world.export()
    keyring = world.root / "keyring.json"
    keyring.rename(world.root / "keyring.real")
    os.mkfifo(keyring)
    r = settle_cli(world, tmp_path / "run")
    assert r.returncode == 2 and "keyring" in r.stderr and "not a regular file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
