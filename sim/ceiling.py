"""This machine's crypto-bound ceiling for a tap, measured where the taps run.

The issue's ceiling for one tap is the crypto no engine can avoid: the card's signature
over the challenge and the terminal's verification of it, with the day's card keys
(Ed25519 by default; SM2, or both in turn, with ``--crypto``).
On a shared virtual machine the speed of that crypto drifts by a fifth within seconds,
so ``farecore sim`` can time it in its own worker processes, all at once, just before and
just after the tap phase (``--measure-ceiling``): the ratio of taps/s to the ceiling then
compares two things measured on the same cores at the same moment.

The settlement verifies each paid tap's card signature once more: ``verify_us_per_ride``
times that verification alone, so a benchmark can state the crypto floor of a whole
run (taps at the ceiling, plus the night's verifications) next to its wall time.
"""

from __future__ import annotations

import time

from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.proof import auth_message

__all__ = ["crypto_us_per_tap", "verify_us_per_ride"]


def crypto_us_per_tap(
    n: int, runs: int = 3, algorithms: tuple[Algorithm, ...] = (Algorithm.ED25519,)
) -> float:
    """Median over ``runs`` of the microseconds for one card sign + one terminal verify,
    each run ``n`` distinct messages, the keys of ``algorithms`` taking them in turn."""
    keys = [PrivateKey(alg, bytes(range(32))) for alg in algorithms]
    pairs = [(k.sign, k.public_key().verify) for k in keys]
    challenge = bytes(32)
    times = []
    for r in range(runs):
        msgs = [
            (auth_message(1000 + i, i + 1 + r, challenge), *pairs[i % len(pairs)]) for i in range(n)
        ]
        t0 = time.perf_counter_ns()
        for m, sign, verify in msgs:
            verify(sign(m), m)
        times.append((time.perf_counter_ns() - t0) / 1000 / n)
    times.sort()
    return times[len(times) // 2]


def verify_us_per_ride(
    n: int, runs: int = 3, algorithms: tuple[Algorithm, ...] = (Algorithm.ED25519,)
) -> float:
    """Median over ``runs`` of the microseconds for one verification of a card signature
    (the settlement's per-ride crypto), ``n`` distinct signed messages a run."""
    keys = [PrivateKey(alg, bytes(range(32))) for alg in algorithms]
    times = []
    for r in range(runs):
        signed = []
        for i in range(n):
            key = keys[i % len(keys)]
            m = auth_message(1000 + i, i + 1 + r, bytes(32))
            signed.append((m, key.sign(m), key.public_key().verify))
        t0 = time.perf_counter_ns()
        for m, signature, verify in signed:
            verify(signature, m)
        times.append((time.perf_counter_ns() - t0) / 1000 / n)
    times.sort()
    return times[len(times) // 2]
