"""The monthly merchant report: every till's batches verified, the discounts totalled.

The alliance reimburses no one; the report serves the programme's statistics, so it
counts only what it can prove. A claim belongs to the month of its own time, strictly,
whatever batch carries it; so for one month the report reads the batches of the month
and of the day either side of it, and:

- verifies every file before believing its header (``report_batches``: a till's batch
  in full, a gate's by its registered key's signature over the whole file): a file that
  fails is a finding whatever day or terminal it names; the same bytes under two names
  are read once; a till's chain is continued across its batches with the settlement's
  admission (``farecore.settlement.admission``: seq gaps, breaks, forks, overlaps);
- checks every claim timed in the month: its context against the register, its detail
  (``parse_claim_detail``), its time within its batch's day and the clock tolerance,
  its rule against the alliance's (``farecore.merchant.rules``); and for an accepted
  claim its proof of tap, the card's validity at that time and, where the alliance gives
  the merchant a policy, the card's region and category (the settlement's order);
- across the accepted claims read (the neighbour days' too, so a tap journaled twice
  across the months' edge counts once, and those of verified batches of every earlier
  day that use a counter the month's claims use): a card counter used twice counts only
  its first use, and a use not counted names where the first is (``ClaimAt``); and the
  settlement's revocation rules (``farecore.settlement.revoked``) for the month's claims,
  with the signed tables (and deltas over them) given.

Batches of earlier days link a till's chain and show which counters were used before the
month; their claims are never counted or named. Verified batches of later days and of
terminals that are not tills are left alone. The report never raises for what a batch
holds: a bad file is a finding naming it. Its outputs depend on the set of paths given,
not on their order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from farecore.card.credential import parse_unverified
from farecore.card.crypto import PublicKey
from farecore.card.keys import Keyring
from farecore.card.proof import challenge_head, verify_card_signature, verify_credential
from farecore.decide.revocation import RevocationInForce, RevocationView
from farecore.errors import BadSignature, MalformedInput
from farecore.journal.batch import day_bounds_ms
from farecore.journal.batch_header import service_day
from farecore.journal.records import Direction, RecordRow
from farecore.merchant.claim import DiscountRule, parse_claim_detail
from farecore.merchant.config import ALLIANCE
from farecore.merchant.findings import REVIEW_KINDS, ClaimAt, Finding, from_anomaly
from farecore.merchant.report_batches import OpenedBatch, ReadRange, open_batch
from farecore.merchant.report_inputs import (
    MerchantPolicy,
    Month,
    ReportInputs,
    load_report_inputs,
)
from farecore.settlement.admission import Settled, admit
from farecore.settlement.anomalies import Anomaly
from farecore.settlement.options import MergeOptions, RevocationGeneration
from farecore.settlement.partial import Partial
from farecore.settlement.revoked import not_revoked, revocation_flags
from farecore.settlement.rides import Rides

__all__ = [
    "MerchantReport",
    "MerchantTotal",
    "Month",
    "ReportInputs",
    "exit_status",
    "load_report_inputs",
    "run_report",
]


@dataclass(frozen=True, slots=True)
class MerchantTotal:
    """One merchant's month. ``claims`` counts every claim record timed in the month that
    its checks did not set aside; ``verified`` the accepted ones that pass every check, and
    the amounts are theirs."""

    merchant: str
    tills: int
    claims: int
    denied: int
    verified: int
    amount_fen: int
    discount_fen: int
    findings: int


@dataclass(frozen=True, slots=True)
class MerchantReport:
    month: str
    totals: tuple[MerchantTotal, ...]
    findings: tuple[Finding, ...]
    stats: dict[str, int]
    batches: tuple[str, ...]  # SHA-256 hex of the month's batch files considered, sorted
    settings: dict[str, str]
    revocation: str = ""  # what the revocation check covered, in words
    # What the region and category checks covered, in words, overall and by merchant;
    # empty when merchants.csv has no policy columns (the report is then as without them).
    policy: str = ""
    policy_by_merchant: dict[str, str] = field(default_factory=dict)


def exit_status(report: MerchantReport) -> int:
    """0 nothing to review; 3 a finding to review (the outputs are written either way)."""
    return 3 if any(f.kind in REVIEW_KINDS for f in report.findings) else 0


# A credential's facts, verified once: (card id, card key, valid from, valid until,
# region, category), or why it does not verify.
_Card = tuple[int, PublicKey, int, int, int, int] | str


class _Accepted(NamedTuple):
    """An accepted claim that passed its own checks. Claims of the neighbour days, and of
    earlier days, are gathered only to find counters reused across them."""

    terminal_id: int
    seq: int
    time_ms: int
    card_id: int
    counter: int
    generation: int  # the revocation generation it was decided under, or -1
    flags: tuple[str, ...]
    merchant: str
    amount_fen: int
    discount_fen: int
    ours: bool  # timed in the month
    batch: OpenedBatch  # the verified batch that holds it

    def at(self) -> ClaimAt:
        """Where the claim is, for a finding that names it from elsewhere."""
        b = self.batch
        day = b.rows.day.isoformat()
        return ClaimAt(
            b.file, b.sha.hex(), self.terminal_id, day, self.seq, self.merchant, self.time_ms
        )


@dataclass(slots=True)
class _Month:
    """What the month gathers as its batches are checked."""

    findings: list[Finding] = field(default_factory=list)
    denied: dict[str, int] = field(default_factory=dict)
    tills: dict[str, set[int]] = field(default_factory=dict)
    accepted: list[_Accepted] = field(default_factory=list)
    card_keys: dict[bytes, _Card] = field(default_factory=dict)


def run_report(inputs: ReportInputs, paths: Sequence[str]) -> MerchantReport:
    """Verify the batches at ``paths`` and total the month's claims per merchant.

    The paths are taken in sorted order, whatever order they come in: the name a batch
    read under two names is known by, and so every output, depends only on the set."""
    month = _Month()
    opened: list[OpenedBatch] = []
    seen: set[bytes] = set()
    left: dict[str, int] = {"duplicate": 0, "not_till": 0, "later": 0}
    days = ReadRange.of(inputs.month)
    for path in sorted(paths):
        got = open_batch(path, inputs, days, seen)
        if isinstance(got, Finding):
            month.findings.append(got)
        elif isinstance(got, str):
            left[got] += 1
        else:
            opened.append(got)
    admitted = _admit(opened, inputs, month.findings)
    for o in opened:
        if o.in_month:
            month.tills.setdefault(o.info.line, set()).add(o.info.terminal_id)
            month.denied.setdefault(o.info.line, 0)
        if o.read and o.sha in admitted:
            _check_claims(o, inputs, month)
    _earlier_uses(opened, inputs, month)
    kept = _cross_checks(inputs, month)
    return _report(inputs, month, kept, opened, left)


def _admit(opened: list[OpenedBatch], inputs: ReportInputs, findings: list[Finding]) -> set[bytes]:
    """The batches that continue their till's chain (the settlement's admission, with
    each till's chain starting at its lowest batch given). Chain findings are the
    month's for its own batches and for a neighbour day's batch holding a claim timed in
    the month."""
    partials = [
        Partial(
            o.sha,
            True,
            terminal_id=o.info.terminal_id,
            day=o.rows.day.isoformat(),
            first_seq=o.rows.first_seq,
            last_seq=o.rows.last_seq,
            prev_hash=o.rows.prev_hash,
            tail_hash=o.rows.tail_hash,
            file=o.file,
        )
        for o in opened
    ]
    settled = Settled({}, lambda tid, seq, h: False, lambda tid, day: False, first_night=True)
    admission = admit(partials, settled)
    merchant = {o.sha.hex(): o.info.line for o in opened}
    low, high = inputs.month.bounds_ms(inputs.utc_offset_min)
    ours = {
        o.sha.hex()
        for o in opened
        if o.in_month or (o.read and any(low <= r.time_ms < high for r in o.rows.rows))
    }
    findings.extend(
        from_anomaly(a, merchant.get(a.batch, "")) for a in admission.anomalies if a.batch in ours
    )
    return {a.partial.batch_sha256 for a in admission.admitted}


def _earlier_uses(opened: list[OpenedBatch], inputs: ReportInputs, month: _Month) -> None:
    """The accepted claims of verified till batches of days before the read range whose
    card counter a claim of the month uses too, checked quietly as a neighbour day's are:
    a counter used months apart is still used twice. A claim of those days is timed
    before the month (its batch's day is two or more days before it, and the clock
    tolerance at most one), so it is never the month's, never counted and never named.

    The batches were verified when opened; here each record costs a set lookup, and only
    a record whose card and counter the month uses has its proof of tap checked. A record
    (a till's seq) read in two batches is one use."""
    wanted = {(c.card_id, c.counter) for c in month.accepted if c.ours}
    if not wanted:
        return
    seen = {(c.terminal_id, c.seq) for c in month.accepted}
    for o in opened:
        if o.read:
            continue
        rows = []
        for row in o.rows.rows:
            if (row.card_id, row.counter) in wanted and (row.terminal_id, row.seq) not in seen:
                seen.add((row.terminal_id, row.seq))
                rows.append(row)
        if rows:
            _check_claims(o, inputs, month, rows)


def _check_claims(
    o: OpenedBatch, inputs: ReportInputs, month: _Month, rows: list[RecordRow] | None = None
) -> None:
    """Every record of one admitted batch of the read range, or ``rows`` of an earlier
    day's verified batch (``_earlier_uses``). A claim belongs to the month of its own
    time, strictly: the month's claims are checked and counted; another month's are
    checked quietly (their own report names what fails) and kept only to find counters
    reused across the months' edge. A record timed beyond the clock tolerance outside its
    batch's day counts nowhere: the report of the batch's own month names it
    ``outside_month``."""
    info, sha = o.info, o.sha.hex()
    offset, tol = inputs.utc_offset_min, inputs.clock_tolerance_ms
    low, high = inputs.month.bounds_ms(offset)
    day_low, day_high = day_bounds_ms(o.rows.day, offset)
    day_low, day_high = day_low - tol, day_high + tol
    want = (ALLIANCE, info.line, info.place, int(Direction.CLAIM))
    for row in o.rows.rows if rows is None else rows:
        accepted = row.decision == "ACCEPT"
        ours = low <= row.time_ms < high
        placed = day_low <= row.time_ms < day_high

        if not placed and not o.in_month:
            continue  # the report of the batch's own month names it
        if placed and not ours and not accepted:
            continue  # a neighbour month's denied claim: nothing to cross-check
        loud = ours or not placed

        def flag(kind: str, detail: str, row: RecordRow = row, loud: bool = loud) -> None:
            if not loud:
                return  # a neighbour month's claim: its own month's report names it
            card = row.card_id if row.card_id is not None else -1
            month.findings.append(
                Finding(kind, row.terminal_id, row.seq, card, info.line, sha, detail, o.file)
            )

        got = (row.operator, row.line, row.place, row.direction)
        if got != want:
            context = f"{row.operator}/{row.line}/{row.place}/{_direction(row.direction)}"
            flag("context_mismatch", f"{context}, registered {'/'.join(map(str, want[:3]))}/CLAIM")
            continue
        try:
            amounts = parse_claim_detail(row.detail, accepted)
        except MalformedInput as exc:
            flag("malformed_claim", str(exc))
            continue
        if not placed:
            tol_s = tol // 1000
            flag(
                "outside_month",
                f"time {row.time_ms} is more than {tol_s} s outside the batch's day "
                f"{o.rows.day}; counted in no month",
            )
            continue
        mismatch = _rule_mismatch(inputs, info.line, row.time_ms, amounts.rule)
        if mismatch is not None:
            flag("rule_mismatch", mismatch)
            continue
        if ours:
            month.tills.setdefault(info.line, set()).add(info.terminal_id)
            month.denied.setdefault(info.line, 0)
        if not accepted:
            month.denied[info.line] += 1
            continue
        policy = None
        if inputs.policies.columns:
            policy = inputs.policies.in_force(info.line, service_day(row.time_ms, offset))
        refused = _refusal(row, inputs.keyring, o.rows.credentials, month.card_keys, policy)
        if refused is not None:
            flag(*refused)
            continue
        assert row.card_id is not None and row.counter is not None
        gen = -1 if row.revocation_generation is None else row.revocation_generation
        month.accepted.append(
            _Accepted(
                row.terminal_id,
                row.seq,
                row.time_ms,
                row.card_id,
                row.counter,
                min(gen, (1 << 63) - 1),
                row.flags,
                info.line,
                amounts.amount_fen,
                amounts.discount_fen,
                ours,
                o,
            )
        )


def _rule_mismatch(
    inputs: ReportInputs, merchant: str, time_ms: int, rule: DiscountRule
) -> str | None:
    """Why a claim's rule is not the alliance's rule in force on its day, or None."""
    day = service_day(time_ms, inputs.utc_offset_min)
    trusted = inputs.rules.in_force(merchant, day)
    if trusted is None:
        return f"no alliance rule for {merchant} in force on {day}"
    if trusted != rule:
        return f"claim's rule is {_rule(rule)}, the alliance's on {day} is {_rule(trusted)}"
    return None


def _rule(rule: DiscountRule) -> str:
    cap = "no cap" if rule.cap_fen is None else f"cap {rule.cap_fen} fen"
    return f"{rule.percent} % ({cap})"


def _direction(value: int) -> str:
    try:
        return Direction(value).name
    except ValueError:
        return str(value)


def _refusal(
    row: RecordRow,
    keyring: Keyring,
    credentials: dict[bytes, bytes],
    cache: dict[bytes, _Card],
    policy: MerchantPolicy | None = None,
) -> tuple[str, str] | None:
    """(kind, detail) of the first check an accepted claim fails, in the till's order (the
    settlement's): its proof of tap, then the till's own checks redone from the
    credential; the region and category only under a policy of the alliance's. None when
    it passes them all."""
    assert row.credential_sha256 is not None and row.counter is not None
    entry = cache.get(row.credential_sha256)
    if entry is None:
        try:
            cred = parse_unverified(credentials[row.credential_sha256])
            f = cred.fields
            key = verify_credential(cred, keyring)
            entry = (f.card_id, key, f.valid_from, f.valid_until, f.region, f.category)
        except (MalformedInput, BadSignature) as exc:
            entry = f"credential: {exc}"
        cache[row.credential_sha256] = entry
    if isinstance(entry, str):
        return "bad_proof", entry
    card_id, key, valid_from, valid_until, region, category = entry
    if card_id != row.card_id:
        return "bad_proof", f"credential is for card {card_id}"
    if challenge_head(row.challenge) != (row.terminal_id, row.time_ms):
        return "bad_proof", "challenge does not name this till and time"
    assert row.card_signature is not None
    try:
        verify_card_signature(key, card_id, row.counter, row.challenge, row.card_signature)
    except BadSignature as exc:
        return "bad_proof", f"card signature: {exc}"
    if row.time_ms < valid_from * 1000:
        return "not_yet_valid", f"valid from {valid_from}"
    if row.time_ms >= valid_until * 1000:
        return "expired", f"valid until {valid_until}"
    if policy is not None and policy.regions is not None and region not in policy.regions:
        return "wrong_region", f"region {region}: not one the alliance accepts at {row.line}"
    if policy is not None and policy.categories is not None and category not in policy.categories:
        return "category_not_accepted", (
            f"category {category}: not one the alliance accepts at {row.line}"
        )
    return None


def _cross_checks(inputs: ReportInputs, month: _Month) -> list[int]:
    """Indexes into ``month.accepted`` that count: a counter's first use only, and no
    claim a till would have refused under the revocation tables given.

    Each use of the month of a counter used twice is a ``reused_counter`` finding naming
    its own batch file; a use not counted also names the first use (``ClaimAt``), in
    whatever batch the report read it: the month's, a neighbour day's or an earlier
    day's. The first use is the earliest by time, then till and seq, so it is the same
    whatever order the batches were read in."""
    claims = month.accepted
    by_counter: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(claims):
        by_counter.setdefault((c.card_id, c.counter), []).append(i)
    dropped: set[int] = set()
    for (card, counter), group in sorted(by_counter.items()):
        if len(group) < 2:
            continue
        group.sort(key=lambda i: (claims[i].time_ms, claims[i].terminal_id, claims[i].seq))
        first = claims[group[0]]
        for k, i in enumerate(group):
            if k:
                dropped.add(i)
            c = claims[i]
            if not c.ours:
                continue  # a neighbour month's use: named by its own month's report
            month.findings.append(
                Finding(
                    "reused_counter",
                    c.terminal_id,
                    c.seq,
                    card,
                    c.merchant,
                    c.batch.sha.hex(),
                    f"counter {counter} used {len(group)} times; "
                    + ("counted (first use)" if k == 0 else "not counted"),
                    c.batch.file,
                    first.at() if k else ClaimAt(),
                )
            )
    rows = [i for i in range(len(claims)) if i not in dropped and claims[i].ours]
    if not rows:
        return rows
    rides = _rides([claims[i] for i in rows])
    opts = _revocation_options(inputs, rides.card_id)
    anomalies: list[Anomaly] = []
    keep = not_revoked(rides, opts, anomalies)
    revocation_flags(rides.take(keep), opts, anomalies)
    # The settlement's anomalies name the claim by till and seq: add its merchant and file.
    where = {(c.terminal_id, c.seq): c for c in claims}
    for a in anomalies:
        claim = where.get((a.terminal_id, a.seq))
        if claim is None:  # not reached: the anomalies are of the claims given
            month.findings.append(from_anomaly(a))
            continue
        found = from_anomaly(a, claim.merchant)
        at = claim.batch
        month.findings.append(replace(found, batch=at.sha.hex(), file=at.file))
    return [rows[i] for i in keep.tolist()]


def _rides(claims: list[_Accepted]) -> Rides:
    """Claims in the settlement's ride columns, for its revocation rules."""
    n = len(claims)
    return Rides(
        contexts=(),
        context=np.zeros(n, dtype=np.int32),
        terminal_id=np.array([c.terminal_id for c in claims], dtype=np.uint64),
        seq=np.array([c.seq for c in claims], dtype=np.uint64),
        time_ms=np.array([c.time_ms for c in claims], dtype=np.int64),
        card_id=np.array([c.card_id for c in claims], dtype=np.uint64),
        counter=np.array([c.counter for c in claims], dtype=np.int64),
        record_hash=np.zeros((n, 32), dtype=np.uint8),
        flagged={
            i: (c.flags, c.generation if c.generation >= 0 else None)
            for i, c in enumerate(claims)
            if c.flags
        },
        generation=np.array([c.generation for c in claims], dtype=np.int64),
    )


def _revocation_options(inputs: ReportInputs, cards: np.ndarray) -> MergeOptions:
    """The settlement's revocation knowledge, from the tables given."""
    cards = np.unique(cards)
    revoked: dict[int, int] = {}
    gens = []
    for table in inputs.tables:
        found = table.find_many(cards)
        hit = found >= 0
        for card, pos in zip(cards[hit].tolist(), found[hit].tolist(), strict=True):
            when = int(table.revoked_at[pos])
            revoked[card] = min(when, revoked.get(card, when))
        gens.append(RevocationGeneration(table.generation, table.created_at, _holder(table)))
    return MergeOptions(
        revoked_at=revoked,
        generations=tuple(gens),
        revocation_max_age_s=inputs.revocation_max_age_s,
    )


def _holder(table: RevocationInForce) -> Callable[[np.ndarray], np.ndarray]:
    def holds(cards: np.ndarray) -> np.ndarray:
        found: np.ndarray = table.find_many(np.ascontiguousarray(cards, dtype=np.uint64)) >= 0
        return found

    return holds


def _report(
    inputs: ReportInputs,
    month: _Month,
    kept: list[int],
    opened: list[OpenedBatch],
    left: dict[str, int],
) -> MerchantReport:
    claims = month.accepted
    merchants = sorted(month.tills)
    findings = sorted(month.findings)
    per: dict[str, list[int]] = {m: [0, 0, 0] for m in merchants}
    counted = set(kept)
    accepted_by: dict[str, int] = dict.fromkeys(merchants, 0)
    for i, c in enumerate(claims):
        if not c.ours:
            continue
        accepted_by[c.merchant] += 1
        if i in counted:
            p = per[c.merchant]
            p[0] += 1
            p[1] += c.amount_fen
            p[2] += c.discount_fen
    found_by: dict[str, int] = {}
    for f in findings:
        found_by[f.merchant] = found_by.get(f.merchant, 0) + 1
    totals = tuple(
        MerchantTotal(
            m,
            len(month.tills[m]),
            accepted_by[m] + month.denied[m],
            month.denied[m],
            per[m][0],
            per[m][1],
            per[m][2],
            found_by.get(m, 0),
        )
        for m in merchants
    )
    in_month = [o for o in opened if o.in_month]
    neighbours = sum(o.read and not o.in_month for o in opened)
    stats = {
        "batches": len(in_month),
        "batches_rejected": sum(f.kind in ("batch_rejected", "unknown_terminal") for f in findings),
        "batches_of_neighbour_days": neighbours,
        "batches_of_earlier_days": len(opened) - len(in_month) - neighbours,
        "files_duplicate": left["duplicate"],
        # verified batches left alone: a later day's till batch, or a gate's (its
        # signature checked, its records not read), which ``files_not_till`` counts
        "files_skipped": left["not_till"] + left["later"],
        "files_not_till": left["not_till"],
        "merchants": len(merchants),
        "claims": sum(t.claims for t in totals),
        "verified": sum(t.verified for t in totals),
        "amount_fen": sum(t.amount_fen for t in totals),
        "discount_fen": sum(t.discount_fen for t in totals),
        "findings": len(findings),
    }
    policy, by_merchant = _policy(inputs, merchants)
    return MerchantReport(
        str(inputs.month),
        totals,
        tuple(findings),
        stats,
        tuple(sorted(o.sha.hex() for o in in_month)),
        {**inputs.settings, "clock_tolerance_s": str(inputs.clock_tolerance_ms // 1000)},
        _revocation_words(inputs),
        policy,
        by_merchant,
    )


def _revocation_words(inputs: ReportInputs) -> str:
    if not inputs.tables:
        return "not checked: no table given"
    gens = ", ".join(
        f"{t.generation} (a delta over {t.base.generation})"
        if isinstance(t, RevocationView)
        else str(t.generation)
        for t in inputs.tables
    )
    return f"checked against generation {gens}"


def _policy(inputs: ReportInputs, merchants: list[str]) -> tuple[str, dict[str, str]]:
    """What the region and category checks covered, overall and for each merchant of the
    month (on how many of the month's days the rule in force gave it regions, and
    categories, to check its claims against), in words; nothing without policy columns."""
    if not inputs.policies.columns:
        return "", {}
    start = dt.date(inputs.month.year, inputs.month.month, 1)
    n = (ReadRange.of(inputs.month).last - start).days
    words: dict[str, str] = {}
    full = [0, 0]
    for m in merchants:
        policies = [inputs.policies.in_force(m, start + dt.timedelta(days=i)) for i in range(n)]
        region = sum(p is not None and p.regions is not None for p in policies)
        category = sum(p is not None and p.categories is not None for p in policies)
        words[m] = f"region {_days(region, n)}, category {_days(category, n)}"
        full[0] += region == n
        full[1] += category == n
    if merchants and full == [len(merchants)] * 2:
        return "region and category checked for every merchant", words
    overall = f"region checked for {full[0]} of {len(merchants)} merchants, category for {full[1]}"
    return overall, words


def _days(checked: int, days: int) -> str:
    if checked == days:
        return "checked"
    return f"checked on {checked} of {days} days" if checked else "not checked"
