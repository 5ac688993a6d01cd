"""A station journal's passback state: an append-only log of lockouts, and its replay.

The file keeps the state as a log, not as a table keyed by card: a lockout is one row
added at the end, a prune one row naming its place and limits, and a reopen replays the
log in order. Keyed rows would put each tap's lockout on a random page of the file, and
every page a commit touches is written, checksummed and synced again; the log's rows of
a group share one or two pages. The journal (``farecore.journal.station``) keeps the
replayed state in memory and stages the log's new rows with each group.
"""

from __future__ import annotations

from collections.abc import Iterable

from farecore.journal.passback import forgets

__all__ = ["LogRow", "PassbackRow", "log_cut", "prune_place", "replay_passback"]

PassbackRow = tuple[int, int, str, int]  # wall_ms, mono_ms, boot, its row in the log
LogRow = tuple[int, str, int | None, int, int, str]  # id, place, card_id, wall, mono, boot


def prune_place(
    rows: dict[int, PassbackRow], wall_before: int, boot: str, mono_before: int
) -> None:
    """Drop a place's rides that can no longer refuse."""
    limits = (wall_before, boot, mono_before)
    for card, (wall, mono, b, _) in list(rows.items()):
        if forgets(wall, mono, b, limits):
            del rows[card]


def replay_passback(log: Iterable[LogRow]) -> dict[str, dict[int, PassbackRow]]:
    """The passback state a log leaves: place -> card -> its last ride, in log order."""
    state: dict[str, dict[int, PassbackRow]] = {}
    for row_id, place, card, wall, mono, boot in log:
        rows = state.setdefault(place, {})
        if card is None:
            prune_place(rows, wall, boot, mono)
        else:
            rows[card] = (wall, mono, boot, row_id)
    return state


def log_cut(
    state: dict[str, dict[int, PassbackRow]], first: int, next_id: int, keep: int, slack: int
) -> int | None:
    """The id to cut the log below, once its rows ``first .. next_id - 1`` number more
    than ``keep`` per live lockout plus ``slack`` (a cut then removes at least about half
    of them); None while they do not."""
    live = sum(len(rows) for rows in state.values())
    if next_id - first <= keep * live + slack:
        return None
    # Every row below the oldest live lockout was replaced or pruned, and so was every
    # row a prune row below it had pruned: the replay needs none of them.
    return min((r[3] for rows in state.values() for r in rows.values()), default=next_id)
