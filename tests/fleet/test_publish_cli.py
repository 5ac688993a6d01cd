"""``farecore publish`` and ``keyring add-publisher``: one line and exit 2 for every bad input,
and nothing published."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from package_support import Publisher


def farecore(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farecore", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def pub(tmp_path: Path) -> Publisher:
    return Publisher.make(tmp_path)


def _args(pub: Publisher, table: Path, *extra: object) -> list[object]:
    return [
        "publish",
        "--out",
        pub.out,
        "--key",
        pub.publishing_key,
        "--keyring",
        pub.keyring,
        "--revocation",
        table,
        "--revocation-signer",
        pub.revocation_pub,
        *extra,
    ]


def test_publish_then_publish_again(pub: Publisher) -> None:
    done = farecore(*_args(pub, pub.table(1, [5])))
    assert done.returncode == 0, done.stderr
    assert "published version 1" in done.stdout and "revocation generation 1" in done.stdout
    done = farecore(*_args(pub, pub.table(2, [5, 6]), "--json"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == 2
    assert sorted(p.name for p in (pub.out / "history").iterdir()) == ["1.json", "2.json"]


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("version_not_above", "version 1 is not above version 1"),
        ("wrong_key_role", "role 'revocation', but role 'publishing' is needed"),
        ("wrong_signer", "signature does not verify"),
        ("missing_table", "No such file"),
        ("bad_fares", "fares"),
        ("bad_register", "register.csv"),
        ("foreign_issued", "not in the keyring"),
    ],
)
def test_every_bad_input_is_one_line_and_nothing_is_published(
    pub: Publisher, tmp_path: Path, case: str, says: str
) -> None:
    assert farecore(*_args(pub, pub.table(1, []))).returncode == 0
    before = (pub.out / "package.json").read_bytes()
    table = pub.table(2, [7])
    args = _args(pub, table)
    if case == "version_not_above":
        args += ["--version", "1"]
    elif case == "wrong_key_role":
        args[args.index(pub.publishing_key)] = pub.root / "revocation.key"
    elif case == "wrong_signer":
        other = Publisher.make(tmp_path / "other", seed="other")
        args[args.index(pub.revocation_pub)] = other.revocation_pub
    elif case == "missing_table":
        args[args.index(table)] = tmp_path / "nope.frt"
    elif case == "bad_fares":
        (tmp_path / "fares.toml").write_text("[operators.x]\nkind = 3\n")
        args += ["--fares", tmp_path / "fares.toml"]
    elif case == "bad_register":
        (tmp_path / "register.csv").write_text("terminal_id,operator\n1,x\n")
        args += ["--register", tmp_path / "register.csv"]
    elif case == "foreign_issued":
        from farecore.decide.issued import build_issued_list
        from sim.issuer import Issuer

        other = Issuer.from_seed("other-issuer", key_id=99)
        cred = other.card(1).credential
        build_issued_list([("1", cred)], other.key, 1, 1_790_000_000, tmp_path / "issued.fil")
        args += ["--issued", tmp_path / "issued.fil"]
    done = farecore(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert says in done.stderr, done.stderr
    assert (pub.out / "package.json").read_bytes() == before


def test_keyring_add_publisher_and_list(pub: Publisher, tmp_path: Path) -> None:
    ring = tmp_path / "ring.json"
    pub_file = pub.root / "publisher.pub"
    assert farecore("keyring", "add-publisher", "--keyring", ring, pub_file).returncode == 0
    listed = farecore("keyring", "list", "--keyring", ring)
    assert "publishing" in listed.stdout and "501" in listed.stdout
    again = farecore("keyring", "add-publisher", "--keyring", ring, pub_file)
    assert again.returncode == 2 and "already in the keyring" in again.stderr
    wrong = farecore("keyring", "add", "--keyring", ring, pub_file)
    assert wrong.returncode == 2 and "role 'issuer' is needed" in wrong.stderr
    assert farecore("keyring", "revoke", "--publisher", "--keyring", ring, "501").returncode == 0
    assert "revoked" in farecore("keyring", "list", "--keyring", ring).stdout


def test_a_package_the_gates_would_refuse_is_not_published(pub: Publisher) -> None:
    """A revocation generation below the published one, or the same generation with
    other contents: every gate would refuse it, so publish refuses it first."""
    first = pub.root / "first-5.frt"
    pub.table(5, [1]).rename(first)
    assert farecore(*_args(pub, first)).returncode == 0
    before = (pub.out / "package.json").read_bytes()
    lower = farecore(*_args(pub, pub.table(3, [1, 2])))
    assert lower.returncode == 2 and "below generation 5" in lower.stderr, lower.stderr
    other = pub.root / "other-5.frt"
    pub.table(5, [1, 2]).rename(other)
    same = farecore(*_args(pub, other))
    assert same.returncode == 2 and "with other contents" in same.stderr, same.stderr
    assert (pub.out / "package.json").read_bytes() == before
    # The same table again is fine (a new keyring, say).
    again = farecore(*_args(pub, first))
    assert again.returncode == 0, again.stderr
