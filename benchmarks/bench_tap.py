"""Engine-only tap time through the virtual reader, against the raw card-signature cost.

A tap is timed from "card present" to the decision: SELECT, READ CREDENTIAL, INTERNAL
AUTHENTICATE (the virtual card signs), and the validator's checks (the terminal verifies),
with the clock guard a gate runs (farecore.decide.clockguard).
The durable journal is off. The baseline, measured interleaved in the same loop, is the
irreducible crypto of one tap: one card signature plus one verification of it, on the
Ed25519 backend farecore uses (libsodium with the ``nacl`` extra; the other, OpenSSL,
is timed too, for comparison). For SM2
cards (SM2 issuer, SM2 card key; the ``sm`` extra) that baseline is the library itself,
gmssl-pyx's digest sign and verify calls with the one SM3 of Z ‖ M each needs, so the
ratio charges farecore's SM2 wrapper (range checks, DER, the stderr trap) to the tap.

    python benchmarks/bench_tap.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _report import goal, p50, percentile, write_report

from farecore.card import sm2
from farecore.card.crypto import Algorithm, ed25519_backend, set_ed25519_backend
from farecore.card.proof import auth_message
from farecore.decide.clockguard import ClockGuard
from farecore.decide.issued import IssuedList, build_issued_list
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.tap import run_tap
from readers.virtual import VirtualReader
from sim.issuer import Issuer

NOW_MS = 1_796_083_200_000
_LIBRARY = {"nacl": "libsodium", "cryptography": "OpenSSL"}
clock = time.perf_counter_ns


def _raw_sm2(secret: bytes, public: bytes) -> Callable[[bytes], None]:
    """One SM2 card signature and its verification straight through gmssl-pyx."""
    gm = sm2.backend()
    xy = public[1:]
    z = sm2.z_value(xy)
    sign, verify = gm.sm2_sign_sm3_digest, gm.sm2_verify_sm3_digest

    def raw(message: bytes) -> None:
        e = sm2.message_digest(z, message)
        if not verify(xy, e, sign(secret, e)):
            raise SystemExit("gmssl-pyx refused its own signature")

    return raw


def interleaved(
    taps: int, algorithm: Algorithm, issuer_algorithm: Algorithm = Algorithm.ED25519
) -> tuple[list[float], list[float]]:
    """Repeat taps of one card and raw sign+verify, alternating; microseconds each."""
    issuer = Issuer.from_seed("bench-tap", algorithm=issuer_algorithm)
    policy = TerminalPolicy(1, frozenset({370200}))
    validator = Validator(policy, issuer.keyring(), clock=ClockGuard())
    card = issuer.card(4242, card_algorithm=algorithm)
    channel = VirtualReader().tap(card)
    public = card.key.public_key()

    def through_farecore(message: bytes) -> None:
        public.verify(card.key.sign(message), message)

    raw = (
        _raw_sm2(card.key.secret, card.key.public_bytes)
        if algorithm == Algorithm.SM2_SM3
        else through_farecore
    )
    run_tap(channel, validator, NOW_MS, os.urandom(16))  # warm the credential cache
    tap_us, raw_us = [], []
    for i in range(taps):
        nonce = os.urandom(16)
        message = auth_message(4242, i + 1, nonce * 2)
        t0 = clock()
        raw(message)
        t1 = clock()
        decision = run_tap(channel, validator, NOW_MS, nonce)
        t2 = clock()
        if not decision.accepted:
            raise SystemExit(f"benchmark card was denied: {decision.label} {decision.detail}")
        raw_us.append((t1 - t0) / 1000)
        tap_us.append((t2 - t1) / 1000)
    return tap_us, raw_us


def first_taps(count: int, listed: bool = False) -> list[float]:
    """Taps of cards never seen before: the issuer signature is verified too, or, with
    ``listed``, found in the issuer's signed list of its credentials instead."""
    issuer = Issuer.from_seed("bench-first")
    cards = [issuer.card(100_000 + i) for i in range(count)]
    issued = []
    if listed:
        data = build_issued_list([("", c.credential) for c in cards], issuer.key, 1, 0)
        issued = [IssuedList.from_bytes(data, issuer.keyring())]
    policy = TerminalPolicy(1, frozenset({370200}))
    validator = Validator(policy, issuer.keyring(), issued=issued)
    out = []
    for card in cards:
        channel = VirtualReader().tap(card)
        t0 = clock()
        run_tap(channel, validator, NOW_MS, os.urandom(16))
        out.append((clock() - t0) / 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer taps (still ≥ 10,000)")
    parser.add_argument("--out", default=None, help="JSON output path")
    args = parser.parse_args()
    taps = 10_000 if args.quick else 50_000
    tap_us, raw_us = interleaved(taps, Algorithm.ED25519)
    tap_p256, raw_p256 = interleaved(taps // 5, Algorithm.P256)
    first = first_taps(500 if args.quick else 2000)
    first_listed = first_taps(500 if args.quick else 2000, listed=True)
    metrics: dict[str, float | int | str | None] = {
        "taps": taps,
        "tap_p50_us": p50(tap_us),
        "tap_p99_us": percentile(tap_us, 99),
        "raw_crypto_p50_us": p50(raw_us),
        "raw_crypto_p99_us": percentile(raw_us, 99),
        "repeat_tap_p50_us": p50(tap_us),
        "first_tap_p50_us": p50(first),
        "first_tap_p99_us": percentile(first, 99),
        "first_tap_listed_p50_us": p50(first_listed),
        "first_tap_listed_p99_us": percentile(first_listed, 99),
        "p256_card_tap_p50_us": p50(tap_p256),
        "p256_card_raw_crypto_p50_us": p50(raw_p256),
    }
    ratio = metrics["tap_p50_us"] / metrics["raw_crypto_p50_us"]  # type: ignore[operator]
    metrics["tap_p50_over_raw"] = ratio
    try:
        sm2.backend()
        sm2_tap, sm2_raw = interleaved(taps // 10, Algorithm.SM2_SM3, Algorithm.SM2_SM3)
    except ValueError as exc:  # MalformedInput: the sm extra is not installed
        print(f"bench_tap: SM2 skipped: {exc}", file=sys.stderr)
        sm2_tap = sm2_raw = []
    if sm2_tap:
        sm2_ratio = p50(sm2_tap) / p50(sm2_raw)
        metrics |= {
            "sm2_taps": len(sm2_tap),
            "sm2_tap_p50_us": p50(sm2_tap),
            "sm2_tap_p99_us": percentile(sm2_tap, 99),
            "sm2_raw_crypto_p50_us": p50(sm2_raw),
            "sm2_raw_crypto_p99_us": percentile(sm2_raw, 99),
            "sm2_tap_p50_over_raw": sm2_ratio,
            # side by side: how much dearer an SM2 tap is than an Ed25519 one, same run
            "sm2_over_ed25519_tap_p50": p50(sm2_tap) / metrics["tap_p50_us"],  # type: ignore[operator]
            "sm2_over_ed25519_raw_crypto_p50": p50(sm2_raw) / metrics["raw_crypto_p50_us"],  # type: ignore[operator]
        }
    else:
        sm2_ratio = None
        metrics |= {"sm2_tap_p50_us": None, "sm2_tap_p99_us": None, "sm2_raw_crypto_p50_us": None}
    # The other Ed25519 backend, for comparison: OpenSSL when libsodium is the default.
    other = "cryptography" if ed25519_backend() == "nacl" else "nacl"
    metrics["ed25519_backend"] = ed25519_backend()
    try:
        set_ed25519_backend(other)
        other_tap, other_raw = interleaved(taps // 5, Algorithm.ED25519)
        metrics[f"{other}_tap_p50_us"] = p50(other_tap)
        metrics[f"{other}_raw_crypto_p50_us"] = p50(other_raw)
    except ValueError:  # PyNaCl is not installed
        metrics[f"{other}_tap_p50_us"] = metrics[f"{other}_raw_crypto_p50_us"] = None
    finally:
        set_ed25519_backend("auto")
    goals = [
        goal(
            "tap p50 vs raw crypto (card sign + verify), virtual reader", ratio, "<=", 1.3, "ratio"
        ),
        goal("tap p99 via virtual reader", metrics["tap_p99_us"] / 1000, "<=", 2.0, "ms"),  # type: ignore[operator]
        goal(
            "SM2 tap p50 vs raw gmssl-pyx SM2 sign + verify, virtual reader",
            sm2_ratio,
            "<=",
            1.3,
            "ratio",
        ),
        goal(
            "SM2 tap p99 via virtual reader",
            None if sm2_ratio is None else metrics["sm2_tap_p99_us"] / 1000,  # type: ignore[operator]
            "<=",
            5.0,
            "ms",
        ),
    ]
    f = lambda v: "n/a" if v is None else f"{v:.1f} µs"  # noqa: E731
    rows = [
        ("tap p50 (repeat, Ed25519 card)", f(metrics["tap_p50_us"]), f(metrics["raw_crypto_p50_us"]), f"{ratio:.2f}", "≤ 1.3×"),
        ("tap p99", f(metrics["tap_p99_us"]), f(metrics["raw_crypto_p99_us"]), "", "≤ 2 ms"),
        ("first tap p50 (not cached)", f(metrics["first_tap_p50_us"]), "", "", ""),
        ("first tap p50, issued list loaded", f(metrics["first_tap_listed_p50_us"]), "", "", ""),
        ("tap p50, SM2 issuer + SM2 card", f(metrics["sm2_tap_p50_us"]), f(metrics["sm2_raw_crypto_p50_us"]), "" if sm2_ratio is None else f"{sm2_ratio:.2f}", "≤ 1.3×"),
        ("tap p99, SM2", f(metrics["sm2_tap_p99_us"]), f(metrics.get("sm2_raw_crypto_p99_us")), "", "≤ 5 ms"),
        ("tap p50, P-256 card", f(metrics["p256_card_tap_p50_us"]), f(metrics["p256_card_raw_crypto_p50_us"]), "", ""),
        (f"tap p50, Ed25519 on {_LIBRARY[other]}", f(metrics[f"{other}_tap_p50_us"]), f(metrics[f"{other}_raw_crypto_p50_us"]), "", ""),
    ]  # fmt: skip
    write_report("tap", args.quick, metrics, goals, args.out, rows)


if __name__ == "__main__":
    main()
