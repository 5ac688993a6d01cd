"""The card file loader: a good file round-trips, any other bytes are one MalformedFile
naming the file (hypothesis), and a P-256 or SM2 card made by ``card new`` taps too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farecore.card.cardfile import CardFile, load_card_file, save_card_file
from farecore.card.credential import CredentialFields, build_credential
from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import IssuerKey, Keyring
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.errors import MalformedFile
from farecore.gate.tap import run_tap
from readers.virtual import FileCard, VirtualReader

ISSUER = PrivateKey(Algorithm.ED25519, bytes([3]) * 32)
NOW_MS = 1_796_083_200_000


def make(alg: Algorithm = Algorithm.ED25519, card_id: int = 9) -> CardFile:
    key = PrivateKey.generate(alg)
    fields = CredentialFields(
        Algorithm.ED25519, 1, card_id, 2, 370200, 1_767_225_600, 1_924_992_000, alg,
        key.public_bytes,
    )  # fmt: skip
    return CardFile(key, build_credential(fields, ISSUER), 0)


def test_round_trip(tmp_path: Path) -> None:
    card = make()
    save_card_file(tmp_path / "c.card", card)
    back = load_card_file(tmp_path / "c.card")
    assert (back.key.secret, back.credential, back.counter) == (card.key.secret, card.credential, 0)
    assert back.to_bytes() == card.to_bytes()
    doc = json.loads((tmp_path / "c.card").read_text())
    assert sorted(doc) == ["algorithm", "card_id", "counter", "credential", "format", "secret"]


GOOD = make().to_bytes()


BAD = [
    GOOD.replace(b'"counter": 0', b'"counter": -1'),
    GOOD.replace(b'"counter": 0', b'"counter": 4294967296'),
    GOOD.replace(b'"counter": 0', b'"counter": true'),
    GOOD.replace(b'"counter": 0', b'"counter": 1e3'),
    GOOD.replace(b'"format"', b'"fromat"'),
    GOOD.replace(b'"Ed25519"', b'"RSA"'),
    GOOD.replace(b'"secret": "', b'"secret": "00'),
    GOOD[:-40],
    b"[" * 50 + b"]" * 50,
    GOOD.replace(b"{", b'{"extra": 1, ', 1),
    GOOD.replace(b'"counter": 0', b'"counter": ' + b"9" * 5000),
]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.one_of(st.binary(max_size=300), st.sampled_from(BAD)))
def test_a_bad_card_file_is_one_error_naming_it(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.card"
    path.write_bytes(data)
    path.chmod(0o600)
    with pytest.raises(MalformedFile) as err:
        load_card_file(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


@pytest.mark.parametrize("alg", [Algorithm.P256, Algorithm.SM2_SM3])
def test_every_card_algorithm_taps(tmp_path: Path, alg: Algorithm) -> None:
    if alg is Algorithm.SM2_SM3:
        pytest.importorskip("gmssl_pyx", reason="the sm extra (docs/crypto-sm2.md)")
    card = make(alg, card_id=11)
    save_card_file(tmp_path / "c.card", card)
    ring = Keyring([IssuerKey(1, Algorithm.ED25519, ISSUER.public_bytes)])
    reader = VirtualReader()
    decision = run_tap(
        reader.tap(FileCard(tmp_path / "c.card")),
        Validator(TerminalPolicy(1, frozenset({370200})), ring),
        NOW_MS,
        bytes(16),
    )
    assert decision.accepted, decision
    assert load_card_file(tmp_path / "c.card").counter == 1
