"""The validator: from what a card said to ACCEPT or DENY with one reason.

Checks run in the precedence order of CARD-SPEC §7 and the first failure is reported,
so the reason never depends on which check happens to be cheaper. A credential whose
issuer signature verified once is cached by its exact bytes; a repeat tap then costs one
card-signature verification. With the issuer's signed list of the credentials it issued
(``farecore.decide.issued``), a listed credential needs no issuer verification even on its first
tap; the decision is the same either way.

The validator reads no clock (``now_ms`` is passed in) and never changes passback
state: the gate records a ride there only after the journal has it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from farecore.card.credential import Credential
from farecore.card.crypto import load_public_key
from farecore.card.keys import Keyring
from farecore.card.proof import verify_card_signature
from farecore.card.transaction import Outcome, TransactionResult
from farecore.decide.checks import NO_PASSBACK, InMemoryRevocation, PassbackCheck, RevocationSource
from farecore.decide.clockguard import ClockGuard
from farecore.decide.decision import Decision, Reason, Timings
from farecore.errors import BadSignature, MalformedInput

if TYPE_CHECKING:
    from farecore.decide.issued import IssuedList

__all__ = ["ALL_CATEGORIES", "TerminalPolicy", "Validator"]

ALL_CATEGORIES = frozenset({1, 2, 3, 4, 5})
_STALE_POLICIES = ("closed", "open")
_NO_CARD_KEY = object()


@dataclass(frozen=True, slots=True)
class TerminalPolicy:
    """What one terminal accepts.

    ``revocation_max_age_s``: a table older than this (by its created-at) is stale; then
    ``stale_policy`` "closed" denies with REVOCATION_STALE and "open" accepts with the
    ride flagged ``revocation_stale``. None disables the age check.
    """

    terminal_id: int
    accepted_regions: frozenset[int]
    accepted_categories: frozenset[int] = ALL_CATEGORIES
    revocation_max_age_s: int | None = None
    stale_policy: str = "closed"

    def __post_init__(self) -> None:
        if not 0 <= self.terminal_id <= 0xFFFFFFFFFFFFFFFF:
            raise ValueError("terminal id must be a uint64")
        object.__setattr__(self, "accepted_regions", frozenset(self.accepted_regions))
        object.__setattr__(self, "accepted_categories", frozenset(self.accepted_categories))
        if not self.accepted_regions:
            raise ValueError("a terminal must accept at least one region")
        if self.stale_policy not in _STALE_POLICIES:
            raise ValueError(f"stale_policy must be 'closed' or 'open', not {self.stale_policy!r}")
        if self.revocation_max_age_s is not None and self.revocation_max_age_s <= 0:
            raise ValueError("revocation_max_age_s must be positive")


_NO_FLAGS: frozenset[str] = frozenset()
_STALE_FLAGS = frozenset({"revocation_stale"})
_NO_TIMINGS = Timings()

# What the checks found: (reason or None, detail, flags, revocation generation consulted).
_Verdict = tuple[Reason | None, str, frozenset[str], int | None]


_Trust = tuple["Keyring", dict[int, "IssuedList"], dict[bytes, object]]


def _trust(keyring: Keyring, issued: Sequence[IssuedList], cache: dict[bytes, object]) -> _Trust:
    # One list per issuer key; of two for the same key, the later generation.
    by_generation = sorted(issued, key=lambda listed: listed.generation)
    return keyring, {lst.key_id: lst for lst in by_generation}, cache


class Validator:
    """Decides taps for one terminal. Not thread-safe: one validator per gate loop."""

    __slots__ = (
        "_cache_size",
        "_trust",
        "clock",
        "issuer_checks",
        "issuer_vouched",
        "passback",
        "policy",
        "revocation",
    )

    def __init__(
        self,
        policy: TerminalPolicy,
        keyring: Keyring,
        revocation: RevocationSource | None = None,
        passback: PassbackCheck = NO_PASSBACK,
        cache_size: int = 100_000,
        cache: dict[bytes, object] | None = None,
        issued: Sequence[IssuedList] = (),
        clock: ClockGuard | None = None,
    ) -> None:
        """``cache``: a credential cache to share, e.g. among the gates of one station
        controller that trust the same keyring. Never share it across keyrings.
        ``issued``: the issuer's lists of the credentials it issued (one per issuer key),
        each verified against this ``keyring``. ``clock``: the guard that turns a tap
        time behind what the gate has seen into CLOCK_FAULT (none: no such check)."""
        self.policy = policy
        self.revocation: RevocationSource = revocation or InMemoryRevocation()
        self.passback = passback
        self.clock = clock
        self._cache_size = cache_size
        self._trust: _Trust = _trust(keyring, issued, {} if cache is None else cache)
        self.issuer_checks = 0  # issuer signatures verified (credentials not in the cache)
        self.issuer_vouched = 0  # credentials the issued list vouched for instead

    @property
    def keyring(self) -> Keyring:
        return self._trust[0]

    @property
    def issued(self) -> dict[int, IssuedList]:
        """The issued list in force for each issuer key."""
        return self._trust[1]

    def set_trust(
        self,
        keyring: Keyring,
        issued: Sequence[IssuedList] = (),
        cache: dict[bytes, object] | None = None,
    ) -> None:
        """Put a new keyring and its issued lists in force (a new parameter package).

        The credential cache goes with them: a credential verified under the old keyring
        must be verified again under the new one, where its key may be revoked. The three
        are swapped in one assignment, so a tap sees the old ones or the new ones, never a
        mix; a tap under way finishes on the old (and caches into the old cache, which
        nothing reads any more). ``cache``: a new cache to share among the gates of one
        station controller."""
        self._trust = _trust(keyring, issued, {} if cache is None else cache)

    def _card_key(self, credential: Credential) -> tuple[object, Reason | None, str]:
        """Issuer checks, cached by exact credential bytes once they pass."""
        keyring, issued, cache = self._trust  # one read: one consistent set per tap
        cached = cache.get(credential.raw)
        if cached is not None:
            return cached, None, ""
        f = credential.fields
        issuer = keyring.resolve(f.issuer_key_id, f.issuer_algorithm, f.valid_from)
        if issuer is None:
            return None, Reason.UNKNOWN_ISSUER_KEY, f"issuer key id {f.issuer_key_id} not usable"
        listed = issued.get(f.issuer_key_id)
        if listed is not None and listed.vouches(credential, issuer):
            self.issuer_vouched += 1  # the issuer signed the list that holds it
        else:
            self.issuer_checks += 1
            try:
                issuer.verify(credential.issuer_signature, credential.signed_message)
            except BadSignature as exc:
                return None, Reason.BAD_CREDENTIAL_SIGNATURE, str(exc)
        key: object
        try:
            key = load_public_key(f.card_key_algorithm, f.card_public_key)
        except MalformedInput:
            key = _NO_CARD_KEY  # issuer signed a key that is no curve point: no tap can pass
        if len(cache) >= self._cache_size:
            del cache[next(iter(cache))]
        cache[credential.raw] = key
        return key, None, ""

    def decide(
        self,
        result: TransactionResult,
        challenge: bytes,
        now_ms: int,
        timer: Callable[[], Timings] | None = None,
    ) -> Decision:
        """Turn one transaction's result into a Decision. Never raises for card data.

        ``timer`` is called once the checks are done and gives the tap's timings, so the
        decision is built once, complete (``farecore.gate.tap.run_tap`` passes one)."""
        cred = result.credential
        verdict: _Verdict
        # Every tap's time goes through the guard, an unreadable one's too: a fault is
        # noted (and made durable by the gate) before any record with that time is written.
        fault = None
        if self.clock is not None:
            fault = self.clock.check(now_ms, self.revocation.snapshot().created_at * 1000)
        if result.outcome is Outcome.UNREADABLE or cred is None:
            verdict = (Reason.UNREADABLE, result.detail, _NO_FLAGS, None)
        elif fault:
            verdict = (Reason.CLOCK_FAULT, fault, _NO_FLAGS, None)
        elif result.outcome is Outcome.BLOCKED:
            verdict = (Reason.CARD_BLOCKED, result.detail, _NO_FLAGS, None)
        else:
            verdict = self._check(cred, result.counter, result.signature, challenge, now_ms)
        reason, detail, flags, generation = verdict
        return Decision(
            accepted=reason is None,
            reason=reason,
            terminal_id=self.policy.terminal_id,
            time_ms=now_ms,
            challenge=challenge,
            card_id=cred.card_id if cred is not None else None,
            credential=cred.raw if cred is not None else None,
            counter=result.counter,
            card_signature=result.signature,
            revocation_generation=generation,
            flags=flags,
            detail=detail,
            timings=timer() if timer is not None else _NO_TIMINGS,
        )

    def _check(
        self,
        cred: Credential,
        counter: int | None,
        signature: bytes | None,
        challenge: bytes,
        now_ms: int,
    ) -> _Verdict:
        """Run checks 3 to 10 in order; the first failure is the verdict."""
        key, reason, detail = self._card_key(cred)
        if reason is not None:
            return (reason, detail, _NO_FLAGS, None)
        f = cred.fields
        policy = self.policy
        if now_ms < f.valid_from * 1000:
            return (Reason.NOT_YET_VALID, "", _NO_FLAGS, None)
        if now_ms >= f.valid_until * 1000:
            return (Reason.EXPIRED, "", _NO_FLAGS, None)
        if f.region not in policy.accepted_regions:
            return (Reason.WRONG_REGION, f"region {f.region}", _NO_FLAGS, None)
        if f.category not in policy.accepted_categories:
            return (Reason.CATEGORY_NOT_ACCEPTED, f"category {f.category}", _NO_FLAGS, None)
        snapshot = self.revocation.snapshot()
        generation = snapshot.generation
        entry = snapshot.lookup(f.card_id)
        if entry is not None:
            detail = f"revoked at {entry.revoked_at}, reason {entry.reason}"
            return (Reason.REVOKED, detail, _NO_FLAGS, generation)
        flags = _NO_FLAGS
        max_age = policy.revocation_max_age_s
        if max_age is not None and now_ms - snapshot.created_at * 1000 > max_age * 1000:
            if policy.stale_policy == "closed":
                detail = f"revocation generation {generation} is older than {max_age} s"
                return (Reason.REVOCATION_STALE, detail, _NO_FLAGS, generation)
            flags = _STALE_FLAGS
        if key is _NO_CARD_KEY or counter is None or signature is None:
            return (Reason.CARD_AUTH_FAILED, "card key unusable", flags, generation)
        try:
            verify_card_signature(key, f.card_id, counter, challenge, signature)  # type: ignore[arg-type]
        except BadSignature as exc:
            return (Reason.CARD_AUTH_FAILED, str(exc), flags, generation)
        passback = self.passback
        if passback.refuses(f.card_id, now_ms):
            return (passback.reason, "", flags, generation)
        return (None, "", flags, generation)
