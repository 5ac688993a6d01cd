"""The logging convention (farecore/logs.py) as the ``farecore`` command applies it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from farecore import cli, logs
from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import SigningKey, save_signing_key
from farecore.decide.revocation import build_table


def _one_line_record(verbose: bool, exc: BaseException | None = None) -> str:
    formatter = logs.LineFormatter("farecore gate", verbose=verbose)
    record = logging.LogRecord(
        "farecore.decide.revocation.hot", logging.WARNING, __file__, 1, "table %s", ("x",), None
    )
    if exc is not None:
        try:
            raise exc
        except type(exc):
            record.exc_info = sys.exc_info()
    return formatter.format(record)


def test_a_record_is_one_line_named_after_the_command() -> None:
    assert _one_line_record(False) == "farecore gate: table x"
    line = _one_line_record(False, OSError("disk full"))
    assert line == "farecore gate: table x: OSError: disk full"


def test_verbose_lines_name_level_and_logger_and_keep_the_traceback() -> None:
    text = _one_line_record(True, OSError("disk full"))
    first = text.splitlines()[0]
    assert first == "farecore gate: WARNING farecore.decide.revocation.hot: table x"
    assert "Traceback" in text and "OSError: disk full" in text


def test_level_from_flag_and_environment() -> None:
    assert logs.level_from(True, {}) == logging.DEBUG
    assert logs.level_from(False, {}) == logging.INFO
    assert logs.level_from(False, {"FARECORE_LOG": "Warning "}) == logging.WARNING
    assert logs.level_from(True, {"FARECORE_LOG": "error"}) == logging.DEBUG
    # a command's own default (set_defaults(log_level=...)) gives way to both
    assert logs.level_from(False, {}, default=logging.WARNING) == logging.WARNING
    assert logs.level_from(False, {"FARECORE_LOG": "info"}, logging.WARNING) == logging.INFO
    with pytest.raises(ValueError, match="FARECORE_LOG must be one of debug, info"):
        logs.level_from(False, {"FARECORE_LOG": "loud"})


def test_the_handler_is_removed_and_levels_restored(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = logging.getLogger("farecore").level
    log = logging.getLogger("farecore.test_logging")
    with logs.to_stderr("farecore x"):
        log.info("shown")
        log.debug("hidden")
        logging.getLogger("otherlib").info("not ours")
    log.warning("after")  # no handler of ours any more: not on this stderr as our line
    assert root.handlers == before and logging.getLogger("farecore").level == level
    err = capsys.readouterr().err
    assert "farecore x: shown\n" in err
    assert "hidden" not in err and "not ours" not in err and "farecore x: after" not in err


def test_in_process_error_line_and_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.json"
    assert cli.main(["keyring", "list", "--keyring", str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"farecore: error: {missing}: cannot read keyring: No such file or directory"
    ]


def _farecore(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farecore", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_a_bad_farecore_log_value_is_one_error_line() -> None:
    r = _farecore("keyring", "list", "--keyring", "x.json", env={"FARECORE_LOG": "loud"})
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "farecore: error: FARECORE_LOG must be one of debug, info, warning, error, not 'loud'"
    ]


def test_verbose_shows_debug_lines_of_the_command(tmp_path: Path) -> None:
    """``farecore -v revocation info`` shows the table module's debug line; without
    ``-v`` stderr stays empty and stdout carries only the result."""
    key = SigningKey("revocation", 1, PrivateKey(Algorithm.ED25519, bytes(range(32))))
    _, pub = save_signing_key(key, tmp_path / "signer")
    table = tmp_path / "t.frt"
    ids = np.array([5, 9], dtype=np.uint64)
    build_table(ids, np.zeros(2, np.int64), np.ones(2, np.uint8), key, 3, 1_700_000_000, table)
    quiet = _farecore("revocation", "info", str(table), "--signer", str(pub))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and "verified" in quiet.stdout
    loud = _farecore("-v", "revocation", "info", str(table), "--signer", str(pub))
    assert loud.returncode == 0, loud.stderr
    assert loud.stdout == quiet.stdout
    assert (
        "farecore revocation: DEBUG farecore.decide.revocation.table: "
        f"{table}: generation 3, 2 ids, verified and mapped in"
    ) in loud.stderr
