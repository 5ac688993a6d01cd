"""``farecore card issue`` and ``farecore card new``: exit statuses, refusals that name
the line, nothing written on a bad file, and a round trip to a gate's validator."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from farecore.card.cardfile import load_card_file
from farecore.card.credential import parse_unverified
from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.enrolment import ENROLMENT_HEADER
from farecore.card.keys import IssuerKey, Keyring, load_private_key, new_key_pair
from farecore.card.proof import verify_credential
from farecore.cli import main
from farecore.decide.issued import IssuedList, read_credential_lines
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.tap import run_tap
from readers.virtual import FileCard, VirtualReaderFactory

NOW_MS = 1_796_083_200_000  # 2026-12-01, inside the rows' validity


def keys_in(tmp: Path) -> Keyring:
    new_key_pair("issuer", 7, tmp / "issuer", Algorithm.ED25519)
    public = load_private_key(tmp / "issuer.key").public()
    return Keyring([IssuerKey(public.key_id, public.algorithm, public.public_key)])


def enrolment(tmp: Path, rows: list[str], name: str = "enrolment.csv") -> Path:
    path = tmp / name
    path.write_text("\n".join([ENROLMENT_HEADER, *rows]) + "\n")
    return path


def row(card_id: int, key: PrivateKey, category: int = 1) -> str:
    alg = {Algorithm.ED25519: "ed25519", Algorithm.P256: "p256"}[key.algorithm]
    return (
        f"{card_id},{category},370200,2026-01-01T00:00:00Z,2031-01-01T00:00:00Z,"
        f"{alg},{key.public_bytes.hex()}"
    )


def run(tmp: Path, *args: str) -> int:
    old = os.getcwd()
    os.chdir(tmp)
    try:
        return main(list(args))
    finally:
        os.chdir(old)


def test_issue_signs_credentials_that_verify_and_build_a_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ring = keys_in(tmp_path)
    cards = [PrivateKey.generate(Algorithm.ED25519) for _ in range(3)]
    cards.append(PrivateKey.generate(Algorithm.P256))
    enrolment(tmp_path, [row(100 + i, k) for i, k in enumerate(cards)])
    status = run(
        tmp_path, "card", "issue", "--enrolment", "enrolment.csv", "--key", "issuer.key",
        "--out", "credentials.txt", "--list", "issued-1.fil", "--generation", "1",
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err
    creds = [raw for _, raw in read_credential_lines(tmp_path / "credentials.txt")]
    assert len(creds) == 4
    for i, (raw, key) in enumerate(zip(creds, cards, strict=True)):
        cred = parse_unverified(raw)
        assert cred.card_id == 100 + i
        assert verify_credential(cred, ring).raw == key.public_bytes
    listed = IssuedList.open(tmp_path / "issued-1.fil", ring)
    assert listed.count == 4 and listed.generation == 1
    # The same credentials through 'issued build' make a list of the same hashes.
    assert run(
        tmp_path, "issued", "build", "--credentials", "credentials.txt", "--key", "issuer.key",
        "--generation", "2", "--out", "issued-2.fil",
    ) == 0  # fmt: skip
    assert list(IssuedList.open(tmp_path / "issued-2.fil", ring).digests()) == list(
        listed.digests()
    )


def test_append_refuses_ids_and_keys_already_issued(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_in(tmp_path)
    a, b, c = (PrivateKey.generate(Algorithm.ED25519) for _ in range(3))
    enrolment(tmp_path, [row(1, a), row(2, b)])
    base = ["card", "issue", "--key", "issuer.key", "--out", "credentials.txt"]
    assert run(tmp_path, *base, "--enrolment", "enrolment.csv") == 0
    before = (tmp_path / "credentials.txt").read_bytes()
    # Without --append an existing credentials file is refused.
    enrolment(tmp_path, [row(3, c)], "more.csv")
    assert run(tmp_path, *base, "--enrolment", "more.csv") == 2
    assert "exists; pass --append" in capsys.readouterr().err
    enrolment(tmp_path, [row(3, c), row(2, PrivateKey.generate(Algorithm.ED25519))], "dup.csv")
    assert run(tmp_path, *base, "--enrolment", "dup.csv", "--append") == 2
    err = capsys.readouterr().err
    assert "dup.csv line 3: card id 2 was already issued (credentials.txt:2)" in err
    enrolment(tmp_path, [row(3, c), row(4, a)], "key.csv")
    assert run(tmp_path, *base, "--enrolment", "key.csv", "--append") == 2
    err = capsys.readouterr().err
    assert "key.csv line 3: public key" in err
    assert "is already signed for card 1 (credentials.txt:1)" in err
    assert (tmp_path / "credentials.txt").read_bytes() == before
    assert run(tmp_path, *base, "--enrolment", "more.csv", "--append") == 0
    assert len(list(read_credential_lines(tmp_path / "credentials.txt"))) == 3


def test_a_bad_file_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys_in(tmp_path)
    a, b = PrivateKey.generate(Algorithm.ED25519), PrivateKey.generate(Algorithm.ED25519)
    enrolment(tmp_path, [row(12, a), row(13, b), "14,1,370200,bad", row(12, b)])
    status = run(
        tmp_path, "card", "issue", "--enrolment", "enrolment.csv", "--key", "issuer.key",
        "--out", "credentials.txt", "--list", "issued-1.fil", "--generation", "1",
    )  # fmt: skip
    assert status == 2
    assert "enrolment.csv line 4: expected 7 fields, found 4" in capsys.readouterr().err
    enrolment(tmp_path, [row(12, a), row(13, b), row(12, PrivateKey.generate(Algorithm.P256))])
    status = run(
        tmp_path, "card", "issue", "--enrolment", "enrolment.csv", "--key", "issuer.key",
        "--out", "credentials.txt", "--list", "issued-1.fil", "--generation", "1",
    )  # fmt: skip
    assert status == 2
    assert "enrolment.csv line 4: card id 12 appears again (line 2)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "enrolment.csv",
        "issuer.key",
        "issuer.pub",
    ]


def test_a_terminal_key_cannot_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new_key_pair("terminal", 1, tmp_path / "t", Algorithm.ED25519)
    enrolment(tmp_path, [row(1, PrivateKey.generate(Algorithm.ED25519))])
    status = run(
        tmp_path, "card", "issue", "--enrolment", "enrolment.csv", "--key", "t.key",
        "--out", "c.txt",
    )  # fmt: skip
    assert status == 2 and "role 'issuer' is needed" in capsys.readouterr().err
    assert not (tmp_path / "c.txt").exists()


def test_card_new_makes_a_card_a_validator_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ring = keys_in(tmp_path)
    status = run(
        tmp_path, "card", "new", "--key", "issuer.key", "--id", "42", "--category", "1",
        "--region", "370200", "--valid-from", "2026-01-01T00:00:00Z", "--out", "alice.card",
        "--credentials", "credentials.txt", "--enrolment-row",
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0
    assert "valid 2026-01-01T00:00:00Z to 2031-01-01T00:00:00Z" in out
    assert out.splitlines()[-1].startswith("42,1,370200,2026-01-01T00:00:00Z,")
    path = tmp_path / "alice.card"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    card = load_card_file(path)
    assert card.card_id == 42 and card.counter == 0
    [(_, raw)] = read_credential_lines(tmp_path / "credentials.txt")
    assert raw == card.credential
    validator = Validator(TerminalPolicy(1001, frozenset({370200})), ring)
    channel = VirtualReaderFactory(str(path))
    channel.open()
    got = channel.wait_for_card(1)
    assert got is not None
    assert run_tap(got, validator, NOW_MS, bytes(16)).accepted
    assert channel.wait_for_removal(0)
    assert channel.wait_for_card(0) is None  # each named card taps once
    assert load_card_file(path).counter == 1  # saved before the card answered
    again = FileCard(path)
    from farecore.card.apdu import SELECT_RONGJUN, internal_authenticate

    again.process_apdu(SELECT_RONGJUN)
    assert again.process_apdu(internal_authenticate(bytes(32)))[:4] == (2).to_bytes(4, "big")
    # A second card with that id is refused, and the existing card file is never overwritten.
    for args in (
        ["--out", "other.card", "--credentials", "credentials.txt"],
        ["--out", "alice.card"],
    ):
        status = run(
            tmp_path, "card", "new", "--key", "issuer.key", "--id", "42", "--category", "1",
            "--region", "370200", *args,
        )  # fmt: skip
        assert status == 2
    err = capsys.readouterr().err
    assert "card 42: card id 42 was already issued (credentials.txt:1)" in err
    assert "alice.card already exists" in err
    assert not (tmp_path / "other.card").exists()


def test_a_card_file_others_can_read_or_that_does_not_match_is_refused(tmp_path: Path) -> None:
    from farecore.errors import ConfigError, MalformedFile

    keys_in(tmp_path)
    assert run(
        tmp_path, "card", "new", "--key", "issuer.key", "--id", "5", "--category", "2",
        "--region", "370200", "--out", "c.card",
    ) == 0  # fmt: skip
    path = tmp_path / "c.card"
    path.chmod(0o644)
    with pytest.raises(MalformedFile, match="readable by others"):
        load_card_file(path)
    path.chmod(0o600)
    text = path.read_text()
    path.write_text(text.replace('"card_id": 5', '"card_id": 6'))
    with pytest.raises(MalformedFile, match="not the credential's card id"):
        load_card_file(path)
    with pytest.raises(ConfigError, match="not the credential's card id"):
        VirtualReaderFactory(f"{path},{path}")


NEW = ["card", "new", "--key", "issuer.key", "--region", "370200", "--category", "1"]
ISSUE = ["card", "issue", "--key", "issuer.key", "--out", "creds.txt"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([*NEW, "--out", "a.card", "--id", "x"], "not a whole number"),
        ([*NEW, "--out", "a.card", "--id", "5", "--category", "9"], "category 9"),
        ([*NEW, "--out", "a.card", "--id", "5", "--valid-from", "2026-13-01T00:00:00Z"], "2026-13"),
        ([*NEW, "--out", "a.card", "--id", "5", "--alg", "rsa"], "rsa"),
        ([*NEW, "--out", "a.card", "--id", "0"], "card id 0"),
        ([*NEW[:3], "missing.key", *NEW[4:], "--out", "a.card", "--id", "5"], "missing.key"),
        ([*ISSUE, "--enrolment", "missing.csv"], "missing.csv"),
        ([*ISSUE, "--enrolment", "e.csv", "--list", "l.fil", "--generation", "-1"], "generation"),
        ([*ISSUE, "--enrolmnet", "e.csv"], "required: --enrolment"),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    keys_in(tmp_path)
    enrolment(tmp_path, [row(1, PrivateKey.generate(Algorithm.ED25519))], "e.csv")
    try:
        status = run(tmp_path, *args)
    except SystemExit as exc:  # argparse's own refusal
        status = exc.code  # type: ignore[assignment]
    assert status == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert says in err.strip().splitlines()[-1], err
    assert not (tmp_path / "a.card").exists() and not (tmp_path / "creds.txt").exists()
