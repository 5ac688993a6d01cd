"""The two stateful checks the validator asks about: revocation and anti-passback.

Both sit behind small protocols so the validator does not care where the answers come
from. The real ones are the memory-mapped revocation table (``farecore.decide.revocation``) and
the durable passback store (``farecore.journal.passback``); the in-memory ones here serve tests
and the vectors.

A revocation *source* hands out immutable *snapshots*. The validator takes one snapshot
per tap, so the generation it records is the generation it looked up in, even when a
newer table is swapped in mid-tap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from farecore.decide.decision import Reason

__all__ = [
    "NO_PASSBACK",
    "InMemoryRevocation",
    "NoPassback",
    "PassbackCheck",
    "RevocationEntry",
    "RevocationSnapshot",
    "RevocationSource",
]


@dataclass(frozen=True, slots=True)
class RevocationEntry:
    """Why and since when a card id is revoked. ``revoked_at`` is UTC Unix seconds."""

    card_id: int
    revoked_at: int
    reason: int


class RevocationSnapshot(Protocol):
    """One verified revocation table, immutable while anyone holds it."""

    @property
    def generation(self) -> int: ...

    @property
    def created_at(self) -> int:
        """UTC Unix seconds at which the table was built (its age is measured from here)."""
        ...

    def lookup(self, card_id: int) -> RevocationEntry | None: ...


class RevocationSource(Protocol):
    """Whatever holds the table in force; ``snapshot()`` must be cheap and never block."""

    def snapshot(self) -> RevocationSnapshot: ...


class InMemoryRevocation:
    """A fixed set of revoked ids, as its own source and snapshot."""

    __slots__ = ("_created_at", "_entries", "_generation")

    def __init__(
        self,
        entries: Iterable[RevocationEntry] | Mapping[int, RevocationEntry] = (),
        generation: int = 0,
        created_at: int = 0,
    ) -> None:
        items = entries.values() if isinstance(entries, Mapping) else entries
        self._entries = {e.card_id: e for e in items}
        self._generation = generation
        self._created_at = created_at

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def created_at(self) -> int:
        return self._created_at

    def lookup(self, card_id: int) -> RevocationEntry | None:
        return self._entries.get(card_id)

    def snapshot(self) -> InMemoryRevocation:
        return self


class PassbackCheck(Protocol):
    """Anti-passback state of one gate, or a venue gate's one-entry-a-day state.

    ``refuses`` only reads; ``record`` is called by the gate once the ride is durably
    journaled, so a tap the gate did not open for never locks a card out. ``reason`` is
    the deny a refusal gives: PASSBACK, or ALREADY_ENTERED at a venue (CARD-SPEC §7).
    """

    @property
    def reason(self) -> Reason: ...

    def refuses(self, card_id: int, now_ms: int) -> bool: ...

    def record(self, card_id: int, now_ms: int) -> None: ...


class NoPassback:
    """A gate with no passback rule (for example a metro exit)."""

    __slots__ = ()

    @property
    def reason(self) -> Reason:
        return Reason.PASSBACK

    def refuses(self, card_id: int, now_ms: int) -> bool:
        return False

    def record(self, card_id: int, now_ms: int) -> None:
        return None


NO_PASSBACK = NoPassback()
