"""The issuer's signed list of its credentials: format, verification, builder, validator."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farecore.card.credential import parse_unverified
from farecore.card.keys import SigningKey, save_signing_key
from farecore.cli import main
from farecore.decide.issued import (
    IssuedList,
    IssuedListError,
    build_issued_list,
    encode_list,
    read_credential_lines,
)
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.errors import MalformedInput
from farecore.gate.tap import run_tap
from readers.virtual import VirtualReader
from sim.card import VirtualCard
from sim.issuer import QINGDAO, Issuer, derive_key

ISSUER = Issuer.from_seed("issued-list", key_id=7)
OTHER = Issuer.from_seed("issued-list-other", key_id=8)
KEYRING = ISSUER.keyring().add(OTHER.keyring_entry())
FORGER = SigningKey("issuer", 7, derive_key("issued-list", "forger"))
POLICY = TerminalPolicy(5, frozenset({QINGDAO}))
NOW_MS = 1_790_000_000_000


def _card(issuer: Issuer, card_id: int, signer: SigningKey | None = None) -> VirtualCard:
    key = derive_key("issued-list-card", str(card_id))
    raw = (
        issuer.credential(card_id, key, signer=signer)
        if signer
        else issuer.credential(card_id, key)
    )
    return VirtualCard(raw, key)


CARDS = [_card(ISSUER, 1000 + i) for i in range(20)]
LISTED = CARDS[:15]  # the last five were issued after the list
LIST_BYTES = build_issued_list(
    [(f"card {c.card_id}", c.credential) for c in LISTED], ISSUER.key, 3, 1_789_000_000
)


def _digest(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


def test_a_list_vouches_for_exactly_what_it_lists() -> None:
    lst = IssuedList.from_bytes(LIST_BYTES, KEYRING)
    assert (lst.key_id, lst.generation, lst.count, lst.created_at) == (7, 3, 15, 1_789_000_000)
    issuer_key = KEYRING.resolve(7, ISSUER.key.algorithm, 0)
    assert issuer_key is not None
    for card in CARDS:
        listed = card in LISTED
        assert (_digest(card.credential) in lst) is listed
        assert lst.vouches(parse_unverified(card.credential), issuer_key) is listed
    assert list(lst.digests()) == sorted(_digest(c.credential) for c in LISTED)


digests = st.binary(min_size=32, max_size=32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    listed=st.lists(digests, max_size=40),
    prefixes=st.lists(st.binary(min_size=8, max_size=8), min_size=1, max_size=3),
    tails=st.lists(st.binary(min_size=24, max_size=24), max_size=12),
    probes=st.lists(digests, max_size=10),
)
def test_membership_matches_a_set(
    listed: list[bytes], prefixes: list[bytes], tails: list[bytes], probes: list[bytes]
) -> None:
    # Hashes that share their first 8 bytes exercise the scan after the binary search.
    crowded = [p + t for p in prefixes for t in tails]
    lst = IssuedList.from_bytes(encode_list(listed + crowded, ISSUER.key, 1, 0), KEYRING)
    oracle = set(listed + crowded)
    assert lst.count == len(oracle)
    near = [p + bytes(24) for p in prefixes] + [t[:31] + bytes([t[31] ^ 1]) for t in crowded]
    for probe in [*oracle, *probes, *near]:
        assert (probe in lst) is (probe in oracle)
    assert b"short" not in lst


@settings(max_examples=80, deadline=None)
@given(position=st.integers(0, len(LIST_BYTES) - 1), flip=st.integers(1, 255))
def test_any_changed_byte_is_refused(position: int, flip: int) -> None:
    data = bytearray(LIST_BYTES)
    data[position] ^= flip
    with pytest.raises(IssuedListError):
        IssuedList.from_bytes(bytes(data), KEYRING)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "too short"),
        (LIST_BYTES[:-1], "truncated"),
        (LIST_BYTES + b"\0", "unexpected bytes"),
        (b"FCREVTBL" + LIST_BYTES[8:], "bad magic"),
    ],
    ids=["empty", "truncated", "extended", "revocation-table"],
)
def test_damaged_files_are_refused_by_name(data: bytes, words: str) -> None:
    with pytest.raises(IssuedListError, match=words):
        IssuedList.from_bytes(data, KEYRING)


def test_the_signer_must_be_a_usable_key_of_the_keyring() -> None:
    with pytest.raises(IssuedListError, match="not in the keyring"):
        IssuedList.from_bytes(LIST_BYTES, OTHER.keyring())
    with pytest.raises(IssuedListError, match="revoked"):
        IssuedList.from_bytes(LIST_BYTES, KEYRING.revoke(7))
    forged = encode_list([_digest(CARDS[0].credential)], FORGER, 3, 0)  # same id, wrong key
    with pytest.raises(IssuedListError, match="signature does not verify"):
        IssuedList.from_bytes(forged, KEYRING)
    retired = IssuedList.from_bytes(LIST_BYTES, KEYRING.retire(7, 1_700_000_000))
    assert retired.count == 15  # a retired key still vouches for its older credentials


def test_the_builder_lists_only_credentials_the_key_really_signed(tmp_path: Path) -> None:
    out = tmp_path / "issued.fil"
    forged = _card(ISSUER, 99, signer=FORGER).credential
    other = _card(OTHER, 98).credential
    cases = [
        ([("line 1", b"\x01\x02")], "line 1: credential is 2 bytes"),
        ([("line 2", forged)], "line 2: credential of card 99 is not signed by issuer key id 7"),
        ([("line 3", other)], "line 3: credential of card 98 names issuer key id 8"),
    ]
    for items, message in cases:
        good = [("line 0", CARDS[0].credential)]
        with pytest.raises(MalformedInput, match=message):
            build_issued_list(good + items, ISSUER.key, 1, 0, out)
        assert not out.exists()  # nothing written
    # Verified in two processes, chunk by chunk: the same bytes, and still the first bad
    # credential named (the later bad one is never reported).
    many = [(f"line {i}", c.credential) for i, c in enumerate(CARDS * 300)]
    assert build_issued_list(many, ISSUER.key, 1, 0, jobs=2) == build_issued_list(
        many, ISSUER.key, 1, 0
    )
    bad = [*many[:5000], ("line X", forged), *many[5000:], ("line Y", other)]
    with pytest.raises(MalformedInput, match="line X: credential of card 99"):
        build_issued_list(bad, ISSUER.key, 1, 0, out, jobs=2)
    assert not out.exists()
    twice = [("a", CARDS[0].credential), ("b", CARDS[0].credential)]
    assert IssuedList.from_bytes(build_issued_list(twice, ISSUER.key, 1, 0), KEYRING).count == 1
    with pytest.raises(MalformedInput, match="issuer key"):
        build_issued_list([], SigningKey("revocation", 7, ISSUER.key.private), 1, 0)


def _decide(card: VirtualCard, validator: Validator, counter: int) -> str:
    card.counter = counter
    nonce = counter.to_bytes(16, "big")
    return run_tap(VirtualReader().tap(card), validator, NOW_MS, nonce).label


def test_a_validator_with_the_list_decides_exactly_as_one_without() -> None:
    lst = IssuedList.from_bytes(LIST_BYTES, KEYRING)
    forged = _card(ISSUER, 99, signer=FORGER)
    clone = VirtualCard(CARDS[0].credential, derive_key("cloner", "x"))
    other = _card(OTHER, 98)
    cards = [*CARDS, forged, clone, other]
    plain, listed = Validator(POLICY, KEYRING), Validator(POLICY, KEYRING, issued=[lst])
    for counter in (1, 2):  # a first tap, then a repeat tap from the credential cache
        for card in cards:
            assert _decide(card, listed, counter) == _decide(card, plain, counter)
    assert _decide(forged, listed, 3) == "BAD_CREDENTIAL_SIGNATURE"
    assert _decide(clone, listed, 3) == "CARD_AUTH_FAILED"
    # Listed cards (the clone carries a listed credential) never had their issuer
    # signature checked; the late cards, the other key's card and every forged tap did.
    assert listed.issuer_vouched == len(LISTED)
    assert listed.issuer_checks == 5 + 1 + 3
    assert plain.issuer_checks == len(CARDS) + 1 + 2


def test_a_list_never_overrides_the_keyring() -> None:
    lst = IssuedList.from_bytes(LIST_BYTES, KEYRING)
    card = LISTED[0]
    revoked = Validator(POLICY, KEYRING.revoke(7), issued=[lst])
    assert _decide(card, revoked, 1) == "UNKNOWN_ISSUER_KEY"
    # A list whose signer is not the key the credential names vouches for nothing,
    # even when a (bad) credential's hash was put in it.
    bad = _card(OTHER, 97, signer=SigningKey("issuer", 8, FORGER.private))
    crafted = IssuedList.from_bytes(
        encode_list([_digest(bad.credential)], ISSUER.key, 1, 0), KEYRING
    )
    other_key = KEYRING.resolve(8, OTHER.key.algorithm, 0)
    assert other_key is not None and not crafted.vouches(
        parse_unverified(bad.credential), other_key
    )
    v = Validator(POLICY, KEYRING, issued=[crafted])
    assert _decide(bad, v, 1) == "BAD_CREDENTIAL_SIGNATURE" and v.issuer_vouched == 0
    # Two lists of one key: the later generation is the one in force.
    newer = IssuedList.from_bytes(
        build_issued_list([("c", CARDS[19].credential)], ISSUER.key, 4, 0), KEYRING
    )
    v = Validator(POLICY, KEYRING, issued=[newer, lst])
    assert v.issued[7] is newer


def test_command_line_build_info_and_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_signing_key(ISSUER.key, tmp_path / "issuer")
    KEYRING.save(tmp_path / "keyring.json")
    lines = "# issued 2026-03-01\n" + "".join(c.credential.hex() + "\n\n" for c in LISTED)
    (tmp_path / "creds.txt").write_text(lines)
    out = tmp_path / "issued.fil"
    args = ["--credentials", str(tmp_path / "creds.txt"), "--key", str(tmp_path / "issuer.key")]
    assert main(["issued", "build", *args, "--generation", "3", "--out", str(out)]) == 0
    assert "15 credentials" in capsys.readouterr().out
    assert main(["issued", "info", str(out), "--keyring", str(tmp_path / "keyring.json")]) == 0
    assert "verified" in capsys.readouterr().out
    keyring = ["--keyring", str(tmp_path / "keyring.json")]
    assert main(["issued", "check", str(out), *keyring, LISTED[0].credential.hex()]) == 0
    assert main(["issued", "check", str(out), *keyring, CARDS[19].credential.hex()]) == 1
    assert "NOT listed" in capsys.readouterr().out
    (tmp_path / "bad.txt").write_text(CARDS[0].credential.hex() + "\nzz\n")
    bad = ["--credentials", str(tmp_path / "bad.txt"), "--key", str(tmp_path / "issuer.key")]
    assert main(["issued", "build", *bad, "--generation", "4", "--out", str(out)]) == 2
    assert "bad.txt:2: not a credential in hex" in capsys.readouterr().err
    assert main(["issued", "info", str(out), *keyring]) == 0  # the old list is untouched
    out.write_bytes(out.read_bytes()[:-5])
    assert main(["issued", "info", str(out), *keyring]) == 2
    assert "truncated" in capsys.readouterr().err


def test_credential_lines_name_their_line(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(MalformedInput, match="not a text file"):
        list(read_credential_lines(path))
    with pytest.raises(MalformedInput, match="cannot read"):
        list(read_credential_lines(tmp_path / "missing.txt"))


def test_issued_build_refuses_to_roll_back(tmp_path: Path) -> None:
    import subprocess
    import sys

    from farecore.card.keys import save_signing_key
    from sim.issuer import Issuer, derive_key

    issuer = Issuer.from_seed("rollback")
    key, _ = save_signing_key(issuer.key, tmp_path / "issuer")
    cred = issuer.credential(1, derive_key("rollback", "card-1"))
    creds = tmp_path / "issued.txt"
    creds.write_text(cred.hex() + "\n")
    out = tmp_path / "issued.fil"

    def build(generation: int, *more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "farecore", "issued", "build", "--credentials", str(creds),
             "--key", str(key), "--out", str(out), "--generation", str(generation), *more],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert build(5).returncode == 0
    published = out.read_bytes()
    r = build(5)
    assert r.returncode == 2 and "holds generation 5" in r.stderr
    assert out.read_bytes() == published
    assert build(4, "--replace").returncode == 0


def test_a_list_verified_again_passes_every_check_again() -> None:
    """Loading the same bytes twice (each gate of a station does) skips the hashing, never
    a check that depends on the keyring: a revoked or replaced key still refuses them."""
    first = IssuedList.from_bytes(LIST_BYTES, KEYRING, "gate-1")
    again = IssuedList.from_bytes(LIST_BYTES, KEYRING, "gate-2")
    assert (again.path, list(again.digests())) == ("gate-2", list(first.digests()))
    assert again.describe() | {"path": "gate-1"} == first.describe()
    assert again._body is first._body  # the first one's verified body, not checked again
    with pytest.raises(IssuedListError, match="revoked"):
        IssuedList.from_bytes(LIST_BYTES, KEYRING.revoke(7))
    impostor = Issuer(FORGER).keyring()  # key id 7, but another key
    with pytest.raises(IssuedListError, match="signature does not verify"):
        IssuedList.from_bytes(LIST_BYTES, impostor)
    forged = encode_list([_digest(c.credential) for c in CARDS], FORGER, 3, 1_789_000_000)
    with pytest.raises(IssuedListError, match="signature does not verify"):
        IssuedList.from_bytes(forged, KEYRING)
    damaged = bytearray(LIST_BYTES)
    damaged[-1] ^= 1
    with pytest.raises(IssuedListError, match="body does not match"):
        IssuedList.from_bytes(bytes(damaged), KEYRING)
    assert _digest(CARDS[0].credential) in IssuedList.from_bytes(LIST_BYTES, KEYRING)
