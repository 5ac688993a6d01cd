"""The settlement ledger: what every earlier night settled, so no ride is paid twice.

One SQLite file (WAL, ``synchronous=FULL``) holds, for every night, the batch files it
considered and what became of each; every settled batch (so each terminal's chain head:
last seq, hash and latest time); every card counter the ledger has taken (paid, or held
for a later night); and the rides held until a late batch can price them. A night is
appended in one transaction, so a night either happened entirely or not at all.

Every read takes a night number and sees the ledger as it stood before that night
(rows of nights ``< night``): re-running a settled night sees exactly what it saw the
first time and so gives the same outputs. This module must never decide payment; it
stores and answers.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from farecore.closing import Closing
from farecore.errors import LedgerDamaged, SettlementError
from farecore.settlement.ledger_rows import (
    LEDGER_FORMAT,
    SCHEMA,
    Head,
    HeldRide,
    NightRecord,
    SettledBatch,
    TakenRide,
    as_bytes,
    as_day,
    as_int,
    as_unsigned,
    batch_rows,
    held_rows,
    signed,
    signed_int,
    taken_rows,
)

__all__ = [
    "LEDGER_FORMAT",
    "Head",
    "HeldRide",
    "Ledger",
    "NightRecord",
    "SettledBatch",
    "TakenRide",
]


class Ledger(Closing):
    """The ledger file, open. ``Ledger.open(path)``; ``Ledger.memory()`` for one-off runs."""

    def __init__(self, db: sqlite3.Connection, where: str) -> None:
        self._db = db
        self.where = where

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Ledger:
        """Open (creating if needed) the ledger at ``path``; SettlementError if it is not one."""
        where = str(path)
        p = Path(path)
        if p.exists() and not p.is_file():
            raise SettlementError(f"ledger {where} is not a file")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(where, timeout=30.0, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise SettlementError(f"cannot open ledger {where}: {exc}") from None
        ledger = cls(db, where)
        ledger._setup(durable=True)
        return ledger

    @classmethod
    def memory(cls) -> Ledger:
        """An empty ledger that lasts for this process (a first night, or a test)."""
        ledger = cls(sqlite3.connect(":memory:", isolation_level=None), ":memory:")
        ledger._setup(durable=False)
        return ledger

    def _setup(self, durable: bool) -> None:
        db = self._db
        try:
            if durable:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise SettlementError(f"ledger {self.where}: cannot use WAL ({mode})")
                db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA cache_size=-262144")  # 256 MiB: a year's counters are ~1 GB
            db.execute("PRAGMA temp_store=MEMORY")
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                row = db.execute("SELECT value FROM meta WHERE key='format'").fetchone()
                if row is None:
                    db.execute("INSERT INTO meta VALUES ('format', ?)", (LEDGER_FORMAT,))
                elif row[0] != LEDGER_FORMAT:
                    raise SettlementError(f"ledger {self.where} is {row[0]}, not {LEDGER_FORMAT}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:  # read-only, locked, disk full, …
            db.close()
            raise SettlementError(f"cannot use ledger {self.where}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            db.close()
            raise SettlementError(f"ledger {self.where} is not a farecore ledger: {exc}") from None
        except SettlementError:
            db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[object, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except (sqlite3.Error, OverflowError) as exc:
            raise SettlementError(f"ledger {self.where}: {exc}") from None

    def damaged(self, exc: SettlementError) -> SettlementError:
        """The error to raise for a value the ledger should never hold."""
        return SettlementError(f"ledger {self.where} is damaged ({exc}); restore it from a backup")

    # -- nights ---------------------------------------------------------------------

    def night_of(self, day: dt.date) -> NightRecord | None:
        rows = self._query(
            "SELECT night, inputs_sha256, outputs FROM nights WHERE day=?", (day.isoformat(),)
        )
        if not rows:
            return None
        night, inputs, outputs = rows[0]
        files = self._query("SELECT sha256, outcome FROM files WHERE night=?", (night,))
        try:
            digests = json.loads(str(outputs))
            if not isinstance(digests, dict):
                raise LedgerDamaged("a night's outputs are not a table")
            return NightRecord(
                as_int(night),
                day,
                str(inputs),
                {str(k): str(v) for k, v in digests.items()},
                {as_bytes(s): str(o) for s, o in files},
            )
        except ValueError as exc:
            raise self.damaged(LedgerDamaged(str(exc))) from None
        except LedgerDamaged as exc:
            raise self.damaged(exc) from None

    def last_night(self) -> tuple[int, dt.date] | None:
        rows = self._query("SELECT night, day FROM nights ORDER BY night DESC LIMIT 1")
        if not rows:
            return None
        try:
            return as_int(rows[0][0]), as_day(rows[0][1])
        except LedgerDamaged as exc:
            raise self.damaged(exc) from None

    # -- the view before a night ----------------------------------------------------

    def done_files(self, night: int) -> set[bytes]:
        """Batch files an earlier night settled or rejected: not looked at again."""
        rows = self._query(
            "SELECT sha256 FROM files WHERE night<? AND outcome IN ('settled', 'rejected')",
            (night,),
        )
        return {as_bytes(r[0]) for r in rows}

    def heads(self, night: int) -> dict[int, Head]:
        """Each terminal's settled chain head as it stood before ``night``."""
        rows = self._query(
            "SELECT terminal_id, last_seq, tail_hash, max_time_ms FROM batches b "
            "WHERE night<? AND last_seq = (SELECT MAX(last_seq) FROM batches "
            "WHERE terminal_id=b.terminal_id AND night<?)",
            (night, night),
        )
        out: dict[int, Head] = {}
        for tid, last, tail, latest in rows:
            # the latest time anywhere in the chain, not only in the head batch
            out[as_unsigned(tid)] = Head(as_int(last), as_bytes(tail), as_int(latest))
        if out:
            for tid, latest in self._query(
                "SELECT terminal_id, MAX(max_time_ms) FROM batches WHERE night<? "
                "GROUP BY terminal_id",
                (night,),
            ):
                key = as_unsigned(tid)
                h = out[key]
                out[key] = Head(h.last_seq, h.tail_hash, as_int(latest))
        return out

    def links_at(self, night: int, terminal_id: int, seq: int, tail_hash: bytes) -> bool:
        """Whether the settled chain has ``tail_hash`` right after record ``seq``."""
        tid = signed_int(terminal_id)
        rows = self._query(
            "SELECT 1 FROM batches WHERE terminal_id=? AND last_seq=? AND tail_hash=? "
            "AND night<? LIMIT 1",
            (tid, seq, tail_hash, night),
        )
        return bool(rows)

    def hashes_at(self, night: int, terminal_id: int, seq: int) -> set[bytes]:
        """The hash the settled chain has right after record ``seq``, where a batch
        settled before ``night`` ends there or starts after it (empty elsewhere: the
        ledger keeps batch boundaries, not every record's hash)."""
        tid = signed_int(terminal_id)
        rows = self._query(
            "SELECT tail_hash FROM batches WHERE terminal_id=? AND last_seq=? AND night<? "
            "UNION SELECT prev_hash FROM batches WHERE terminal_id=? AND first_seq - 1=? AND night<?",
            (tid, seq, night, tid, seq, night),
        )
        return {as_bytes(r[0]) for r in rows}

    def last_day(self, night: int, terminal_id: int) -> str | None:
        """The latest day of a batch of ``terminal_id`` settled before ``night``."""
        rows = self._query(
            "SELECT MAX(day) FROM batches WHERE terminal_id=? AND night<?",
            (signed_int(terminal_id), night),
        )
        return None if not rows or rows[0][0] is None else str(rows[0][0])

    def has_day(self, night: int, terminal_id: int, day: str) -> bool:
        """Whether a batch of ``terminal_id`` for ``day`` was settled before ``night``."""
        tid = signed_int(terminal_id)
        rows = self._query(
            "SELECT 1 FROM batches WHERE terminal_id=? AND day=? AND night<? LIMIT 1",
            (tid, day, night),
        )
        return bool(rows)

    def settled_terminals(self, night: int, day: str) -> set[int]:
        rows = self._query(
            "SELECT DISTINCT terminal_id FROM batches WHERE day=? AND night<?", (day, night)
        )
        return {as_unsigned(r[0]) for r in rows}

    def taken_mask(self, night: int, card_id: np.ndarray, counter: np.ndarray) -> np.ndarray:
        """For each (card, counter), True when an earlier night already took it."""
        n = len(card_id)
        out = np.zeros(n, dtype=bool)
        if not n:
            return out
        db = self._db
        cards = signed(card_id)
        order = np.lexsort((counter, cards))  # the key order: the join walks the B-tree once
        try:
            db.execute(
                "CREATE TEMP TABLE IF NOT EXISTS probe (row INTEGER, card INTEGER, ctr INTEGER)"
            )
            db.execute("DELETE FROM temp.probe")
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO temp.probe VALUES (?, ?, ?)",
                zip(
                    order.tolist(),
                    cards[order].tolist(),
                    np.asarray(counter)[order].tolist(),
                    strict=True,
                ),
            )
            db.execute("COMMIT")
            rows = db.execute(
                "SELECT p.row FROM temp.probe p JOIN taken t "
                "ON t.card_id = p.card AND t.counter = p.ctr WHERE t.night < ?",
                (night,),
            ).fetchall()
            db.execute("DELETE FROM temp.probe")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise SettlementError(f"ledger {self.where}: {exc}") from None
        if rows:
            out[np.array([r[0] for r in rows], dtype=np.int64)] = True
        return out

    def taken_between(self, night: int, start_ms: int, end_ms: int) -> list[TakenRide]:
        """Rides taken by earlier nights with a time in [start_ms, end_ms)."""
        rows = self._query(
            "SELECT card_id, counter, terminal_id, time_ms FROM taken "
            "WHERE time_ms >= ? AND time_ms < ? AND night < ? ORDER BY time_ms, terminal_id, seq",
            (start_ms, end_ms, night),
        )
        return [
            TakenRide(as_unsigned(c), as_int(k), as_unsigned(t), as_int(ms)) for c, k, t, ms in rows
        ]

    def held(self, night: int, day: str) -> list[HeldRide]:
        """Rides held by an earlier night for ``day`` and not yet resolved before ``night``."""
        rows = self._query(
            "SELECT terminal_id, seq, day, time_ms, card_id, counter, record_hash, generation, "
            "flags, operator, line, place, direction FROM held "
            "WHERE day=? AND night<? AND (resolved IS NULL OR resolved>=?) "
            "ORDER BY terminal_id, seq",
            (day, night, night),
        )
        return [
            HeldRide(
                as_unsigned(t),
                as_int(s),
                str(d),
                as_int(ms),
                as_unsigned(c),
                as_int(k),
                as_bytes(h),
                as_int(g),
                tuple(str(f).split(",")) if f else (),
                (str(op), str(ln), str(pl), as_int(di)),
            )
            for t, s, d, ms, c, k, h, g, f, op, ln, pl, di in rows
        ]

    def known_paths(self) -> dict[str, tuple[int, int, bytes]]:
        """path -> (size, mtime_ns, SHA-256) of batch files hashed on earlier nights: a
        file that has not changed is not read again to learn it was settled."""
        rows = self._query("SELECT path, size, mtime_ns, sha256 FROM paths")
        return {str(p): (as_int(n), as_int(m), as_bytes(h)) for p, n, m, h in rows}

    # -- appending a night ----------------------------------------------------------

    def record_night(
        self,
        night: int,
        day: dt.date,
        inputs_sha256: str,
        outputs: dict[str, str],
        files: dict[bytes, str],
        batches: Iterable[SettledBatch],
        taken: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        held: Iterable[HeldRide],
        resolved: Iterable[tuple[int, int]],
        paths: Iterable[tuple[str, int, int, bytes]] = (),
    ) -> None:
        """Append one night in one transaction: all of it, or (on any failure) none."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO nights VALUES (?, ?, ?, ?)",
                (night, day.isoformat(), inputs_sha256, json.dumps(outputs, sort_keys=True)),
            )
            db.executemany(
                "INSERT INTO files VALUES (?, ?, ?)",
                ((sha, night, outcome) for sha, outcome in sorted(files.items())),
            )
            db.executemany(
                "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                batch_rows(batches, night),
            )
            db.executemany("INSERT INTO taken VALUES (?, ?, ?, ?, ?, ?)", taken_rows(taken, night))
            db.executemany(
                "INSERT INTO held VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                held_rows(held, night),
            )
            db.executemany("INSERT OR REPLACE INTO paths VALUES (?, ?, ?, ?)", paths)
            db.executemany(
                "UPDATE held SET resolved=? WHERE terminal_id=? AND seq=?",
                ((night, signed_int(t), s) for t, s in resolved),
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise SettlementError(
                f"cannot append the night to ledger {self.where}: {exc}"
            ) from None
