"""The operators' anti-passback rules, re-applied across all the gates of a place.

Per (operator, place), or per terminal with ``passback_scope = "terminal"``, and per
card, rides are walked in time order as the gates walk them: a ride less than the
window after the last ride let through there is refused, and a refused ride does not
restart the window. Rides earlier nights took count as let through. Arrays find the few
(place, card) groups that need the walk; the walk itself is exact, in Python integers.

A venue operator's entries walk the same way per (operator, site, card) with time counted
in service days and a window of one day: an entry on a day the card already entered the
site is refused (``already_entered``), as the site's gates refuse it (ALREADY_ENTERED).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from farecore.settlement.anomalies import Anomaly
from farecore.settlement.fares import FareTable
from farecore.settlement.ledger import TakenRide
from farecore.settlement.rides import Rides
from farecore.settlement.terminals import TerminalInfo

__all__ = ["passback"]

_Group = tuple[int, int]  # (place key, card id)


def passback(
    rides: Rides,
    context: list[TakenRide],
    fares: FareTable,
    terminals: Mapping[int, TerminalInfo],
    anomalies: list[Anomaly],
) -> np.ndarray:
    """Rows the operators' anti-passback rules let through, walked as the gates do;
    ``context`` holds the rides earlier nights took around the day."""
    n = len(rides)
    window, daily = _windows(rides, fares)
    subject = np.flatnonzero(window > 0)
    if not len(subject):
        return np.arange(n)
    places = _PlaceKeys(fares)
    key = places.of_rides(rides, subject)
    anchor_at = _anchors(context, fares, terminals, places)
    card = rides.card_id[subject]
    tms = rides.time_ms[subject]
    o = np.lexsort((rides.seq[subject], rides.terminal_id[subject], tms, card, key))
    k, c, w, by_day = key[o], card[o], window[subject][o], daily[subject][o]
    # A venue's time is its service day: entries a window of one day apart never refuse.
    day_ms = 86_400_000
    t = np.where(by_day, (tms[o] + fares.utc_offset_min * 60_000) // day_ms, tms[o])
    suspects = _suspects(k, c, t, w, anchor_at)
    if not suspects:
        return np.arange(n)
    refused = np.zeros(n, dtype=bool)
    for g, idx in _groups(k, c, suspects).items():
        for i, gap in _walk(t, w, idx, anchor_at.get(g, [])):
            row = int(subject[o[i]])
            refused[row] = True
            tid, seq, card_id = rides.where(row)
            kind, detail = (
                ("already_entered", "the card entered this site earlier on its service day")
                if by_day[i]
                else ("passback", f"{gap} ms after the card's last ride there")
            )
            anomalies.append(
                Anomaly(kind, terminal_id=tid, seq=seq, card_id=card_id, detail=detail)
            )
    return np.flatnonzero(~refused)


def _windows(rides: Rides, fares: FareTable) -> tuple[np.ndarray, np.ndarray]:
    """Each ride's passback window (0: no rule), in ms, or 1 (service day) for a venue
    entry; and which rides follow the venue rule, from their context's operator."""
    windows = np.zeros(len(rides.contexts), dtype=np.int64)
    daily = np.zeros(len(rides.contexts), dtype=bool)
    for code, (op, _line, _place, direction) in enumerate(rides.contexts):
        policy = fares.policy(op)
        if policy is not None and policy.daily(direction):
            windows[code], daily[code] = 1, True
        else:
            windows[code] = 0 if policy is None else policy.window_s(direction) * 1000
    if not len(rides):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    return windows[rides.context], daily[rides.context]


class _PlaceKeys:
    """A small integer per place a passback state is kept for: (operator, place), or
    (operator, place, terminal) for an operator whose scope is the terminal."""

    def __init__(self, fares: FareTable) -> None:
        self.fares = fares
        self.keys: dict[tuple[str, str, int], int] = {}

    def of(self, terminal_id: int, op: str, line: str, place: str, direction: int) -> int:
        """A venue's state is its site's (a venue gate's line), shared by its entrances."""
        policy = self.fares.policy(op)
        if policy is not None and policy.daily(direction):
            return self.keys.setdefault((op, f"site:{line}", -2), len(self.keys))
        per_gate = policy is not None and policy.passback_scope == "terminal"
        return self.keys.setdefault((op, place, terminal_id if per_gate else -1), len(self.keys))

    def of_rides(self, rides: Rides, subject: np.ndarray) -> np.ndarray:
        """The key of each row in ``subject``, from its terminal (whose rides all share
        one context)."""
        terms, first, inverse = np.unique(
            rides.terminal_id[subject], return_index=True, return_inverse=True
        )
        per_terminal = np.zeros(len(terms), dtype=np.int64)
        for i, (tid, row) in enumerate(zip(terms.tolist(), first.tolist(), strict=True)):
            op, line, place, direction = rides.contexts[int(rides.context[subject[row]])]
            per_terminal[i] = self.of(tid, op, line, place, direction)
        return per_terminal[inverse]


def _anchors(
    context: list[TakenRide],
    fares: FareTable,
    terminals: Mapping[int, TerminalInfo],
    places: _PlaceKeys,
) -> dict[_Group, list[int]]:
    """The times of rides earlier nights took, by (place key, card), where a rule applies
    (a venue entry's as its service day)."""
    anchor_at: dict[_Group, list[int]] = {}
    for taken in context:
        info = terminals.get(taken.terminal_id)
        rule = fares.policy(info.operator) if info is not None else None
        if info is None or rule is None:
            continue
        direction = int(info.direction)
        by_day = rule.daily(direction)
        if not by_day and not rule.window_s(direction):
            continue
        anchor_key = places.of(taken.terminal_id, info.operator, info.line, info.place, direction)
        at = taken.time_ms
        if by_day:
            at = (at + fares.utc_offset_min * 60_000) // 86_400_000
        anchor_at.setdefault((anchor_key, taken.card_id), []).append(at)
    return anchor_at


def _suspects(
    k: np.ndarray, c: np.ndarray, t: np.ndarray, w: np.ndarray, anchor_at: dict[_Group, list[int]]
) -> set[_Group]:
    """Only (place, card) groups with two rides inside a window, or a ride taken before,
    need the exact walk; on an honest night that is a handful. Rows are in (key, card,
    time) order."""
    same = (k[1:] == k[:-1]) & (c[1:] == c[:-1])
    close = np.zeros(len(k), dtype=bool)
    close[1:] = same & (t[1:] - t[:-1] < w[1:])
    suspects = {(int(k[i]), int(c[i])) for i in np.flatnonzero(close).tolist()}
    if anchor_at:
        cards_before = np.fromiter({g[1] for g in anchor_at}, dtype=np.uint64)
        near = np.flatnonzero(np.isin(c, cards_before))
        present = set(zip(k[near].tolist(), c[near].tolist(), strict=True))
        suspects |= {g for g in anchor_at if g in present}
    return suspects


def _groups(k: np.ndarray, c: np.ndarray, suspects: set[_Group]) -> dict[_Group, list[int]]:
    groups: dict[_Group, list[int]] = {}
    for i, (ki, ci) in enumerate(zip(k.tolist(), c.tolist(), strict=True)):
        if (ki, ci) in suspects:
            groups.setdefault((ki, ci), []).append(i)
    return groups


def _walk(
    t: np.ndarray, w: np.ndarray, idx: list[int], anchors: list[int]
) -> list[tuple[int, int]]:
    """(row, ms since the last ride let through) of each ride of one group refused."""
    events = [(int(t[i]), 1, i) for i in idx] + [(at, 0, -1) for at in anchors]
    events.sort()
    refused: list[tuple[int, int]] = []
    last: int | None = None
    for when, is_ride, i in events:
        if not is_ride:
            last = when if last is None else max(last, when)
            continue
        if last is not None and 0 <= when - last < int(w[i]):
            refused.append((i, when - last))
            continue
        last = when
    return refused
