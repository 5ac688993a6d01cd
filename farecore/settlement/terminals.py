"""The terminal register (terminals.csv): who each terminal is and the key it signs with.

Columns: ``terminal_id,operator,line,place,direction,algorithm,public_key,x_m,y_m``.
Positions are integer metres on the operator's map grid (for impossible-travel checks).
Public keys are inline hex, so the register is one self-contained file that every
settlement worker can read. This module must never guess: a malformed row is an error
naming its line.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from farecore.card.crypto import Algorithm, PublicKey, load_public_key
from farecore.errors import ConfigError, MalformedFile
from farecore.journal.terminal import Direction, TapContext

__all__ = [
    "COLUMNS",
    "TerminalInfo",
    "check_registered",
    "format_terminals",
    "parse_terminals",
]

COLUMNS = (
    "terminal_id",
    "operator",
    "line",
    "place",
    "direction",
    "algorithm",
    "public_key",
    "x_m",
    "y_m",
)


@dataclass(frozen=True, slots=True)
class TerminalInfo:
    """One registered terminal."""

    terminal_id: int
    operator: str
    line: str
    place: str
    direction: Direction
    algorithm: Algorithm
    public_key: bytes
    x_m: int
    y_m: int

    def __post_init__(self) -> None:
        if not 0 <= self.terminal_id < 1 << 64:
            raise ValueError("terminal id must be a uint64")
        if not (self.operator and self.line and self.place):
            raise ValueError("operator, line and place must not be empty")
        if len(self.public_key) != Algorithm(self.algorithm).public_key_length:
            raise ValueError("public key has the wrong length for its algorithm")

    def key(self) -> PublicKey:
        return load_public_key(self.algorithm, self.public_key)


def parse_terminals(text: str, source: str = "terminals.csv") -> dict[int, TerminalInfo]:
    """Parse the register; raise MalformedFile naming the line of the first problem."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise MalformedFile(f"{source}: empty file") from None
    except csv.Error as exc:
        raise MalformedFile(f"{source}: {exc}") from None
    if tuple(h.strip() for h in header) != COLUMNS:
        raise MalformedFile(f"{source}: header must be {','.join(COLUMNS)}")
    out: dict[int, TerminalInfo] = {}
    try:
        for row in reader:
            line_no = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(COLUMNS):
                raise MalformedFile(f"{source}:{line_no}: expected {len(COLUMNS)} columns")
            try:
                info = TerminalInfo(
                    terminal_id=int(row[0]),
                    operator=row[1].strip(),
                    line=row[2].strip(),
                    place=row[3].strip(),
                    direction=Direction[row[4].strip().upper()],
                    algorithm=Algorithm.from_label(row[5].strip()),
                    public_key=bytes.fromhex(row[6].strip()),
                    x_m=int(row[7]),
                    y_m=int(row[8]),
                )
                info.key()
            except (ValueError, KeyError) as exc:
                raise MalformedFile(f"{source}:{line_no}: {exc}") from None
            if info.terminal_id in out:
                raise MalformedFile(f"{source}:{line_no}: terminal {info.terminal_id} twice")
            out[info.terminal_id] = info
    except csv.Error as exc:
        raise MalformedFile(f"{source}: {exc}") from None
    return out


def format_terminals(infos: list[TerminalInfo]) -> str:
    """The CSV text of a register (used by tests, the benchmark and tooling)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for t in sorted(infos, key=lambda t: t.terminal_id):
        w.writerow(
            [
                t.terminal_id,
                t.operator,
                t.line,
                t.place,
                t.direction.name,
                t.algorithm.label,
                t.public_key.hex(),
                t.x_m,
                t.y_m,
            ]
        )
    return buf.getvalue()


def check_registered(
    register: Path,
    terminal_id: int,
    key: tuple[Algorithm, bytes],
    context: TapContext,
    lost: str,
) -> None:
    """A terminal's key (algorithm, public key) and context must be the ones ``register``
    holds for it (a gate's or a till's, at start): otherwise the settlement or the report
    would not count its records, which ``lost`` says. ConfigError naming the difference."""
    try:
        text = register.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"terminal.register {register}: cannot read: {exc}") from None
    info = parse_terminals(text, str(register)).get(terminal_id)
    if info is None:
        raise ConfigError(f"terminal {terminal_id} is not in the register {register}")
    if (info.algorithm, info.public_key) != key:
        raise ConfigError(
            f"terminal.key is not the key the register {register} holds for terminal {terminal_id}"
        )
    mine = (context.operator, context.line, context.place, context.direction)
    registered = (info.operator, info.line, info.place, info.direction)
    if mine != registered:
        raise ConfigError(
            f"terminal {terminal_id} is registered as {'/'.join(map(str, registered))} "
            f"in {register}, but configured as {'/'.join(map(str, mine))}: {lost}"
        )
