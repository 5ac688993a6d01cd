"""SM2-SM3 keys through every role and every signing caller, with no per-caller code.

``farecore keys new --alg sm2`` for each role; the key files and the keyring's "SM2-SM3"
entries load; and the credential, the proof of tap, the revocation table, the issued
list and the terminal's daily batch all sign and verify with SM2 as with the others.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gmssl_pyx", reason="the SM2 backend: pip install 'farecore[sm]'")

import sm2_reference as ref

from farecore.card.credential import CredentialFields, build_credential, parse_unverified
from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import (
    IssuerKey,
    Keyring,
    SigningKey,
    load_private_key,
    load_public_key_file,
)
from farecore.card.proof import ProofOfTap
from farecore.decide.issued import IssuedList, build_issued_list
from farecore.decide.revocation import RevocationTable, build_table
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.errors import BadSignature, MalformedFile, TableRejected
from farecore.gate.tap import run_tap
from farecore.journal.batch import export_batch, verify_batch
from farecore.journal.records import Direction, TapContext
from farecore.journal.terminal import Journal
from readers.virtual import VirtualReader
from sim.card import VirtualCard

SM2 = Algorithm.SM2_SM3
TERMINAL = 4242
NOW_MS = 1_772_416_800_000  # 2026-03-02 10:00 in Qingdao
DAY = dt.date(2026, 3, 2)


def farecore(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farecore", *args], cwd=cwd, capture_output=True, text=True
    )


@pytest.mark.parametrize("role", ["issuer", "terminal", "revocation"])
@pytest.mark.parametrize("spelling", ["--alg=sm2", "--algorithm=SM2-SM3"])
def test_keys_new_sm2_for_every_role(tmp_path: Path, role: str, spelling: str) -> None:
    r = farecore("keys", "new", "--role", role, "--id", "9", spelling, "--out", "k", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
    key = load_private_key(tmp_path / "k.key", role=role)
    pub = load_public_key_file(tmp_path / "k.pub", role=role)
    assert key.algorithm is pub.algorithm is SM2
    assert json.loads((tmp_path / "k.pub").read_text())["algorithm"] == "SM2-SM3"
    assert pub.public_key == ref.public_key(int.from_bytes(key.private.secret, "big"))
    pub.key().verify(key.sign(b"m"), b"m")


def test_keys_new_refuses_an_unknown_algorithm_in_one_line(tmp_path: Path) -> None:
    r = farecore(
        "keys", "new", "--role", "issuer", "--id", "1", "--alg", "sm9", "--out", "k", cwd=tmp_path
    )
    assert r.returncode == 2 and "expected ed25519, p256 or sm2" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "k.key").exists()


def test_an_sm2_private_key_out_of_range_is_a_key_file_error(tmp_path: Path) -> None:
    from farecore.errors import KeyFileError

    r = farecore(
        "keys", "new", "--role", "terminal", "--id", "1", "--alg", "sm2", "--out", "k", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "k.key").read_text())
    for bad in (0, ref.N - 1, ref.N):
        doc["secret"] = f"{bad:064x}"
        (tmp_path / "k.key").write_text(json.dumps(doc))
        os.chmod(tmp_path / "k.key", 0o600)
        with pytest.raises(KeyFileError, match="out of range"):
            load_private_key(tmp_path / "k.key")


def test_keyring_add_and_list_an_sm2_issuer(tmp_path: Path) -> None:
    assert (
        farecore(
            "keys",
            "new",
            "--role",
            "issuer",
            "--id",
            "7",
            "--alg",
            "sm2",
            "--out",
            "i",
            cwd=tmp_path,
        ).returncode
        == 0
    )
    r = farecore("keyring", "add", "--keyring", "ring.json", "i.pub", cwd=tmp_path)
    assert r.returncode == 0 and "(SM2-SM3)" in r.stdout, r.stderr
    listed = farecore("keyring", "list", "--keyring", "ring.json", "--json", cwd=tmp_path)
    assert json.loads(listed.stdout)[0]["algorithm"] == "SM2-SM3"
    ring = Keyring.load(tmp_path / "ring.json")
    assert ring.get(7) is not None and ring.get(7).algorithm is SM2  # type: ignore[union-attr]
    assert ring.resolve(7, 3, 0) is not None and ring.resolve(7, 1, 0) is None
    text = (tmp_path / "ring.json").read_text().replace("SM2-SM3", "SM2-SM9")
    (tmp_path / "ring.json").write_text(text)
    with pytest.raises(MalformedFile, match="unknown algorithm 'SM2-SM9'"):
        Keyring.load(tmp_path / "ring.json")


@pytest.fixture(scope="module")
def sm2_world() -> tuple[SigningKey, Keyring, bytes, PrivateKey]:
    issuer = SigningKey("issuer", 3, PrivateKey.generate(SM2))
    card_key = PrivateKey.generate(SM2)
    fields = CredentialFields(
        SM2, 3, 77, 1, 370200, 1_764_547_200, 1_922_313_600, SM2, card_key.public_bytes
    )
    credential = build_credential(fields, issuer.private)
    assert len(credential) == 157
    ring = Keyring([IssuerKey(3, SM2, issuer.private.public_bytes)])
    return issuer, ring, credential, card_key


def test_credential_tap_and_proof(sm2_world: tuple[SigningKey, Keyring, bytes, PrivateKey]) -> None:
    _, ring, credential, card_key = sm2_world
    validator = Validator(TerminalPolicy(TERMINAL, frozenset({370200})), ring)
    card = VirtualCard(credential, card_key)
    decision = run_tap(VirtualReader().tap(card), validator, NOW_MS, os.urandom(16))
    assert decision.label == "ACCEPT"
    assert decision.card_signature is not None and decision.counter is not None
    proof = ProofOfTap(credential, decision.challenge, decision.counter, decision.card_signature)
    assert proof.verify(ring).card_id == 77
    forged = ProofOfTap(credential, bytes(32), decision.counter, decision.card_signature)
    with pytest.raises(BadSignature):
        forged.verify(ring)


def test_revocation_table_signed_with_sm2(tmp_path: Path) -> None:
    signer = SigningKey("revocation", 5, PrivateKey.generate(SM2))
    build_table([9, 10], [1_790_000_000] * 2, [1, 2], signer, 1, 1_790_000_000, tmp_path / "t")
    table = RevocationTable.open(tmp_path / "t", signer.public())
    assert table.find(9) >= 0 and table.find(8) == -1
    other = SigningKey("revocation", 5, PrivateKey.generate(SM2)).public()
    with pytest.raises(TableRejected):
        RevocationTable.open(tmp_path / "t", other)


def test_issued_list_signed_with_sm2(
    sm2_world: tuple[SigningKey, Keyring, bytes, PrivateKey],
) -> None:
    issuer, ring, credential, _ = sm2_world
    listed = IssuedList.from_bytes(build_issued_list([("c", credential)], issuer, 1, 0), ring)
    cred = parse_unverified(credential)
    key = ring.resolve(3, 3, cred.fields.valid_from)
    assert key is not None and listed.vouches(cred, key)


def test_daily_batch_signed_with_sm2(
    tmp_path: Path, sm2_world: tuple[SigningKey, Keyring, bytes, PrivateKey]
) -> None:
    _, ring, credential, card_key = sm2_world
    terminal = SigningKey("terminal", TERMINAL, PrivateKey.generate(SM2))
    validator = Validator(TerminalPolicy(TERMINAL, frozenset({370200})), ring)
    card = VirtualCard(credential, card_key)
    ctx = TapContext("qd-metro", "M3", "wusi", Direction.ENTRY)
    with Journal.open(tmp_path / "j.sqlite", TERMINAL) as journal:
        for i in range(3):
            tap = run_tap(VirtualReader().tap(card), validator, NOW_MS + i * 60_000, os.urandom(16))
            journal.append(tap, ctx)
    data = export_batch(tmp_path / "j.sqlite", DAY, terminal)
    batch = verify_batch(data, terminal.public())
    assert (batch.terminal_id, batch.day) == (TERMINAL, DAY)
    with pytest.raises((BadSignature, MalformedFile)):
        verify_batch(data, SigningKey("terminal", TERMINAL, PrivateKey.generate(SM2)).public())
