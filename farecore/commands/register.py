"""``farecore register add|list``: the terminal register (terminals.csv)."""

from __future__ import annotations

import argparse
from typing import Any

from farecore.atomicfile import write_atomic
from farecore.card.keys import load_public_key_file
from farecore.commands._args import path
from farecore.errors import ConfigError
from farecore.gate.config import ROLES
from farecore.journal.records import ROLE_DIRECTION, Direction
from farecore.merchant.config import ALLIANCE
from farecore.settlement.terminals import TerminalInfo, format_terminals, parse_terminals

__all__ = ["register"]

_MAX_REGISTER_BYTES = 64 << 20


def register(sub: Any) -> None:
    reg = sub.add_parser(
        "register",
        help="the terminal register: each terminal's key, operator, line, place and role",
        description="Maintain terminals.csv, which the settlement, the collection point, "
        "fleet status and a gate's terminal.register read (docs/settlement.md).",
    )
    actions = reg.add_subparsers(dest="register_command", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help="register a terminal by its public key (.pub); the key id is its terminal id",
        description="Add a terminal to the register (created if absent), written atomically. "
        "Exit status: 0 when added; 2 when an argument is wrong, the key is not a terminal "
        "key, or the terminal is registered already (nothing is written).",
    )
    add.add_argument("--register", required=True, type=path, help="terminals.csv")
    add.add_argument("pub", type=path, help="the terminal's public key (.pub)")
    add.add_argument(
        "--operator", help=f"the operator (a till's is {ALLIANCE}, the default for one)"
    )
    add.add_argument("--line", required=True, help="line; a venue's site; a till's merchant")
    add.add_argument(
        "--place", required=True, help="station, stop or vehicle id; an entrance; a till id"
    )
    add.add_argument(
        "--role",
        required=True,
        choices=(*ROLES, "till"),
        help="a gate's role, or till: a merchant's till (docs/merchant.md)",
    )
    add.add_argument("--x-m", type=int, default=0, help="position on the operator's grid (m)")
    add.add_argument("--y-m", type=int, default=0, help="position on the operator's grid (m)")
    add.set_defaults(func=_add)
    show = actions.add_parser("list", help="print the register")
    show.add_argument("--register", required=True, type=path)
    show.set_defaults(func=_list)


def _read(where: Any) -> dict[int, TerminalInfo]:
    try:
        data = where.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    if len(data) > _MAX_REGISTER_BYTES:
        raise ConfigError(f"{where}: larger than {_MAX_REGISTER_BYTES} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8") from None
    return parse_terminals(text, str(where))


def _add(args: argparse.Namespace) -> int:
    till = args.role == "till"
    operator = args.operator if args.operator is not None else (ALLIANCE if till else None)
    if operator is None:
        raise ConfigError("--operator is required (for a gate)")
    if till and operator != ALLIANCE:
        raise ConfigError(f"a till's operator is {ALLIANCE}: its claim records name it")
    pub = load_public_key_file(args.pub, role="terminal")
    known = _read(args.register)
    if pub.key_id in known:
        raise ConfigError(f"terminal {pub.key_id} is already in {args.register}")
    try:
        info = TerminalInfo(
            pub.key_id,
            operator.strip(),
            args.line.strip(),
            args.place.strip(),
            Direction.CLAIM if till else ROLE_DIRECTION[args.role],
            pub.algorithm,
            pub.public_key,
            args.x_m,
            args.y_m,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    text = format_terminals([*known.values(), info])
    parse_terminals(text, str(args.register))  # what is written reads back
    write_atomic(args.register, text.encode())
    print(f"registered terminal {pub.key_id} ({operator}/{args.line}/{args.place}, {args.role})")
    return 0


def _list(args: argparse.Namespace) -> int:
    for t in sorted(_read(args.register).values(), key=lambda t: t.terminal_id):
        print(
            f"{t.terminal_id:>10}  {t.operator}/{t.line}/{t.place}  {t.direction.name.lower()}  "
            f"{t.algorithm.label}"
        )
    return 0
