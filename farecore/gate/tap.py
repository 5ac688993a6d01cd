"""One tap, end to end, over any card channel: challenge, transaction, decision.

This is the thin I/O loop around the sans-I/O :class:`Transaction`. It measures how long
each step took, and it turns every failure of the channel, expected or not, into an
UNREADABLE deny: a broken reader must never put a traceback in front of a rider.
"""

from __future__ import annotations

import time

from farecore.card.proof import make_challenge
from farecore.card.transaction import Transaction
from farecore.decide.decision import Decision, Timings
from farecore.decide.validator import Validator
from farecore.gate.reader_port import CardChannel

__all__ = ["run_tap"]


def run_tap(channel: CardChannel, validator: Validator, now_ms: int, nonce: bytes) -> Decision:
    """Run SELECT, READ CREDENTIAL and INTERNAL AUTHENTICATE, then decide.

    ``now_ms`` is the terminal time that goes into the challenge and the validity check;
    ``nonce`` must be 16 fresh random bytes.
    """
    clock = time.perf_counter_ns
    start = clock()
    challenge = make_challenge(validator.policy.terminal_id, now_ms, nonce)
    tx = Transaction(challenge)
    transmit = channel.transmit
    # Nanoseconds per command, in the order the machine sends them: SELECT, READ
    # CREDENTIAL, INTERNAL AUTHENTICATE (a transaction that ends early sends fewer).
    steps = [0, 0, 0]
    sent = 0
    while (command := tx.next_command()) is not None:
        t0 = clock()
        try:
            response = transmit(command)
        except Exception as exc:
            steps[sent] = clock() - t0
            tx.transport_failed(f"{type(exc).__name__}: {exc}")
            break
        steps[sent] = clock() - t0
        sent += 1
        tx.receive(response)
    t_decide = clock()

    def timer() -> Timings:
        end = clock()
        s0, s1, s2 = steps
        return Timings(
            s0 / 1000, s1 / 1000, s2 / 1000, (end - t_decide) / 1000, (end - start) / 1000
        )

    return validator.decide(tx.result(), challenge, now_ms, timer)
