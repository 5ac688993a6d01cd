"""One gate's view of a station journal: the ``RideLog`` a station's gate writes to.

The station controller owns the journal (``farecore.journal.station``); a gate only
stages its rides into the open group and asks for the group's commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from farecore.decide.decision import Decision
    from farecore.journal.records import TapContext
    from farecore.journal.station import StationJournal

__all__ = ["StationTerminal"]


class StationTerminal:
    """One gate's view of a station journal (the gate's ``RideLog``): ``stage`` puts the
    ride in the station's open group, ``commit`` makes the group durable."""

    __slots__ = ("station", "terminal_id")

    def __init__(self, station: StationJournal, terminal_id: int) -> None:
        self.station = station
        self.terminal_id = terminal_id

    def stage(self, decision: Decision, ctx: TapContext) -> None:
        self.station.stage(self.terminal_id, decision, ctx)

    def append(self, decision: Decision, ctx: TapContext) -> int:
        """Stage and commit at once: durable on return (a gate run on its own)."""
        seq = self.station.stage(self.terminal_id, decision, ctx)
        self.station.commit()
        return seq

    def commit(self) -> None:
        """Commit the station's open group (this gate's staged ride with it)."""
        self.station.commit()

    def close(self) -> None:
        """The station journal belongs to the controller, which closes it."""
