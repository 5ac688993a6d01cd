"""A small alliance for the merchant tests, built with the real ``farecore`` commands:
issuer, revocation signer, keyring, card files, a revocation table, tills (their keys,
configurations and register rows), and helpers that run ``farecore verify``,
``farecore journal export`` and ``farecore merchant report`` as real processes."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from farecore.card.keys import Keyring, load_public_key_file
from farecore.cli import main
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.tap import run_tap
from farecore.journal.records import Direction, TapContext
from farecore.journal.terminal import Journal
from farecore.merchant.config import ALLIANCE
from farecore.settlement.terminals import TerminalInfo, format_terminals
from readers.virtual import FileCard, VirtualReader

QINGDAO = dt.timezone(dt.timedelta(hours=8))


def _ok(*args: str) -> None:
    assert main(list(args)) == 0, args


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("FARECORE_LOG", None)
    return e


def farecore(
    *args: str | Path, stdin: str = "", timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farecore", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        cwd=cwd,
    )


@dataclass
class World:
    root: Path
    tills: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> merchant, till
    # merchant -> the alliance's rule rows (percent,cap_fen,effective_from), as the last
    # till configured for it gives them; ``report`` writes them to merchants.csv
    rules: dict[str, str] = field(default_factory=dict)

    @property
    def keyring(self) -> Path:
        return self.root / "keyring.json"

    @property
    def signer(self) -> Path:
        return self.root / "keys" / "revocation.pub"

    def card(
        self,
        name: str,
        card_id: int,
        *,
        region: int = 370200,
        category: int = 1,
        valid_from: str = "2026-01-01T00:00:00Z",
        valid_until: str | None = None,
    ) -> Path:
        out = self.root / f"{name}.card"
        args = ["card", "new", "--key", str(self.root / "keys" / "issuer.key")]
        args += ["--id", str(card_id), "--category", str(category), "--region", str(region)]
        args += ["--valid-from", valid_from, "--out", str(out)]
        if valid_until is not None:
            args += ["--valid-until", valid_until]
        _ok(*args)
        return out

    def table(self, name: str, revoked: list[int], generation: int) -> Path:
        csv = self.root / f"{name}.csv"
        rows = "".join(f"{c},1767225600,lost\n" for c in revoked)
        csv.write_text("card_id,revoked_at,reason\n" + rows)
        out = self.root / f"{name}.frt"
        key = str(self.root / "keys" / "revocation.key")
        _ok("revocation", "build", "--in", str(csv), "--key", key, "--generation",
            str(generation), "--out", str(out))  # fmt: skip
        return out

    def till(
        self,
        terminal_id: int,
        merchant: str = "laoshan-books",
        till: str = "till-1",
        *,
        table: str = "revocation.frt",
        discount: str = "percent = 10\ncap_fen = 5000",
        register: bool = False,
        policy: str = "regions = [370200]",
    ) -> Path:
        """A till's key and configuration (``till-N.toml``), and its register row."""
        prefix = self.root / "keys" / f"till-{terminal_id}"
        if not prefix.with_suffix(".key").exists():
            _ok("keys", "new", "--role", "terminal", "--id", str(terminal_id), "--out",
                str(prefix))  # fmt: skip
        self.tills[terminal_id] = (merchant, till)
        percent = re.search(r"percent = ([0-9]+)", discount)
        cap = re.search(r"cap_fen = ([0-9]+)", discount)
        if percent is not None:
            self.rules[merchant] = f"{percent[1]},{cap[1] if cap else ''},2026-01-01"
        cfg = self.root / f"till-{terminal_id}.toml"
        cfg.write_text(
            f'[terminal]\nid = {terminal_id}\nkey = "keys/till-{terminal_id}.key"\n'
            f'merchant = "{merchant}"\ntill = "{till}"\n'
            + ('register = "terminals.csv"\n' if register else "")
            + f"\n[discount]\n{discount}\n\n[policy]\n{policy}\n\n"
            '[keyring]\npath = "keyring.json"\n\n'
            f'[revocation]\ntable = "{table}"\nsigner = "keys/revocation.pub"\n\n'
            f'[journal]\npath = "claims-{terminal_id}.sqlite"\n\n'
            f'[state]\ndir = "state-{terminal_id}"\n'
        )
        return cfg

    def register(self, rows: dict[int, tuple[str, str]] | None = None) -> Path:
        """The register naming every till (or ``rows``) with direction CLAIM."""
        infos = []
        for tid, (merchant, till) in sorted((rows or self.tills).items()):
            pub = load_public_key_file(self.root / "keys" / f"till-{tid}.pub")
            infos.append(
                TerminalInfo(
                    tid,
                    ALLIANCE,
                    merchant,
                    till,
                    Direction.CLAIM,
                    pub.algorithm,
                    pub.public_key,
                    0,
                    0,
                )
            )
        out = self.root / "terminals.csv"
        out.write_text(format_terminals(infos))
        return out

    def verify(
        self, terminal_id: int, cards: list[Path], amounts: list[str], *extra: str
    ) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
        merchant = self.tills[terminal_id][0]
        reader = "virtual:" + ",".join(str(c) for c in cards)
        r = farecore(
            "verify", "--config", self.root / f"till-{terminal_id}.toml", "--reader", reader,
            "--merchant", merchant, *extra, stdin="".join(a + "\n" for a in amounts),
        )  # fmt: skip
        return r, [json.loads(line) for line in r.stdout.splitlines()]

    def export(self, terminal_id: int, claims: list[dict[str, Any]], out: Path) -> list[Path]:
        """Each service day of the claims as a signed batch in ``out``."""
        out.mkdir(exist_ok=True)
        written = []
        for day in sorted({service_day(c["time_ms"]) for c in claims}):
            batch = out / f"{terminal_id}-{day}.fcb"
            r = farecore(
                "journal", "export", "--journal", self.root / f"claims-{terminal_id}.sqlite",
                "--day", day, "--key", self.root / "keys" / f"till-{terminal_id}.key",
                "--out", batch,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            written.append(batch)
        return written

    def report(
        self, batches: Path, out: Path, month: str, *extra: str | Path
    ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], list[dict[str, Any]]]:
        if "--merchants" not in extra:
            extra = ("--merchants", self.write_rules(out.parent / f"{out.name}-rules.csv"), *extra)
        r = farecore(
            "merchant", "report", "--month", month, "--batches", batches,
            "--register", self.root / "terminals.csv", "--keyring", self.keyring,
            "--out", out, *extra,
        )  # fmt: skip
        if r.returncode == 2:
            return r, {}, []
        summary = json.loads((out / "summary.json").read_text())
        findings = json.loads((out / "findings.json").read_text())["findings"]
        return r, summary, findings

    def write_rules(self, out: Path) -> Path:
        rows = "".join(f"{m},{r}\n" for m, r in sorted(self.rules.items()))
        out.write_text("merchant,percent,cap_fen,effective_from\n" + rows)
        return out


def service_day(time_ms: int) -> str:
    return dt.datetime.fromtimestamp(time_ms / 1000, QINGDAO).date().isoformat()


def month_of(time_ms: int) -> str:
    return service_day(time_ms)[:7]


def make_world(root: Path) -> World:
    """Keys, keyring and a generation-1 table that revokes card 43."""
    root.mkdir(parents=True, exist_ok=True)
    keys = root / "keys"
    _ok("keys", "new", "--role", "issuer", "--id", "1", "--out", str(keys / "issuer"))
    _ok("keys", "new", "--role", "revocation", "--id", "1", "--out", str(keys / "revocation"))
    _ok("keyring", "add", "--keyring", str(root / "keyring.json"), str(keys / "issuer.pub"))
    world = World(root)
    world.table("revocation", [43], 1)
    return world


def journal_claims(world: World, tid: int, claims: list[tuple[int, str, str]]) -> None:
    """Claims (time in ms, card name, detail), each a real tap at the till's validator,
    journaled by the till (one counter per tap, as the card signs)."""
    merchant, till = world.tills[tid]
    ctx = TapContext(ALLIANCE, merchant, till, Direction.CLAIM)
    validator = Validator(TerminalPolicy(tid, frozenset({370200})), Keyring.load(world.keyring))
    with Journal.open(world.root / f"claims-{tid}.sqlite", tid) as journal:
        for at_ms, card, detail in claims:
            channel = VirtualReader().tap(FileCard(world.root / f"{card}.card"))
            decision = run_tap(channel, validator, at_ms, os.urandom(16))
            assert decision.accepted, decision
            journal.append(replace(decision, detail=detail), ctx)


def export_claims(world: World, tid: int, day: str, out: Path, name: str | None = None) -> Path:
    """The till's signed batch of ``day`` from its claims journal, into ``out``."""
    out.mkdir(exist_ok=True)
    batch = out / (name or f"{tid}-{day}.fcb")
    r = farecore(
        "journal", "export", "--journal", world.root / f"claims-{tid}.sqlite", "--day", day,
        "--key", world.root / "keys" / f"till-{tid}.key", "--out", batch,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return batch
