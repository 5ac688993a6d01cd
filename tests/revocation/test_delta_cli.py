"""``farecore revocation delta``, and ``info``/``check`` of a delta, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from farecore.card.keys import SigningKey, save_signing_key
from farecore.cli import main
from farecore.decide.revocation import RevocationDelta, RevocationTable, RevocationView

BASE_ROWS = ["5,100,lost", "10,200,stolen", "20,300,fraud"]
CURRENT_ROWS = ["5,100,lost", "10,250,stolen", "30,300,other"]


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farecore", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)  # fmt: skip


def in_process(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse: --help, or a bad argument
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def csv_file(path: Path, rows: list[str]) -> Path:
    path.write_text("card_id,revoked_at,reason\n" + "".join(r + "\n" for r in rows))
    return path


@pytest.fixture
def world(tmp_path: Path, keys: dict[str, SigningKey]) -> dict[str, Path]:
    key, pub = save_signing_key(keys["signer"], tmp_path / "keys" / "revocation")
    base = tmp_path / "base.frt"
    built = run("revocation", "build", "--in", csv_file(tmp_path / "a.csv", BASE_ROWS),
                "--key", key, "--generation", "5", "--out", base)  # fmt: skip
    assert built.returncode == 0, built.stderr
    return {"key": key, "pub": pub, "base": base, "csv": csv_file(tmp_path / "b.csv", CURRENT_ROWS)}


def test_delta_info_check(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out" / "d6.frd"
    r = run("revocation", "delta", "--base", world["base"], "--csv", world["csv"],
            "--signer-key", world["key"], "--generation", "6", "--out", out,
            "--created-at", "1790000000")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "generation 6 over base generation 5, 1 added, 1 changed, 1 removed" in r.stdout
    signer = load_signer(world)
    view = RevocationView.over(
        RevocationTable.open(world["base"], signer), RevocationDelta.open(out, signer)
    )
    assert [c for c in range(40) if view.lookup(c) is not None] == [5, 10, 30]
    rc, text, _ = in_process(capsys, "revocation", "info", out, "--signer", world["pub"], "--json")
    facts = json.loads(text)
    assert rc == 0 and facts["kind"] == "delta" and facts["generation"] == 6
    assert (facts["added"], facts["removed"], facts["base_generation"]) == (2, 1, 5)
    rc, text, _ = in_process(capsys, "revocation", "info", out, "--signer", world["pub"],
                             "--base", world["base"], "--json")  # fmt: skip
    facts = json.loads(text)
    assert rc == 0 and facts["kind"] == "view" and facts["count"] == 3
    rc, text, _ = in_process(capsys, "revocation", "info", out, "--signer", world["pub"])
    assert rc == 0 and text.startswith(f"{out}: verified") and "base_generation" in text
    r = run("revocation", "check", out, "--signer", world["pub"], "--base", world["base"],
            "10", "20", "30")  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "10 REVOKED at 250" in r.stdout and "20 not revoked (generation 6)" in r.stdout
    assert "30 REVOKED at 300" in r.stdout and "reason other (6)" in r.stdout
    r = run("revocation", "check", out, "--signer", world["pub"], "--base", world["base"], "20")
    assert r.returncode == 0 and "not revoked" in r.stdout


def load_signer(world: dict[str, Path]):  # type: ignore[no-untyped-def]
    from farecore.card.keys import load_public_key_file

    return load_public_key_file(world["pub"], role="revocation")


@pytest.fixture
def delta6(world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "d6.frd"
    rc, _, err = in_process(capsys, "revocation", "delta", "--base", world["base"], "--in",
                            world["csv"], "--key", world["key"], "--generation", "6", "--out", out)  # fmt: skip
    assert rc == 0, err
    return out


def test_errors_are_one_line_and_exit_2(
    world: dict[str, Path],
    delta6: Path,
    tmp_path: Path,
    keys: dict[str, SigningKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    other_key, other_pub = save_signing_key(keys["other"], tmp_path / "keys" / "other")
    forged = tmp_path / "forged.frd"
    forged.write_bytes(delta6.read_bytes()[:-1] + bytes([delta6.read_bytes()[-1] ^ 1]))
    bad_csv = csv_file(tmp_path / "bad.csv", ["5,100,lost", "5,1,lost"])
    common = ["--base", world["base"], "--signer-key", world["key"]]
    cases = [
        (["check", delta6, "--signer", world["pub"], "5"], "is a delta: name its base table"),
        (["info", world["base"], "--signer", world["pub"], "--base", world["base"]],
         "--base is for a delta (.frd)"),
        (["info", forged, "--signer", world["pub"]], "body SHA-256 does not match"),
        (["info", delta6, "--signer", other_pub], "signed by key id 21"),
        (["delta", *common, "--csv", world["csv"], "--generation", "6", "--out", delta6],
         "holds generation 6"),
        (["delta", *common, "--csv", world["csv"], "--generation", "5", "--out", tmp_path / "x.frd"],
         "not above the base's generation 5"),
        (["delta", *common, "--csv", bad_csv, "--generation", "7", "--out", tmp_path / "x.frd"],
         "line 3: card id 5 already appears at line 2"),
        (["delta", "--base", delta6, "--signer-key", world["key"], "--csv", world["csv"],
          "--generation", "7", "--out", tmp_path / "x.frd"], "not a farecore revocation table"),
        (["delta", "--base", world["base"], "--signer-key", other_key, "--csv", world["csv"],
          "--generation", "7", "--out", tmp_path / "x.frd"], "signed by key id 21"),
        (["info", delta6, "--signer", world["pub"], "--base", tmp_path / "nope.frt"], "cannot open"),
    ]  # fmt: skip
    for args, says in cases:
        rc, _, err = in_process(capsys, "revocation", *args)
        assert rc == 2 and says in err, (args, err)
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.frd").exists()
    # A delta over another base of the same generation is refused by name.
    other_base = tmp_path / "other.frt"
    rc, _, _ = in_process(capsys, "revocation", "build", "--in", world["csv"], "--key",
                          world["key"], "--generation", "5", "--out", other_base)  # fmt: skip
    assert rc == 0
    rc, _, err = in_process(capsys, "revocation", "check", delta6, "--signer", world["pub"],
                            "--base", other_base, "5")  # fmt: skip
    assert rc == 2 and "names another base of generation 5" in err
    r = run("revocation", "delta", *common, "--csv", world["csv"], "--generation", "-1",
            "--out", tmp_path / "x.frd")  # fmt: skip
    assert (
        r.returncode == 2 and "generation must be 0.." in r.stderr and "Traceback" not in r.stderr
    )


def test_replace_says_it_is_meant(
    world: dict[str, Path], delta6: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["revocation", "delta", "--base", world["base"], "--csv", world["csv"],
            "--signer-key", world["key"], "--out", delta6]  # fmt: skip
    assert in_process(capsys, *args, "--generation", "6", "--replace")[0] == 0
    assert in_process(capsys, *args, "--generation", "7")[0] == 0
    delta6.write_bytes(b"not a delta")
    rc, _, err = in_process(capsys, *args, "--generation", "8")
    assert rc == 2 and "is not a revocation delta" in err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = in_process(capsys, "revocation", "delta", "--help")
    assert rc == 0 and "--signer-key" in out and "cumulative" in out
