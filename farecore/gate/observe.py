"""What a gate tells whoever watches it: each tap it served, and its reader going and coming.

The gate calls a :class:`GateObserver` (``Gate.observer``) from its loop; the fleet layer's
metrics (``farecore.fleet.metrics``) implement it. Nothing here knows how the news is
kept or served, and an observer must never raise into the gate or block it: it runs on
the tap path, after the gate has opened. The default, :data:`NO_OBSERVER`, does nothing.
"""

from __future__ import annotations

from typing import Protocol

from farecore.decide.decision import Decision

__all__ = ["NO_OBSERVER", "GateObserver"]


class GateObserver(Protocol):
    """Told by a ``farecore.gate.runtime.Gate`` what happens to it, as it happens."""

    def decided(self, decision: Decision) -> None:
        """A tap was served: its ride is durable and the gate has opened or refused."""
        ...

    def reader_lost(self, detail: str) -> None:
        """The reader failed; the gate retries it and serves no card meanwhile."""
        ...

    def reader_back(self) -> None:
        """The reader answers again after ``reader_lost``: a reconnect."""
        ...


class _NoObserver:
    """Watches nothing: a gate without metrics pays one empty call per tap."""

    __slots__ = ()

    def decided(self, decision: Decision) -> None:
        return None

    def reader_lost(self, detail: str) -> None:
        return None

    def reader_back(self) -> None:
        return None


NO_OBSERVER: GateObserver = _NoObserver()
