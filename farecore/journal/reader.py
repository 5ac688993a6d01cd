"""Reading a journal file: records by seq, credentials, and the chain check.

The same reader serves a terminal's own journal and a station's (each terminal's chain
inside it; ``farecore.journal.layout``). It opens the file read-only and checks every
record it returns against the chain, so a deleted, altered or reordered record is an
error, never a silent gap. This module must never read a clock.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from farecore.closing import Closing
from farecore.errors import JournalError, MalformedFile
from farecore.journal.layout import (
    MAX_SEQ,
    RECENT_CREDENTIALS,
    RECENT_RECORDS,
    STATION_FORMAT_1,
    STATION_FORMATS,
    meta_terminal_id,
    read_only_uri,
    station_records_table,
    time_index,
)
from farecore.journal.records import (
    GENESIS_HASH,
    JournalRecord,
    RecordRow,
    credential_hash,
    decode_record,
    decode_record_row,
    record_row,
)

__all__ = ["JournalReader"]

_T = TypeVar("_T")


def _as_record(body: bytes, prev: bytes) -> tuple[JournalRecord, int, int, int, bytes]:
    r = decode_record(body, prev)
    return r, r.terminal_id, r.seq, r.time_ms, r.hash


def _as_row(body: bytes, prev: bytes) -> tuple[RecordRow, int, int, int, bytes]:
    row = decode_record_row(body, prev)
    if row is None:  # the precise error, or the rare record the fast path leaves alone
        row = record_row(decode_record(body, prev))
    return row, row.terminal_id, row.seq, row.time_ms, row.hash


class JournalReader(Closing):
    """Read-only access to a journal file: records by seq, credentials, chain check.

    A station journal (``farecore.journal.station``) holds several terminals; name the one to
    read with ``terminal_id``. For a terminal's own journal it is optional and checked.
    """

    def __init__(self, path: str | os.PathLike[str], terminal_id: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise JournalError(f"{self.path}: no such journal")
        try:
            self._db = sqlite3.connect(read_only_uri(self.path), uri=True)
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot open the journal: {exc}") from None
        # Every query names the terminal in a station file; in a terminal's file the
        # condition is empty and the arguments too.
        self._table = "records"
        self._credential_tables: tuple[str, ...] = ("credentials",)
        self._where: str = ""
        self._args: tuple[int, ...] = ()
        try:
            self._choose(terminal_id)
        except sqlite3.Error as exc:
            self._db.close()
            raise JournalError(f"{self.path}: not a farecore journal: {exc}") from None
        except JournalError:
            self._db.close()
            raise

    def _choose(self, terminal_id: int | None) -> None:
        """Read the file's meta table; set the terminal and the tables to read."""
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        station = meta.get("format") in STATION_FORMATS
        held = (
            [r[0] for r in self._db.execute("SELECT terminal_id FROM terminals")] if station else []
        )
        if station:
            if terminal_id is None or terminal_id not in held:
                which = "name one" if terminal_id is None else f"not {terminal_id}"
                raise JournalError(
                    f"{self.path} is a station journal of terminals "
                    f"{', '.join(map(str, sorted(held)))}; {which}"
                )
            self.terminal_id = terminal_id
            if meta["format"] == STATION_FORMAT_1:
                self._where, self._args = "terminal_id = ? AND ", (terminal_id,)
            else:  # the terminal's table, and its rows among the recent ones
                self._table = (
                    f"(SELECT seq, time_ms, body, hash FROM {station_records_table(terminal_id)} "
                    f"UNION ALL SELECT seq, time_ms, body, hash FROM {RECENT_RECORDS} "
                    f"WHERE terminal_id = {int(terminal_id)})"
                )
                self._credential_tables = ("credentials", RECENT_CREDENTIALS)
        else:
            self.terminal_id = meta_terminal_id(self.path, meta)
            if terminal_id is not None and terminal_id != self.terminal_id:
                raise JournalError(
                    f"{self.path} is the journal of terminal {self.terminal_id}, not {terminal_id}"
                )
        # A table the reader needs and cannot find is damage, not an empty journal.
        need = set(self._credential_tables)
        if self._table == "records":
            need.add("records")
        else:
            need |= {station_records_table(self.terminal_id).strip('"'), RECENT_RECORDS}
        query = "SELECT name FROM sqlite_master WHERE type='table'"
        missing = sorted(need - {r[0] for r in self._db.execute(query)})
        if missing:
            raise JournalError(f"{self.path}: damaged journal: no {missing[0]} table")
        self._seq_from = self._seq_from_queries(meta.get("format"))

    def _seq_from_queries(self, fmt: object) -> list[tuple[str, str | None, str, tuple[int, ...]]]:
        """Where the first seq timed at or after a time is found: (the table; its time
        index when the file has one, a writer adds it; the condition that names the
        terminal; its arguments). Each table is asked on its own: through the index it
        reads only the records from that time on, and its largest seq is its B-tree's
        last entry, where a query over the tables' union would read every day before."""
        if fmt == STATION_FORMAT_1:
            return [("records", None, self._where, self._args)]
        table = "records" if self._table == "records" else station_records_table(self.terminal_id)
        index = time_index(table)
        found = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='index' AND name=? AND tbl_name=?",
            (index.strip('"'), table.strip('"')),
        ).fetchone()
        parts: list[tuple[str, str | None, str, tuple[int, ...]]] = [
            (table, index if found else None, "", ())
        ]
        if self._table != "records":
            parts.append((RECENT_RECORDS, None, "terminal_id = ? AND ", (self.terminal_id,)))
        return parts

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """An SQLite error here means a damaged file: say so as the journal's error."""
        try:
            yield
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot read the journal: {exc}") from None

    @staticmethod
    def terminals_in(path: str | os.PathLike[str]) -> list[int]:
        """The terminal ids a journal file holds (one, or a station's several)."""
        try:
            db = sqlite3.connect(read_only_uri(Path(path)), uri=True)
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot open the journal: {exc}") from None
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("format") in STATION_FORMATS:
                return [r[0] for r in db.execute("SELECT terminal_id FROM terminals")]
            return [meta_terminal_id(Path(path), meta)]
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: not a farecore journal: {exc}") from None
        finally:
            db.close()

    def close(self) -> None:
        self._db.close()

    def first_seq_from(self, time_ms: int) -> int:
        """The lowest seq timed at or after ``time_ms``; one past the last if none is."""
        found, last = [], []
        with self._reading():
            for table, index, where, args in self._seq_from:
                query = f"SELECT MIN(seq) FROM {{}} WHERE {where}time_ms >= ?"
                value = None
                if index is not None:
                    try:
                        value = self._seq(
                            query.format(f"{table} INDEXED BY {index}"), (*args, time_ms)
                        )
                    except sqlite3.OperationalError:  # an index of that name it cannot use
                        index = None
                if index is None:
                    value = self._seq(query.format(table), (*args, time_ms))
                if value is not None:
                    found.append(value)
            if found:
                return min(found)
            for table, _, where, args in self._seq_from:
                value = self._seq(f"SELECT MAX(seq) FROM {table} WHERE {where}seq > 0", args)
                if value is not None:
                    last.append(value)
        return max(last, default=0) + 1

    def _seq(self, query: str, args: tuple[int, ...]) -> int | None:
        """A query's one answer: a seq, or NULL; anything else is a damaged journal."""
        value = self._db.execute(query, args).fetchone()[0]
        if value is not None and not isinstance(value, int):
            raise JournalError(f"{self.path}: damaged journal: seq {value!r}")
        return value

    def day_range(self, start_ms: int, end_ms: int) -> tuple[int, int]:
        """``(first, last)``: the seqs of the records from ``start_ms`` to before
        ``end_ms`` by the cut rule (``last`` is ``first - 1`` when there are none).

        The cuts are found by the time column; the record on the far side of each is
        read back from its body too, so a damaged column cannot move a cut and leave
        records out. (``rows`` checks the column of every record it returns.)
        """
        first = self.first_seq_from(start_ms)
        last = max(self.first_seq_from(end_ms) - 1, first - 1)
        for seq in (first - 1, last + 1):
            self._check_time(seq)
        return first, last

    def _check_time(self, seq: int) -> None:
        with self._reading():
            row = self._db.execute(
                f"SELECT time_ms, body FROM {self._table} WHERE {self._where}seq = ?",
                (*self._args, seq),
            ).fetchone()
        if row is None:
            return
        time_ms, body = row
        if not isinstance(body, bytes):
            raise JournalError(f"{self.path}: record {seq} is garbled (its body is no blob)")
        try:
            stored = decode_record(body).time_ms
        except MalformedFile as exc:
            raise JournalError(f"{self.path}: record {seq}: {exc}") from None
        if stored != time_ms:
            raise JournalError(
                f"{self.path}: record {seq}: time column {time_ms!r} is not its time"
            )

    def hash_of(self, seq: int) -> bytes:
        if seq == 0:
            return GENESIS_HASH
        with self._reading():
            row = self._db.execute(
                f"SELECT hash FROM {self._table} WHERE {self._where}seq = ?", (*self._args, seq)
            ).fetchone()
        if row is None:
            raise JournalError(f"{self.path}: record {seq} is missing")
        if not (isinstance(row[0], bytes) and len(row[0]) == len(GENESIS_HASH)):
            raise JournalError(f"{self.path}: record {seq} is garbled (its hash)")
        return row[0]

    def records(self, first: int = 1, last: int | None = None) -> Iterator[JournalRecord]:
        """Records ``first..last`` in seq order, each checked against the chain.

        Raises JournalError on a gap, a broken link or a record that does not parse.
        """
        for record, _ in self._checked(first, last, _as_record):
            yield record

    def rows(self, first: int = 1, last: int | None = None) -> Iterator[tuple[RecordRow, bytes]]:
        """``records`` as the settlement's row tuples, with each record's stored bytes:
        the same checks, without building record objects (the nightly export)."""
        return self._checked(first, last, _as_row)

    def _checked(
        self,
        first: int,
        last: int | None,
        decode: Callable[[bytes, bytes], tuple[_T, int, int, int, bytes]],
    ) -> Iterator[tuple[_T, bytes]]:
        prev = self.hash_of(first - 1)
        expected = first
        with self._reading():
            cur = self._db.execute(
                f"SELECT seq, time_ms, body, hash FROM {self._table} "
                f"WHERE {self._where}seq >= ? AND seq <= ? ORDER BY seq",
                (*self._args, first, last if last is not None else MAX_SEQ),
            )
            for seq, time_ms, body, own in cur:
                if seq != expected:
                    raise JournalError(f"{self.path}: sequence gap: {expected} missing")
                if not (isinstance(body, bytes) and isinstance(own, bytes)):
                    raise JournalError(f"{self.path}: record {seq} is garbled (not blobs)")
                try:
                    item, terminal_id, own_seq, own_time, own_hash = decode(body, prev)
                except MalformedFile as exc:
                    raise JournalError(f"{self.path}: record {seq}: {exc}") from None
                if own_hash != own or own_seq != seq:
                    raise JournalError(f"{self.path}: record {seq} breaks the hash chain")
                if terminal_id != self.terminal_id:
                    raise JournalError(f"{self.path}: record {seq} names another terminal")
                if own_time != time_ms:  # the export cuts days by this column
                    raise JournalError(
                        f"{self.path}: record {seq}: time column {time_ms!r} is not its time"
                    )
                yield item, body
                prev = own_hash
                expected += 1
        if last is not None and expected != last + 1:
            raise JournalError(f"{self.path}: sequence gap: {expected} missing")

    def credential(self, sha256: bytes) -> bytes:
        return self.credentials([sha256])[sha256]

    def credentials(self, hashes: Iterable[bytes]) -> dict[bytes, bytes]:
        """The credentials with these SHA-256s, each checked against its hash."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[bytes, bytes] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for table in self._credential_tables:
                with self._reading():
                    rows = self._db.execute(
                        f"SELECT sha256, data FROM {table} WHERE sha256 IN ({marks})", chunk
                    ).fetchall()
                for sha, data in rows:
                    found[sha] = data  # a blob matched ``sha``; ``data`` is checked below
        for sha in wanted:
            data = found.get(sha)
            if data is None:
                raise JournalError(f"{self.path}: credential {sha.hex()[:16]}… is missing")
            if not isinstance(data, bytes) or credential_hash(data) != sha:
                raise JournalError(f"{self.path}: credential {sha.hex()[:16]}… is corrupt")
        return found

    def verify_chain(self) -> int:
        """Walk the whole chain; return the number of records or raise JournalError."""
        count = 0
        for _ in self.records(1):
            count += 1
        return count
