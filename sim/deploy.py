"""The files a real deployment of the simulated city has, written into the run directory.

Keys (issuer, revocation signer, one per terminal), the issuer keyring, the issuer's
signed list of the credentials it issued, both signed revocation tables with their CSV
sources, the fares file, the terminal register and one ``farecore gate`` configuration
per gate. Everything is derived from the seed, so two runs with one seed write the same
files. This module must never write outside the run
directory, and must never read a clock.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from farecore.card.keys import save_signing_key
from farecore.decide.checks import RevocationEntry
from farecore.decide.issued import build_issued_list
from farecore.decide.revocation import build_table
from farecore.journal.records import ROLE_DIRECTION
from farecore.settlement.terminals import TerminalInfo, format_terminals
from sim.issuer import QINGDAO
from sim.network import BUS_LINES, METRO_BANDS, OPERATORS
from sim.population import CARD_KINDS
from sim.venues import venue_fares_toml
from sim.world import World

__all__ = ["ISSUED_LIST", "issued_lists", "revocations_csv", "sign_table", "slug", "write_city"]

ISSUED_LIST = "issued-1.fil"  # issuer key 1's; with --crypto mix issuer key 2 has issued-2.fil
# Cards the Qingdao issuer did not issue: a forger's credentials, and another region's
# cards (signed by the simulated issuer, but a real Jinan card is not on Qingdao's list).
_NOT_LISTED = frozenset({"forged", "other_region"})


def issued_lists(world: World) -> list[str]:
    """The issued lists' file names, one per issuer key."""
    return [f"issued-{i.key.key_id}.fil" for i in world.issuers]


def slug(place: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in place)


def write_city(world: World, out: Path) -> None:
    """Keys, keyring, signed revocation tables, fares, terminal register, gate configs."""
    _write_keys_and_register(world, out)
    world.keyring().save(out / "keyring.json")
    _write_issued_list(world, out)
    _write_revocation(world, out / "revocation")
    (out / "fares.toml").write_text("\n".join(_fares(world)) + "\n")
    _write_gate_configs(world, out / "gates")


def _write_keys_and_register(world: World, out: Path) -> None:
    """The issuer's, the revocation signer's and each terminal's key; the register."""
    keys = out / "keys"
    keys.mkdir(parents=True)
    for issuer in world.issuers:
        save_signing_key(issuer.key, keys / f"issuer-{issuer.key.key_id}")
    save_signing_key(world.revocation_signer, keys / "revocation-1")
    terminals = []
    for g in world.gates:
        tkey = world.terminal_key(g.terminal_id)
        save_signing_key(tkey, keys / f"terminal-{g.terminal_id}")
        x = world.network.chainage_m(g.place) if g.role.startswith("metro") else 0
        terminals.append(
            TerminalInfo(
                g.terminal_id,
                g.operator,
                g.line,
                g.place,
                ROLE_DIRECTION[g.role],
                tkey.algorithm,
                tkey.private.public_bytes,
                x,
                0,
            )
        )
    (out / "terminals.csv").write_text(format_terminals(terminals))


def _write_revocation(world: World, rev: Path) -> None:
    """Both generations' signed tables and their CSV sources."""
    rev.mkdir()
    clock = world.clock
    for gen, entries, at_ms in (
        (1, world.revoked_gen1, clock.revocation_gen1_ms),
        (2, world.revoked_gen2, clock.revocation_gen2_ms),
    ):
        (rev / f"revoked-gen{gen}.csv").write_text(revocations_csv(entries))
        sign_table(world, entries, gen, at_ms, rev / f"gen{gen}.frt")


def revocations_csv(entries: Sequence[RevocationEntry]) -> str:
    """The revocation CSV (``revocation build``'s input) of ``entries``."""
    rows = [f"{e.card_id},{e.revoked_at},{e.reason}" for e in entries]
    return "\n".join(["card_id,revoked_at,reason", *rows]) + "\n"


def sign_table(
    world: World, entries: Sequence[RevocationEntry], generation: int, at_ms: int, path: Path
) -> None:
    """The signed revocation table of ``entries``, generation ``generation``, made at
    ``at_ms``, written to ``path``."""
    build_table(
        np.array([e.card_id for e in entries], dtype=np.uint64),
        np.array([e.revoked_at for e in entries], dtype=np.int64),
        np.array([e.reason for e in entries], dtype=np.uint8),
        world.revocation_signer,
        generation,
        at_ms // 1000,
        path,
    )


def _fares(world: World) -> list[str]:
    """The lines of fares.toml: each operator's regions and passback window, the bus
    lines' flat fares and the metro's distance bands."""
    clock = world.clock
    fares = [
        "# Fares the city reimburses per free ride, in fen; distances in metres.",
        "# Written by farecore sim from its network (see docs/simulator.md).",
        "[unpaired]",
        'entry = "min"',
        'exit = "min"',
        "",
    ]
    for op in OPERATORS:
        role = "metro_entry" if op.id == OPERATORS[0].id else "bus"
        window = clock.passback_metro_s if role == "metro_entry" else clock.passback_bus_s
        fares += [
            "[[operator]]",
            f'id = "{op.id}"',
            f"regions = [{QINGDAO}]",
            f"passback_s = {{{role} = {window}}}",
            "",
        ]
    day0 = "2026-01-01"
    for b in BUS_LINES:
        fares += [
            "[[bus]]",
            f'operator = "{b.operator}"',
            f'line = "{b.id}"',
            f"fare_fen = {b.fare_fen}",
            f'effective_from = "{day0}"',
            "",
        ]
    bands = ", ".join(
        f"{{fare_fen = {fen}}}" if up is None else f"{{up_to_m = {up}, fare_fen = {fen}}}"
        for up, fen in METRO_BANDS
    )
    fares += [
        "[[metro]]",
        f'operator = "{OPERATORS[0].id}"',
        f'effective_from = "{day0}"',
        f"bands = [{bands}]",
        "[metro.stations]",
    ]
    fares += [f'"{st}" = {world.network.chainage_m(st)}' for st in world.network.stations]
    if any(g.role == "venue" for g in world.gates):
        fares += ["", venue_fares_toml(world.clock.day.year, (QINGDAO,))]
    return fares


def _write_gate_configs(world: World, gdir: Path) -> None:
    """One ``farecore gate`` configuration per gate. The simulator builds its gates from
    them; their marks and verified table copies go to the run's ``work/state``."""
    gdir.mkdir()
    clock = world.clock
    issued = ", ".join(f'"../{name}"' for name in issued_lists(world))
    for g in world.gates:
        window = {"metro_entry": clock.passback_metro_s, "bus": clock.passback_bus_s}.get(g.role, 0)
        (gdir / f"gate-{g.terminal_id}.toml").write_text(
            f"# farecore gate configuration of terminal {g.terminal_id} (simulated city)\n"
            f'[terminal]\nid = {g.terminal_id}\nkey = "../keys/terminal-{g.terminal_id}.key"\n'
            f'operator = "{g.operator}"\nline = "{g.line}"\nplace = "{g.place}"\nrole = "{g.role}"\n\n'
            f'[policy]\nregions = [{QINGDAO}]\n\n[keyring]\npath = "../keyring.json"\n'
            f"issued = [{issued}]\n\n"
            f'[revocation]\ntable = "../revocation/gen2.frt"\nsigner = "../keys/revocation-1.pub"\n\n'
            f'[journal]\npath = "../work/journals/journal-{g.terminal_id}.sqlite"\n\n'
            + _rule_section(g.role, g.place, window)
            + '\n[state]\ndir = "../work/state"\n'
        )


def _rule_section(role: str, place: str, window: int) -> str:
    """A transit gate's [passback]; a venue gate's [venue] (one entry a day at its site)."""
    if role == "venue":
        return f'[venue]\nstore = "../work/venue/{slug(place)}.sqlite"\n'
    store = f'store = "../work/passback/{slug(place)}.sqlite"\n' if window else ""
    return f"[passback]\nwindow_s = {window}\n" + store


def _write_issued_list(world: World, out: Path) -> None:
    """Make every card's key and credential, and sign the list of those the issuer issued.

    The cards exist before the day, as a real register's do; the workers fork after this
    and find each card's material ready."""
    pop = world.population
    listed: list[list[tuple[str, bytes]]] = [[] for _ in world.issuers]
    for index in range(len(pop)):
        credential, _ = world.cards.material(index)
        if CARD_KINDS[int(pop.kinds[index])] not in _NOT_LISTED:
            listed[world.cards.issuer_of(index)].append(
                (f"card {int(pop.card_ids[index])}", credential)
            )
    created_at = world.clock.start_ms // 1000 - 86_400  # published the evening before
    jobs = world.opts.workers or os.cpu_count() or 1
    for issuer, cards, name in zip(world.issuers, listed, issued_lists(world), strict=True):
        build_issued_list(cards, issuer.key, 1, created_at, out / name, jobs=jobs)
