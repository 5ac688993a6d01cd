"""The README's "Try it" section, run as written in a fresh directory: every command
succeeds and prints what the README shows (times, hashes and latencies aside)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Try it"
# What differs from run to run: times, hashes, durations.
_VARYING = [
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"), "<time>"),
    (re.compile(r"\b[0-9a-f]{32,}\b"), "<hex>"),
    (re.compile(r"\d+\.\d+ (ms|s)\b"), r"<n> \1"),
]


def _blocks() -> tuple[str, str]:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + 1)
    section = text[start:end]
    script = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    shown = re.search(r"```text\n(.*?)```", section, re.DOTALL)
    assert script and shown, "the Try it section has a sh block and a text block"
    return script.group(1), shown.group(1)


def _normal(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        for pattern, repl in _VARYING:
            line = pattern.sub(repl, line)
        lines.append(re.sub(r" +", " ", line.rstrip()))
    return lines


def test_readme_try_it_runs_as_shown(tmp_path: Path) -> None:
    script, shown = _blocks()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("FARECORE_LOG", None)
    r = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout
    assert _normal(r.stdout) == _normal(shown)
    taps = (tmp_path / "taps.jsonl").read_text().splitlines()
    assert len(taps) == 2
    assert '"card_id":42' in taps[0] and '"decision":"ACCEPT"' in taps[0]
    assert '"card_id":43' in taps[1] and '"reason":"REVOKED"' in taps[1]
