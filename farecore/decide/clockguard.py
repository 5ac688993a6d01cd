"""CLOCK_FAULT (CARD-SPEC §7): a gate's clock behind a time it has durably seen.

A gate whose clock was set back (by a day, or to 2022) would find expired cards valid
and an old revocation table fresh. It cannot know the true time, but it knows times it
has seen: its own last record and the creation time of the table it holds. A clock
behind the later of them by more than the tolerance is a fault, and while it lasts the
gate decides nothing else: every tap is a DENY CLOCK_FAULT.

``ClockGuard`` reads no clock and writes no file: the validator passes it the tap's
time, and ``on_change`` tells the gate when a fault starts or ends (the gate makes the
time mark durable and says so loudly).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["DEFAULT_TOLERANCE_S", "ClockGuard"]

DEFAULT_TOLERANCE_S = 300


class ClockGuard:
    """The latest time seen (``floor_ms``) and how far behind it a clock may be."""

    __slots__ = ("faulted", "floor_ms", "on_change", "tolerance_ms")

    def __init__(
        self,
        floor_ms: int = 0,
        tolerance_s: int = DEFAULT_TOLERANCE_S,
        on_change: Callable[[bool, int, int], None] | None = None,
    ) -> None:
        if tolerance_s < 0:
            raise ValueError("the clock tolerance must be >= 0 s")
        self.floor_ms = floor_ms
        self.tolerance_ms = tolerance_s * 1000
        self.on_change = on_change  # (faulted, now_ms, floor_ms)
        self.faulted = False

    def check(self, now_ms: int, table_created_ms: int = 0) -> str | None:
        """None if ``now_ms`` can be trusted (it then raises the floor); else why not."""
        floor = self.floor_ms if self.floor_ms >= table_created_ms else table_created_ms
        if now_ms + self.tolerance_ms < floor:
            if not self.faulted:
                self.faulted = True
                if self.on_change is not None:
                    self.on_change(True, now_ms, floor)
            what = "the revocation table's creation" if floor == table_created_ms else "a time"
            return f"clock is {(floor - now_ms) // 1000} s behind {what} this terminal has seen"
        if now_ms > floor:
            self.floor_ms = now_ms
        elif floor > self.floor_ms:
            self.floor_ms = floor
        if self.faulted:
            self.faulted = False
            if self.on_change is not None:
                self.on_change(False, now_ms, floor)
        return None
