"""A gate's durable high-water marks: the newest lists it accepted, the latest time it saw.

A gate that forgets, when it restarts, which revocation table it last held can be handed
an older one: every card revoked since comes back to life. So the gate writes down, in
one small file of its own, the generation (and exact copy) of the table in force (or, for
a delta over a base table, the copies of both: ``"delta"`` in ``revocation``), the
generation and digest of each issuer's issued list, and the latest time it has durably
seen. At start it refuses anything older, or of the same generation with other contents,
and a clock behind the time mark is a fault (``farecore.decide.clockguard``).

The file is written atomically and durably (``farecore.atomicfile``). It is read
strictly: a damaged file is a ConfigError naming it, never a silent fresh start, because
a fresh start is exactly what a rollback needs.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farecore.atomicfile import write_atomic
from farecore.boundedinput import check_json_nesting
from farecore.errors import ConfigError

__all__ = ["FORMAT", "GateMarks"]

FORMAT = "farecore-marks/1"
_MAX_BYTES = 1 << 20
_HEX = re.compile(r"^[0-9a-f]{1,64}$")
_I64 = (1 << 63) - 1
_SAVING = threading.RLock()  # the tap thread and the table reloader both save


@dataclass(slots=True)
class GateMarks:
    """What one gate has durably seen. Load with :meth:`load`; every ``raise_*`` saves."""

    path: Path
    terminal_id: int
    # (generation, name of the verified copy), or for a delta over a base table:
    # (generation of the delta, name of the base copy, name of the delta copy).
    revocation: tuple[int, str] | tuple[int, str, str] | None = None
    issued: dict[int, tuple[int, str]] = field(default_factory=dict)  # key id: gen, sha256
    time_ms: int = 0

    @classmethod
    def load(cls, path: str | os.PathLike[str], terminal_id: int) -> GateMarks:
        """The marks at ``path``; empty marks if no file is there yet."""
        p = Path(path)
        try:
            with open(p, "rb") as fh:
                raw = fh.read(_MAX_BYTES + 1)
        except FileNotFoundError:
            return cls(p, terminal_id)
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read the gate's marks: {exc.strerror or exc}") from None
        try:
            if len(raw) > _MAX_BYTES:
                raise ValueError(f"larger than {_MAX_BYTES} bytes")
            check_json_nesting(raw, 3, "nesting", ValueError, max_digits=20)
            marks = cls._parse(p, json.loads(raw))
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(
                f"{p}: damaged gate marks ({exc}); restore the file, or remove it knowingly: "
                "the gate then cannot refuse an older table it is handed"
            ) from None
        if marks.terminal_id != terminal_id:
            raise ConfigError(
                f"{p}: holds the marks of terminal {marks.terminal_id}, not {terminal_id}"
            )
        return marks

    @classmethod
    def _parse(cls, p: Path, doc: Any) -> GateMarks:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document")
        if set(doc) != {"format", "terminal_id", "revocation", "issued", "time_ms"}:
            raise ValueError("unexpected or missing keys")
        revocation: tuple[int, str] | tuple[int, str, str] | None = None
        if doc["revocation"] is not None:
            rev = doc["revocation"]
            if not isinstance(rev, dict) or set(rev) - {"delta"} != {"generation", "copy"}:
                raise ValueError("revocation must hold generation and copy (and maybe delta)")
            generation = _uint(rev["generation"], "revocation.generation")
            revocation = (generation, _file_name(rev["copy"], "revocation.copy"))
            if "delta" in rev:
                revocation = (*revocation, _file_name(rev["delta"], "revocation.delta"))
        if not isinstance(doc["issued"], dict):
            raise ValueError("issued must be an object")
        issued: dict[int, tuple[int, str]] = {}
        for key, value in doc["issued"].items():
            if not (key.isascii() and key.isdigit()) or not isinstance(value, dict):
                raise ValueError(f"issued entry {key!r} is not a key id and an object")
            if set(value) != {"generation", "sha256"} or not _HEX.match(str(value["sha256"])):
                raise ValueError(f"issued entry {key} must hold generation and sha256")
            issued[int(key)] = (_uint(value["generation"], "issued generation"), value["sha256"])
        return cls(
            p,
            _uint(doc["terminal_id"], "terminal_id"),
            revocation,
            issued,
            _uint(doc["time_ms"], "time_ms"),
        )

    def save(self) -> None:
        """Write the marks durably (atomic replace, fsync); ConfigError if they cannot be."""
        with _SAVING:
            try:
                self._save()
            except OSError as exc:
                raise ConfigError(
                    f"{self.path}: cannot write the gate's marks: {exc.strerror or exc}"
                ) from None

    def _save(self) -> None:
        doc = {
            "format": FORMAT,
            "terminal_id": self.terminal_id,
            "revocation": None if self.revocation is None else _revocation_doc(self.revocation),
            "issued": {str(k): {"generation": g, "sha256": d} for k, (g, d) in self.issued.items()},
            "time_ms": self.time_ms,
        }
        write_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n", 0o600)

    def raise_time(self, time_ms: int) -> None:
        """Move the time mark up to ``time_ms`` (never down) and save it if it moved."""
        with _SAVING:
            if time_ms > self.time_ms:
                self.time_ms = time_ms
                self.save()


def _revocation_doc(mark: tuple[int, str] | tuple[int, str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = {"generation": mark[0], "copy": mark[1]}
    if len(mark) == 3:
        doc["delta"] = mark[2]
    return doc


def _file_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 255 or "/" in value or "\0" in value:
        raise ValueError(f"{what} must be a file name")
    return value


def _uint(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _I64:
        raise ValueError(f"{what} must be a non-negative integer")
    return value
