"""``farecore revocation build|info|check`` as a user runs them: real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farecore.card.keys import PublicKeyFile, SigningKey, save_signing_key
from farecore.cli import main
from farecore.decide.revocation import BuildError, RevocationTable, build_table, read_revocation_csv

U64 = 2**64 - 1


def in_process(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """The same command through ``farecore.cli.main``, for the many small error cases."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse --help
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def farecore(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farecore", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture
def keyfiles(tmp_path: Path, keys: dict[str, SigningKey]) -> tuple[Path, Path]:
    (tmp_path / "keys").mkdir()
    key, pub = save_signing_key(keys["signer"], tmp_path / "keys" / "revocation")
    return key, pub


def csv_file(path: Path, rows: list[str]) -> Path:
    path.write_text("card_id,revoked_at,reason\n" + "".join(r + "\n" for r in rows))
    return path


GOOD_ROWS = [f"{U64},1790000000,lost", "42,1790000001,2", "1,1790000002,fraud", "7,1,other"]


def test_build_info_check(
    tmp_path: Path, keyfiles: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key, pub = keyfiles
    src = csv_file(tmp_path / "revoked.csv", GOOD_ROWS)
    out = tmp_path / "table.frt"
    built = farecore(
        "revocation", "build", "--in", src, "--key", key, "--generation", "12",
        "--out", out, "--created-at", "1790000100",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "generation 12, 4 ids" in built.stdout
    rc, out_text, _ = in_process(capsys, "revocation", "info", out, "--signer", pub, "--json")
    assert rc == 0
    facts = json.loads(out_text)
    assert facts["generation"] == 12 and facts["count"] == 4
    assert facts["created_at"] == 1790000100 and facts["signer_key_id"] == 21
    assert len(facts["body_sha256"]) == 64
    hit = farecore("revocation", "check", out, "--signer", pub, "5", str(U64))
    assert hit.returncode == 1
    assert "5 not revoked" in hit.stdout and f"{U64} REVOKED at 1790000000" in hit.stdout
    assert "reason lost (1)" in hit.stdout
    rc, out_text, _ = in_process(capsys, "revocation", "check", out, "--signer", pub, "5", "6")
    assert rc == 0 and out_text.count("not revoked") == 2
    rc, _, err = in_process(capsys, "revocation", "check", out, "--signer", pub, str(U64 + 1))
    assert rc == 2 and "not a decimal uint64" in err


def test_gate_config_names_the_signer(
    tmp_path: Path, keyfiles: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key, _ = keyfiles
    out = tmp_path / "gate" / "table.frt"
    out.parent.mkdir()
    src = csv_file(tmp_path / "revoked.csv", GOOD_ROWS)
    rc, _, _ = in_process(
        capsys, "revocation", "build", "--in", src, "--key", key, "--generation", "3", "--out", out
    )
    assert rc == 0
    config = tmp_path / "gate" / "gate.toml"
    config.write_text('[revocation]\nsigner = "../keys/revocation.pub"\ntable = "table.frt"\n')
    # From another working directory: paths in the config are relative to the config.
    info = farecore("revocation", "info", "--config", config, cwd=Path("/"))
    assert info.returncode == 0, info.stderr
    assert "verified" in info.stdout
    rc, out_text, _ = in_process(capsys, "revocation", "check", out, "--config", config, "42")
    assert rc == 1 and "REVOKED" in out_text
    config.write_text("[gate]\n")
    rc, _, err = in_process(capsys, "revocation", "info", "--config", config)
    assert rc == 2 and "[revocation]" in err


def test_info_refuses_a_table_that_does_not_verify(
    tmp_path: Path,
    keyfiles: tuple[Path, Path],
    writer: Callable[..., Any],
    keys: dict[str, SigningKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, pub = keyfiles
    forged = tmp_path / "forged.frt"
    writer(forged, [1, 2, 3], 9, key=keys["impostor"])
    result = farecore("revocation", "info", forged, "--signer", pub)
    assert result.returncode == 2
    assert "signature does not verify" in result.stderr and "Traceback" not in result.stderr
    rc, _, err = in_process(capsys, "revocation", "check", forged, "--signer", pub, "1")
    assert rc == 2 and "signature does not verify" in err
    damaged = tmp_path / "damaged.frt"
    writer(damaged, [1, 2, 3], 9)
    damaged.write_bytes(damaged.read_bytes()[:-1])
    rc, _, err = in_process(capsys, "revocation", "info", damaged, "--signer", pub)
    assert rc == 2 and err.count("\n") == 1 and "truncated" in err


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["1,5,lost", "x,5,lost"], "line 3: card_id 'x'"),
        (["1,5,lost", f"{U64 + 1},5,lost"], "line 3: card_id"),
        (["1,5,lost", "2,-5,lost"], "line 3: revoked_at"),
        (["1,5,lost", "2,5,misplaced"], "line 3: unknown reason 'misplaced'"),
        (["1,5,lost", "2,5,99"], "line 3: unknown reason code 99"),
        (["1,5,lost", "2,5"], "line 3: expected 3 fields"),
        (["1,5,lost", "", "3,5,lost"], "line 3: empty line"),
        (["1,5,lost", "2,,lost"], "line 3: revoked_at is empty"),
        (["1,5,lost", "2,5,lost", "1,6,fraud"], "line 4: card id 1 already appears at line 2"),
        (["3,5,lost", "2,5,lost", "3,6,fraud", "2,1,other"], "line 4: card id 3 already appears"),
        (["1,5,lost", "0,5,lost"], "line 3: card id 0 is no card's id"),
    ],
)
def test_bad_row_stops_the_build_and_writes_nothing(
    tmp_path: Path,
    keyfiles: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    rows: list[str],
    message: str,
) -> None:
    key, _ = keyfiles
    src = csv_file(tmp_path / "revoked.csv", rows)
    out = tmp_path / "table.frt"
    out.write_bytes(b"previous table")
    rc, _, err = in_process(
        capsys, "revocation", "build", "--in", src, "--key", key, "--generation", "3",
        "--out", out, "--replace",
    )  # fmt: skip
    assert rc == 2
    assert message in err, err
    assert err.count("\n") == 1
    assert out.read_bytes() == b"previous table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys", "revoked.csv", "table.frt"]


def test_bad_header_is_refused(
    tmp_path: Path, keyfiles: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "revoked.csv"
    src.write_text("id,when,why\n1,2,lost\n")
    rc, _, err = in_process(
        capsys, "revocation", "build", "--in", src, "--key", keyfiles[0], "--generation", "1",
        "--out", tmp_path / "t.frt",
    )  # fmt: skip
    assert rc == 2 and "line 1: header must be" in err


def test_a_non_revocation_key_cannot_sign(tmp_path: Path, keys: dict[str, SigningKey]) -> None:
    issuer = SigningKey("issuer", 1, keys["signer"].private)
    with pytest.raises(Exception, match="revocation key"):
        build_table([1], [1], [1], issuer, 1, 1, tmp_path / "t.frt")
    assert not (tmp_path / "t.frt").exists()


def test_duplicate_policy_in_the_array_api(tmp_path: Path, keys: dict[str, SigningKey]) -> None:
    with pytest.raises(BuildError, match="row 3: card id 9 already appears at row 1"):
        build_table([4, 9, 5, 9], [1, 1, 1, 1], [1, 1, 1, 1], keys["signer"], 1, 1, tmp_path / "t")
    with pytest.raises(TypeError, match="integer"):
        build_table(np.array([1.0]), [1], [1], keys["signer"], 1, 1, tmp_path / "t")
    assert list(tmp_path.iterdir()) == []


rows = st.lists(
    st.tuples(
        st.one_of(st.sampled_from([1, 2**63, U64]), st.integers(1, U64)),
        st.integers(0, 2**63 - 1),
        st.sampled_from(
            ["lost", "stolen", "deceased", "eligibility_ended", "fraud", "other", "1", "6"]
        ),
    ),
    max_size=40,
    unique_by=lambda r: r[0],
)


@settings(max_examples=60, deadline=None)
@given(rows=rows)
def test_csv_round_trip_with_both_parsers(
    rows: list[tuple[int, int, str]], signer: PublicKeyFile, keys: dict[str, SigningKey]
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = csv_file(Path(tmp) / "r.csv", [f"{a},{b},{c}" for a, b, c in rows])
        fast = read_revocation_csv(src)
        slow = read_revocation_csv(src, use_pyarrow=False)
        for x, y in zip(fast, slow, strict=True):
            assert x.tolist() == y.tolist()
        build_table(*fast, keys["signer"], 1, 1, Path(tmp) / "t.frt")
        table = RevocationTable.open(Path(tmp) / "t.frt", signer)
        for card_id, revoked_at, _ in rows:
            entry = table.lookup(card_id)
            assert entry is not None and entry.revoked_at == revoked_at
        assert len(table) == len(rows)
        del table


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=200))
def test_csv_reader_never_crashes(body: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "r.csv"
        src.write_bytes(b"card_id,revoked_at,reason\n" + body)
        for use_pyarrow in (True, False):
            try:
                ids, times, reasons = read_revocation_csv(src, use_pyarrow=use_pyarrow)
            except BuildError as exc:
                assert "line " in str(exc)
            else:
                assert ids.dtype == np.uint64 and len(ids) == len(times) == len(reasons)


def test_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (("revocation", "--help"), ("revocation", "build", "--help"),
                 ("revocation", "info", "--help"), ("revocation", "check", "--help")):  # fmt: skip
        rc, out, _ = in_process(capsys, *args)
        assert rc == 0 and "usage:" in out


def test_no_silent_rollback_of_a_published_generation(
    tmp_path: Path, keyfiles: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key, _ = keyfiles
    src = csv_file(tmp_path / "r.csv", GOOD_ROWS)
    out = tmp_path / "t.frt"

    def build(generation: str, *more: str) -> tuple[int, str, str]:
        return in_process(
            capsys, "revocation", "build", "--in", src, "--key", key, "--out", out,
            "--generation", generation, "--created-at", "1790000000", *more,
        )  # fmt: skip

    assert build("42")[0] == 0
    published = out.read_bytes()
    for older in ("41", "42"):
        rc, _, err = build(older)
        assert rc == 2 and "holds generation 42" in err and "--replace" in err
        assert out.read_bytes() == published  # untouched
    assert build("41", "--replace")[0] == 0  # said explicitly: allowed
    assert build("43")[0] == 0
    out.write_bytes(b"something else entirely")
    rc, _, err = build("44")
    assert rc == 2 and "is not a revocation table" in err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["revocation", "build", "--generation", "-1"], "generation must be 0.."),
        (["revocation", "build", "--generation", str(2**64)], "generation must be 0.."),
        (["revocation", "build", "--generation", "1", "--created-at", "-1"], "created-at"),
        (["issued", "build", "--generation", "-1"], "generation must be 0.."),
        (["keys", "new", "--role", "issuer", "--id", "-1"], "key id must be 0.."),
        (["keys", "new", "--role", "issuer", "--id", str(2**32)], "key id must be 0.."),
        (["keyring", "retire", "--keyring", "k.json", "1", "--at", "-5"], "time must be 0.."),
    ],
)
def test_out_of_range_numbers_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], says: str
) -> None:
    need = {
        "revocation": ["--in", "x.csv", "--key", "x.key", "--out", "t.frt"],
        "issued": ["--credentials", "c.txt", "--key", "x.key", "--out", "l.fil"],
        "keys": ["--out", str(tmp_path / "k")],
        "keyring": [],
    }[args[0]]
    r = farecore(*args, *need, cwd=tmp_path)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr


def test_the_readme_example_runs_in_a_fresh_directory(tmp_path: Path) -> None:
    # The README's revocation example, word for word, where nothing exists yet.
    csv_file(tmp_path / "revoked.csv", GOOD_ROWS)
    steps = [
        ("keys", "new", "--role", "revocation", "--id", "1", "--out", "keys/revocation"),
        ("revocation", "build", "--in", "revoked.csv", "--key", "keys/revocation.key",
         "--generation", "42", "--out", "tables/today/revocation.frt"),
        ("revocation", "info", "tables/today/revocation.frt", "--signer", "keys/revocation.pub"),
    ]  # fmt: skip
    for step in steps:
        r = farecore(*step, cwd=tmp_path)
        assert r.returncode == 0, (step, r.stderr)
    # A read-only place for the output is one line, not a traceback.
    r = farecore(*steps[1][:-1], "/proc/revocation.frt", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "/proc" in r.stderr
