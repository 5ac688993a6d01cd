"""docs/fleet.md's "Try it", run as written in a fresh directory: the package reaches the
gate, the delta revokes Bob's card at the second run, and fleet status knows the gate."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "fleet.md"


def _script() -> str:
    text = DOC.read_text()
    start = text.index("## Try it")
    end = text.index("\n## ", start + 1)
    found = re.search(r"```sh\n(.*?)```", text[start:end], re.DOTALL)
    assert found, "the Try it section has a sh block"
    return found.group(1)


def test_the_fleet_walkthrough_runs_as_written(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("FARECORE_LOG", None)
    done = subprocess.run(
        ["bash", "-e", "-c", _script()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    first = [json.loads(x) for x in (tmp_path / "taps-1.jsonl").read_text().splitlines()]
    second = [json.loads(x) for x in (tmp_path / "taps-2.jsonl").read_text().splitlines()]
    assert [(t["card_id"], t["decision"]) for t in first] == [(42, "ACCEPT"), (43, "ACCEPT")]
    assert [(t["card_id"], t["reason"]) for t in second][1] == (43, "REVOKED")
    assert second[0]["decision"] == "ACCEPT" and second[1]["revocation_generation"] == 2
    assert "package version 2 in force" in done.stderr
    status = done.stdout.splitlines()
    assert re.match(r"1001\s+behind\s", status[-3]), status
    assert "reference package 2, revocation generation 2 (published)" in status[-2]
    assert status[-1] == "exit status 1"
    assert (tmp_path / "point" / "heads" / "1001" / "latest.json").is_file()
