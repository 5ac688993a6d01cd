"""The table at work: real taps of virtual cards through run_tap and the Validator.

Includes the 100-swap test: a stream of taps while the table in force is replaced 100
times by the reload thread. No tap fails or stalls, and every decision names the
generation it was made under, and is right for that generation.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from farecore.card.keys import PublicKeyFile
from farecore.decide.revocation import HotRevocation, RevocationTable
from farecore.decide.validator import TerminalPolicy, Validator
from farecore.gate.tap import run_tap
from readers.virtual import VirtualReader
from sim.issuer import QINGDAO, Issuer

ISSUER = Issuer.from_seed("revocation-gate-tests")
NOW_S = 1_800_000_000
NOW_MS = NOW_S * 1000
POLICY = TerminalPolicy(7001, frozenset({QINGDAO}))
CARD_IDS = [101, 102, 103, 2**63, 2**64 - 1]


def revoked_in(generation: int) -> set[int]:
    """Each card is revoked in some generations and not in others."""
    return {card for i, card in enumerate(CARD_IDS) if (generation + i) % 3 == 0}


def tap(reader: VirtualReader, validator: Validator, card: Any) -> Any:
    return run_tap(reader.tap(card), validator, NOW_MS, os.urandom(16))


def test_revoked_card_is_denied_with_the_generation(
    tmp_path: Path, writer: Callable[..., Any], signer: PublicKeyFile
) -> None:
    path = tmp_path / "table.frt"
    writer(path, [102, 2**64 - 1], 4, created_at=NOW_S - 60, reason=3)
    reader = VirtualReader()
    with HotRevocation(path, signer, poll_interval_s=None) as hot:
        validator = Validator(POLICY, ISSUER.keyring(), hot)
        good = tap(reader, validator, ISSUER.card(101))
        assert good.label == "ACCEPT" and good.revocation_generation == 4
        for card_id in (102, 2**64 - 1):
            bad = tap(reader, validator, ISSUER.card(card_id))
            assert bad.label == "REVOKED" and bad.revocation_generation == 4
            assert "reason 3" in bad.detail


def test_staleness_policy_through_the_validator(
    tmp_path: Path, writer: Callable[..., Any], signer: PublicKeyFile
) -> None:
    path = tmp_path / "table.frt"
    writer(path, [102], 4, created_at=NOW_S - 7200)
    reader = VirtualReader()
    with HotRevocation(path, signer, poll_interval_s=None) as hot:
        keyring = ISSUER.keyring()
        closed = Validator(
            TerminalPolicy(7001, frozenset({QINGDAO}), revocation_max_age_s=3600), keyring, hot
        )
        opened = Validator(
            TerminalPolicy(
                7001, frozenset({QINGDAO}), revocation_max_age_s=3600, stale_policy="open"
            ),
            keyring,
            hot,
        )
        lenient = Validator(
            TerminalPolicy(7001, frozenset({QINGDAO}), revocation_max_age_s=86400), keyring, hot
        )
        card = ISSUER.card(101)
        denied = tap(reader, closed, card)
        assert denied.label == "REVOCATION_STALE" and denied.revocation_generation == 4
        flagged = tap(reader, opened, card)
        assert flagged.accepted and "revocation_stale" in flagged.flags
        fresh = tap(reader, lenient, card)
        assert fresh.accepted and not fresh.flags
        # A card the stale table does list is still refused as revoked.
        assert tap(reader, opened, ISSUER.card(102)).label == "REVOKED"
        # A newer table ends the staleness.
        writer(path, [102], 5, created_at=NOW_S - 10)
        assert hot.poll()
        assert tap(reader, closed, card).accepted


def test_taps_through_100_swaps(
    tmp_path: Path,
    writer: Callable[..., Any],
    signer: PublicKeyFile,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "table.frt"
    writer(path, revoked_in(1), 1, created_at=NOW_S)
    cards = {card_id: ISSUER.card(card_id) for card_id in CARD_IDS}
    reader = VirtualReader()
    done = threading.Event()
    errors: list[str] = []
    # Which threads open (and so verify) a table while the taps run.
    verified_on: list[int] = []
    open_table = RevocationTable.open

    def recording_open(*args: Any, **kwargs: Any) -> RevocationTable:
        verified_on.append(threading.get_ident())
        return open_table(*args, **kwargs)

    with HotRevocation(path, signer, poll_interval_s=0.002) as hot:
        monkeypatch.setattr(RevocationTable, "open", staticmethod(recording_open))
        validator = Validator(POLICY, ISSUER.keyring(), hot)

        def publisher() -> None:
            try:
                for generation in range(2, 102):
                    writer(path, revoked_in(generation), generation, created_at=NOW_S)
                    deadline = time.monotonic() + 10
                    while hot.generation != generation and time.monotonic() < deadline:
                        time.sleep(0.001)
                    if hot.generation != generation:
                        errors.append(f"generation {generation} never came into force")
                        return
            finally:
                done.set()

        thread = threading.Thread(target=publisher)
        thread.start()
        decisions = []
        i = 0
        try:
            while not done.is_set():
                card_id = CARD_IDS[i % len(CARD_IDS)]
                before = hot.generation
                decision = tap(reader, validator, cards[card_id])
                after = hot.generation
                decisions.append((card_id, before, after, decision))
                i += 1
        finally:
            thread.join()

    assert not errors
    assert hot.swaps == 100 and hot.rejected == 0 and hot.generation == 101
    generations_seen = set()
    for card_id, before, after, decision in decisions:
        generation = decision.revocation_generation
        assert before <= generation <= after, (before, generation, after)
        expected = "REVOKED" if card_id in revoked_in(generation) else "ACCEPT"
        assert decision.label == expected, (card_id, generation, decision.detail)
        generations_seen.add(generation)
    assert len(decisions) >= 100
    assert len(generations_seen) >= 20
    # No tap waited for a swap: every table was verified on the reload thread, never on
    # the thread that ran the taps. (How long a tap takes is measured in benchmarks/.)
    assert len(verified_on) >= 100
    assert threading.get_ident() not in verified_on
