"""The gate configuration file (TOML), parsed and checked before a gate starts.

Paths in the file are relative to the file's own directory, so a configuration and its
keys can move together. Every problem is reported as a ConfigError that names the key;
a gate never starts half-configured.

Example::

    [terminal]
    id = 1001
    key = "keys/terminal-1001.key"
    operator = "qingdao-metro"
    line = "M3"                  # for a venue gate: the site (park, scenic spot, museum)
    place = "wusi-square"        # station, stop or vehicle id; a venue's entrance
    role = "metro_entry"         # bus | metro_entry | metro_exit | venue
    register = "terminals.csv"   # optional: the key and context must be the registered ones

    [policy]
    regions = [370200]
    categories = [1, 2, 3, 4, 5]

    [keyring]
    path = "keyring.json"
    issued = ["issued-1.fil"]    # optional: the issuer's signed lists of its credentials

    [revocation]
    table = "revocation.frt"     # required, unless enabled = false (no card is then revoked)
    signer = "keys/revocation.pub"
    max_age_s = 172800
    stale_policy = "closed"      # closed | open
    store = "state/tables"       # the gate's verified copies; share it among a host's gates

    [journal]
    path = "journal-1001.sqlite"
    group_commit_ms = 0          # 0: one commit per tap

    [passback]
    window_s = 600               # 0 disables the rule
    store = "station.sqlite"     # shared by the gates of one station

    [venue]                      # role = "venue" only, in place of [passback]
    store = "zhongshan-park.sqlite"   # one entry per card per site per service day; shared
    utc_offset = "+08:00"        # by the site's entrances. The service day's time zone

    [actuator]
    command = []                 # e.g. ["gpioset", "gpiochip0", "17=1"] run on ACCEPT

    [state]
    dir = "state"                # the gate's durable marks (marks-<id>.json)

    [clock]
    tolerance_s = 300            # how far behind a time it has seen the clock may be

    [package]                    # optional: follow a signed parameter package (docs/fleet.md)
    source = "https://params.example/qingdao/"   # or a directory
    dir = "state/package"        # the gate's verified copies and the package in force
    poll_s = 30                  # how often to ask the source (conditionally)
    ca_file = "ca.pem"           # optional: the CA that signs the source's TLS certificate
    timeout_s = 10               # per request

    [upload]                     # optional: hand journals in (docs/collection.md)
    to = "https://collect.example/"   # a farecore collect, or a directory
    head_interval_s = 300        # how often to send the signed chain head

    [metrics]                    # optional: Prometheus metrics (docs/monitoring.md)
    listen = "127.0.0.1:9464"
    multiprocess_dir = "/run/farecore-metrics"   # several gate processes, one endpoint

With ``[package]``, the package supplies the keyring, the issued lists and the revocation
table (and delta); ``[keyring] path`` is the keyring trusted before the first package,
``[revocation] table`` an optional table to start on, and ``[revocation] signer`` stays
the only key a table is trusted under.

A venue gate (``role = "venue"``) refuses a card's second entry to its site (``line``)
on one service day with ALREADY_ENTERED (CARD-SPEC §7); it has no ``[passback]``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from farecore.boundedinput import load_toml, read_limited
from farecore.decide.clockguard import DEFAULT_TOLERANCE_S
from farecore.decide.validator import ALL_CATEGORIES, TerminalPolicy
from farecore.errors import ConfigError
from farecore.journal.batch_header import QINGDAO_UTC_OFFSET_MIN, parse_utc_offset
from farecore.journal.records import ROLE_DIRECTION
from farecore.strictkeys import check_keys

__all__ = [
    "DEFAULT_MAX_AGE_S",
    "ROLES",
    "SCHEMA",
    "GateConfig",
    "config_section",
    "config_value",
    "load_gate_config",
    "policy_list",
    "read_gate_toml",
    "terminal_policy",
]

ROLES = tuple(ROLE_DIRECTION)  # the roles a gate may have, as the journal records them
DEFAULT_MAX_AGE_S = 172_800


@dataclass(frozen=True, slots=True)
class GateConfig:
    terminal_id: int
    terminal_key: Path | None
    operator: str
    line: str
    place: str
    role: str
    regions: frozenset[int]
    categories: frozenset[int]
    keyring: Path
    issued_lists: tuple[Path, ...]
    revocation_table: Path | None
    revocation_signer: Path | None
    revocation_max_age_s: int | None
    stale_policy: str
    journal: Path | None
    group_commit_ms: float
    passback_window_s: int
    passback_store: Path | None
    actuator_command: tuple[str, ...]
    register: Path | None = None
    state_dir: Path = Path("state")
    revocation_store: Path = Path("state/tables")
    clock_tolerance_s: int = DEFAULT_TOLERANCE_S
    package_source: str | None = None
    package_dir: Path = Path("state/package")
    package_poll_s: float = 30.0
    package_ca_file: Path | None = None
    package_timeout_s: float = 10.0
    metrics_listen: str | None = None
    metrics_multiprocess_dir: Path | None = None
    # The [upload] table as written (farecore.fleet.upload.courier_settings checks its
    # values when the gate starts) and the directory its paths are relative to.
    upload: tuple[tuple[str, Any], ...] | None = None
    config_dir: Path = Path(".")
    # A venue gate's one-entry-a-day state and the service day's time zone.
    venue_store: Path | None = None
    venue_utc_offset_min: int = QINGDAO_UTC_OFFSET_MIN

    @property
    def marks(self) -> Path:
        """The file of this gate's durable high-water marks (``farecore.gate.marks``)."""
        return self.state_dir / f"marks-{self.terminal_id}.json"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"terminal.role must be one of {', '.join(ROLES)}, not {self.role!r}")
        if self.revocation_table is not None and self.revocation_signer is None:
            raise ConfigError("revocation.table is set but revocation.signer is not")
        if self.passback_window_s < 0:
            raise ConfigError("passback.window_s must be 0 (off) or positive")
        if self.group_commit_ms < 0:
            raise ConfigError("journal.group_commit_ms must be 0 (off) or positive")
        if self.role == "venue":
            if self.passback_window_s or self.passback_store is not None:
                raise ConfigError(
                    "a venue gate admits a card once per site per service day: configure "
                    "[venue] store, not [passback]"
                )
            if self.venue_store is None:
                raise ConfigError(
                    "role = venue needs [venue] store (the site's one-entry-a-day state)"
                )
        elif self.venue_store is not None:
            raise ConfigError(f"[venue] is set, but terminal.role is {self.role!r}, not venue")

    def policy(self) -> TerminalPolicy:
        return terminal_policy(self)


class _PolicyFields(Protocol):
    @property
    def terminal_id(self) -> int: ...
    @property
    def regions(self) -> frozenset[int]: ...
    @property
    def categories(self) -> frozenset[int]: ...
    @property
    def revocation_max_age_s(self) -> int | None: ...
    @property
    def stale_policy(self) -> str: ...


def terminal_policy(cfg: _PolicyFields) -> TerminalPolicy:
    """What a configured terminal (a gate or a till) accepts; ConfigError if it cannot be."""
    try:
        return TerminalPolicy(
            cfg.terminal_id,
            cfg.regions,
            cfg.categories,
            cfg.revocation_max_age_s,
            cfg.stale_policy,
        )
    except ValueError as exc:
        raise ConfigError(f"policy: {exc}") from None


# Every section and key a gate configuration may hold: anything else is a typo, and an
# error naming the nearest of these, never a setting silently left at its default.
SCHEMA: dict[str, tuple[str, ...]] = {
    "terminal": ("id", "key", "operator", "line", "place", "role", "register"),
    "policy": ("regions", "categories"),
    "keyring": ("path", "issued"),
    "revocation": ("enabled", "table", "signer", "max_age_s", "stale_policy", "store"),
    "journal": ("path", "group_commit_ms"),
    "passback": ("window_s", "store"),
    "venue": ("store", "utc_offset"),
    "actuator": ("command",),
    "state": ("dir",),
    "clock": ("tolerance_s",),
    "package": ("source", "dir", "poll_s", "ca_file", "timeout_s"),
    "metrics": ("listen", "multiprocess_dir"),
    # Its values are checked when the gate starts (farecore.fleet.upload.courier_settings).
    "upload": (
        "to",
        "state",
        "spool",
        "tz",
        "head_interval_s",
        "close_after_s",
        "poll_s",
        "since",
        "chunk_bytes",
        "timeout_s",
        "ca",
    ),
}
_MAX_GROUP_COMMIT_MS = 1000
_MAX_WINDOW_S = 7 * 86_400
_MAX_AGE_LIMIT_S = 10 * 365 * 86_400
_MAX_CLOCK_TOLERANCE_S = 86_400
_MAX_CONFIG_BYTES = 1 << 20
_LISTEN = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(?P<port>[0-9]{1,5})")
_MAX_CONFIG_DEPTH = 8  # a section, a key's list, and room to spare


def config_section(
    doc: dict[str, Any], name: str, schema: dict[str, tuple[str, ...]]
) -> dict[str, Any]:
    """Section ``name`` of a terminal configuration (empty when absent), its keys checked
    against ``schema`` (a typo: an error naming the nearest valid key)."""
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    check_keys(value, f"[{name}]", schema[name])
    return value


def _table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return config_section(doc, name, SCHEMA)


def config_value(
    section: dict[str, Any], where: str, key: str, kind: type, default: Any = ...
) -> Any:
    """``section[key]`` of type ``kind`` (int, float, str or list; a bool is never a
    number); ``default`` when absent, or ConfigError when there is none."""
    if key not in section:
        if default is ...:
            raise ConfigError(f"{where}.{key} is required")
        return default
    value = section[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}.{key} must be an integer, not {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{where}.{key} must be a number, not {value!r}")
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{where}.{key} must be a string, not {value!r}")
    if kind is list and not isinstance(value, list):
        raise ConfigError(f"{where}.{key} must be a list, not {value!r}")
    return value


def policy_list(
    section: dict[str, Any], where: str, key: str, default: frozenset[int]
) -> frozenset[int]:
    """``regions`` (region codes, uint32) or ``categories`` (a subset of 1..5), never
    empty when given: a typo'd list must not silently accept nothing, or anything."""
    values = config_value(section, where, key, list, None)
    if values is None:
        return default
    low, high, what = (
        (min(ALL_CATEGORIES), max(ALL_CATEGORIES), "category")
        if key == "categories"
        else (1, 0xFFFFFFFF, "region")
    )
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in values
    ):
        raise ConfigError(f"{where}.{key} must list at least one {what}, each {low}..{high}")
    return frozenset(values)


def _paths(section: dict[str, Any], where: str, key: str, base: Path) -> tuple[Path, ...]:
    """A path or a list of paths, relative to the configuration's directory."""
    value = section.get(key, [])
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{where}.{key} must be a path or a list of paths")
    return tuple(base / v for v in values)


def read_gate_toml(path: str | Path) -> dict[str, Any]:
    """The TOML document of a gate configuration, its size and nesting bounded before it
    is parsed; ConfigError naming the file otherwise. Its keys are not checked here."""
    p = Path(path)
    try:
        if p.is_dir():
            raise ConfigError(f"{p}: is a directory, not a configuration file")
        text = read_limited(p, _MAX_CONFIG_BYTES, str(p), ConfigError).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from None
    return load_toml(text, _MAX_CONFIG_DEPTH, str(p), ConfigError)


def load_gate_config(path: str | Path) -> GateConfig:
    """Read and check a gate configuration; raise ConfigError naming what is wrong."""
    p = Path(path)
    doc = read_gate_toml(p)
    try:
        return _load(doc, p)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def _load(doc: dict[str, Any], p: Path) -> GateConfig:
    check_keys(doc, "", SCHEMA, "section")
    base = p.parent

    def rel(value: str | None) -> Path | None:
        return None if value in (None, "") else base / str(value)

    state_dir = (
        rel(config_value(_table(doc, "state"), "state", "dir", str, "state")) or base / "state"
    )
    tolerance = _tolerance(_table(doc, "clock"))
    command = _command(_table(doc, "actuator"))
    terminal = _terminal(_table(doc, "terminal"), rel)
    keyring = _table(doc, "keyring")
    keyring_path = rel(config_value(keyring, "keyring", "path", str))
    if keyring_path is None:
        raise ConfigError("keyring.path must name the keyring file")
    package = _package(_table(doc, "package"), rel, state_dir)
    revocation = _table(doc, "revocation")
    table, max_age, store = _revocation(revocation, packaged=bool(package))
    journal = _journal(_table(doc, "journal"), rel)
    passback = _table(doc, "passback")
    window = config_value(passback, "passback", "window_s", int, 0)
    if not 0 <= window <= _MAX_WINDOW_S:
        raise ConfigError(f"passback.window_s must be 0 (off)..{_MAX_WINDOW_S}, not {window}")
    policy = _table(doc, "policy")
    upload = _table(doc, "upload")
    venue = _venue(_table(doc, "venue"), rel)
    if terminal["role"] == "venue":
        _check_venue(passback, venue, upload)
    return GateConfig(
        **terminal,
        regions=policy_list(policy, "policy", "regions", frozenset()),
        categories=policy_list(policy, "policy", "categories", ALL_CATEGORIES),
        keyring=keyring_path,
        issued_lists=_paths(keyring, "keyring", "issued", base),
        revocation_table=rel(table),
        revocation_signer=rel(config_value(revocation, "revocation", "signer", str, None)),
        revocation_max_age_s=max_age,
        stale_policy=config_value(revocation, "revocation", "stale_policy", str, "closed"),
        **journal,
        passback_window_s=window,
        passback_store=rel(config_value(passback, "passback", "store", str, None)),
        actuator_command=command,
        state_dir=state_dir,
        revocation_store=rel(store) or state_dir / "tables",
        clock_tolerance_s=tolerance,
        **package,
        **_metrics(_table(doc, "metrics"), rel),
        **venue,
        upload=tuple(upload.items()) if upload else None,
        config_dir=base,
    )


def _check_venue(passback: dict[str, Any], venue: dict[str, Any], upload: dict[str, Any]) -> None:
    """A venue gate has no [passback], and its service day is its batches' day."""
    if passback:
        raise ConfigError(
            "a venue gate admits a card once per site per service day: configure "
            "[venue] store, not [passback]"
        )
    tz = upload.get("tz")
    offset = venue.get("venue_utc_offset_min", QINGDAO_UTC_OFFSET_MIN)
    if isinstance(tz, str):
        try:
            same = parse_utc_offset(tz) == offset
        except ConfigError:
            return  # the courier's own check names a bad upload.tz when the gate starts
        if not same:
            raise ConfigError(
                f"venue.utc_offset and upload.tz {tz!r} differ: the venue's service day "
                "must be the day its batches are handed in for"
            )


def _venue(section: dict[str, Any], rel: Callable[[str | None], Path | None]) -> dict[str, Any]:
    """The [venue] section: where a venue gate keeps who entered today, and the day's zone."""
    if not section:
        return {}
    store = config_value(section, "venue", "store", str)
    if not store:
        raise ConfigError("venue.store must name the site's state file")
    offset = config_value(section, "venue", "utc_offset", str, "+08:00")
    try:
        minutes = parse_utc_offset(offset)
    except ConfigError as exc:
        raise ConfigError(f"venue.utc_offset: {exc}") from None
    return {"venue_store": rel(store), "venue_utc_offset_min": minutes}


def _metrics(section: dict[str, Any], rel: Callable[[str | None], Path | None]) -> dict[str, Any]:
    """The [metrics] section: where the gate serves its Prometheus metrics."""
    listen = config_value(section, "metrics", "listen", str, None)
    mp_dir = config_value(section, "metrics", "multiprocess_dir", str, None)
    if mp_dir is not None and listen is None:
        raise ConfigError("metrics.multiprocess_dir is set but metrics.listen is not")
    if listen is not None:
        m = _LISTEN.fullmatch(listen) if len(listen) <= 300 else None
        if m is None or int(m["port"]) > 65535:
            raise ConfigError(
                f"metrics.listen must be HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464), "
                f"not {listen!r}"
            )
    return {"metrics_listen": listen, "metrics_multiprocess_dir": rel(mp_dir)}


def _package(
    section: dict[str, Any], rel: Callable[[str | None], Path | None], state_dir: Path
) -> dict[str, Any]:
    """The [package] section (empty: the gate follows no package)."""
    if not section:
        return {}
    source = config_value(section, "package", "source", str)
    if not source.strip():
        raise ConfigError("package.source must name a directory or an http(s) URL")
    if "://" not in source:  # a directory, relative to the configuration like every path
        source = str(rel(source))
    elif not source.lower().startswith(("http://", "https://", "file://")):
        raise ConfigError(f"package.source {source!r}: expected a directory or an http(s) URL")
    poll = float(config_value(section, "package", "poll_s", float, 30.0))
    if not (math.isfinite(poll) and 1 <= poll <= 86_400):
        raise ConfigError(f"package.poll_s must be 1..86400, not {poll}")
    timeout = float(config_value(section, "package", "timeout_s", float, 10.0))
    if not (math.isfinite(timeout) and 0.1 <= timeout <= 600):
        raise ConfigError(f"package.timeout_s must be 0.1..600, not {timeout}")
    return {
        "package_source": source,
        "package_dir": rel(config_value(section, "package", "dir", str, None))
        or state_dir / "package",
        "package_poll_s": poll,
        "package_ca_file": rel(config_value(section, "package", "ca_file", str, None)),
        "package_timeout_s": timeout,
    }


def _terminal(term: dict[str, Any], rel: Callable[[str | None], Path | None]) -> dict[str, Any]:
    """The [terminal] section: who the gate is and where it stands."""
    terminal_id = config_value(term, "terminal", "id", int)
    if not 0 <= terminal_id <= 0xFFFFFFFFFFFFFFFF:
        raise ConfigError("terminal.id must be a uint64")
    for key in ("operator", "line", "place"):
        text = config_value(term, "terminal", key, str)
        if not text or len(text.encode()) > 255:
            raise ConfigError(f"terminal.{key} must be a non-empty string of at most 255 bytes")
    return {
        "terminal_id": terminal_id,
        "terminal_key": rel(config_value(term, "terminal", "key", str, None)),
        "operator": config_value(term, "terminal", "operator", str),
        "line": config_value(term, "terminal", "line", str),
        "place": config_value(term, "terminal", "place", str),
        "role": config_value(term, "terminal", "role", str),
        "register": rel(config_value(term, "terminal", "register", str, None)),
    }


def _revocation(
    revocation: dict[str, Any], *, packaged: bool = False
) -> tuple[str | None, int | None, str | None]:
    """The [revocation] section's table, maximum age and store.

    A gate without a table accepts revoked cards, so that must be asked for
    (``enabled = false``). With a table, a maximum age is always in force: 48 h by
    default (README explains why). A gate that follows a package gets its table there."""
    table = config_value(revocation, "revocation", "table", str, None)
    has_table = bool(table) or packaged
    max_age = config_value(
        revocation, "revocation", "max_age_s", int, DEFAULT_MAX_AGE_S if has_table else None
    )
    enabled = revocation.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"revocation.enabled must be true or false, not {enabled!r}")
    if packaged and not enabled:
        raise ConfigError("[package] is set, but revocation.enabled = false")
    if packaged and not revocation.get("signer"):
        raise ConfigError("[package] is set: revocation.signer must name the table signer's key")
    if enabled and not has_table:
        raise ConfigError(
            "[revocation] names no table: such a gate accepts revoked cards. Set table and "
            "signer, or enabled = false to run without revocation on purpose"
        )
    if not enabled and table:
        raise ConfigError("revocation.enabled = false, but revocation.table is set")
    if max_age is not None and not 0 < max_age <= _MAX_AGE_LIMIT_S:
        raise ConfigError(f"revocation.max_age_s must be 1..{_MAX_AGE_LIMIT_S}, not {max_age}")
    return table, max_age, config_value(revocation, "revocation", "store", str, None)


def _journal(journal: dict[str, Any], rel: Callable[[str | None], Path | None]) -> dict[str, Any]:
    group_ms = float(config_value(journal, "journal", "group_commit_ms", float, 0))
    if not (math.isfinite(group_ms) and 0 <= group_ms <= _MAX_GROUP_COMMIT_MS):
        raise ConfigError(f"journal.group_commit_ms must be 0..{_MAX_GROUP_COMMIT_MS}")
    return {
        "journal": rel(config_value(journal, "journal", "path", str, None)),
        "group_commit_ms": group_ms,
    }


def _command(actuator: dict[str, Any]) -> tuple[str, ...]:
    command = config_value(actuator, "actuator", "command", list, [])
    if not all(isinstance(c, str) for c in command):
        raise ConfigError("actuator.command must be a list of strings")
    return tuple(command)


def _tolerance(clock: dict[str, Any]) -> int:
    tolerance: int = config_value(clock, "clock", "tolerance_s", int, DEFAULT_TOLERANCE_S)
    if not 0 <= tolerance <= _MAX_CLOCK_TOLERANCE_S:
        raise ConfigError(f"clock.tolerance_s must be 0..{_MAX_CLOCK_TOLERANCE_S}, not {tolerance}")
    return tolerance
