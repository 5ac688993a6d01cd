"""Chaining taps: each terminal's gap-free sequence and hash chain, and the credentials
already stored.

Both journals chain through one ``Chain``: a terminal's own journal (one terminal) and a
station's (several). ``link`` turns a decided tap into the row its journal stores, and
names the credential to store with it when the file does not hold it yet. A chain moves
on as taps are linked; a journal whose write failed and that goes on writing
(the terminal's) ``rewind``s it to where the file is.

This module must never read a clock: record times come from the decision.
"""

from __future__ import annotations

from collections.abc import Iterable

from farecore.decide.decision import Decision
from farecore.errors import JournalError
from farecore.journal.records import TapContext, chain_hash, credential_hash, encode_tap

__all__ = ["KNOWN_MAX", "Chain", "Link"]

# terminal_id, seq, time_ms, card_id (as SQLite stores it), body, hash
Link = tuple[int, int, int, int | None, bytes, bytes]
# Credentials remembered as already stored (a city of 300,000 cards fits). Forgetting one
# only costs a statement: credentials are written with INSERT OR IGNORE in the end.
KNOWN_MAX = 400_000
_U63 = 1 << 63
_U64 = 1 << 64


class Chain:
    """The head (last seq, its hash) of each terminal, and the credentials stored."""

    __slots__ = ("_heads", "_known")

    def __init__(self, heads: dict[int, tuple[int, bytes]]) -> None:
        self._heads = dict(heads)
        self._known: dict[bytes, bytes] = {}  # credential -> its SHA-256

    def __contains__(self, terminal_id: object) -> bool:
        return terminal_id in self._heads

    def head(self, terminal_id: int) -> tuple[int, bytes]:
        """(last seq, its hash) of a terminal, counting every tap linked."""
        return self._heads[terminal_id]

    def link(
        self, terminal_id: int, decision: Decision, ctx: TapContext
    ) -> tuple[Link, tuple[bytes, bytes] | None]:
        """Chain one tap onto its terminal: its row, and (SHA-256, credential) when the
        credential is new (to be stored in the same transaction)."""
        if decision.terminal_id != terminal_id:
            raise JournalError(
                f"decision of terminal {decision.terminal_id} in the chain of {terminal_id}"
            )
        try:
            seq, head = self._heads[terminal_id]
        except KeyError:
            raise JournalError(f"terminal {terminal_id} has no chain here") from None
        seq += 1
        credential = decision.credential
        cred_hash = new = None
        if credential is not None:
            cred_hash = self._known.get(credential)
            if cred_hash is None:
                cred_hash = credential_hash(credential)
                new = (cred_hash, credential)
        body = encode_tap(terminal_id, seq, decision, ctx, cred_hash)
        own = chain_hash(head, body)
        if new is not None:  # only a tap that encoded: a failed one leaves no trace
            if len(self._known) >= KNOWN_MAX:
                self._known.clear()
            self._known[new[1]] = new[0]
        card_id = decision.card_id
        if card_id is not None and card_id >= _U63:
            card_id -= _U64  # as records.sql_int, inline on the hot path
        self._heads[terminal_id] = (seq, own)
        return (terminal_id, seq, decision.time_ms, card_id, body, own), new

    def rewind(self, terminal_id: int, head: tuple[int, bytes], unstored: Iterable[bytes]) -> None:
        """Undo links that were not written: the terminal's head back to ``head``, and
        the credentials ``unstored`` no longer counted as stored."""
        self._heads[terminal_id] = head
        for credential in unstored:
            self._known.pop(credential, None)
