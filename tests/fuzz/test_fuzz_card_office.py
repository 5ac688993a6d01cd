"""Fuzz the card office's inputs: the enrolment CSV and the virtual card file.

``parse_enrolment`` promises MalformedFile naming a line for anything it refuses, and
rows it accepts hold exactly their fields; ``load_card_file`` promises MalformedFile for
any file that is not a card file. Mutations of genuine files reach the checks past the
header and the JSON.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from fuzz_support import attempt, fuzz_settings, mutated
from hypothesis import given

from farecore.card.cardfile import CardFile, load_card_file
from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.enrolment import enrolment_row, parse_enrolment
from farecore.errors import MalformedFile
from sim.issuer import Issuer, derive_key

pytestmark = pytest.mark.fuzz

HEADER = "card_id,category,region,valid_from,valid_until,key_algorithm,public_key"
START, END = 1_780_000_000, 1_900_000_000
KEYS = [derive_key("fuzz-card-office", f"card-{i}") for i in range(3)]
GOOD_CSV = (
    "\n".join(
        [HEADER]
        + [
            enrolment_row(i + 1, 1 + i % 3, 370200, START, END, k.algorithm, k.public_bytes)
            for i, k in enumerate(KEYS)
        ]
    )
    + "\n"
).encode()
ISSUER = Issuer.from_seed("fuzz-card-office", key_id=3)
CARD_KEY = PrivateKey(Algorithm.ED25519, bytes(range(32)))
GOOD_CARD = CardFile(CARD_KEY, ISSUER.credential(7, CARD_KEY), 5).to_bytes()


def test_the_seed_files_are_good() -> None:
    assert [r.card_id for r in parse_enrolment(GOOD_CSV, "seed.csv")] == [1, 2, 3]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "seed.card"
        path.write_bytes(GOOD_CARD)
        os.chmod(path, 0o600)
        assert load_card_file(path).card_id == 7


@fuzz_settings()
@given(mutated(GOOD_CSV, max_edits=6))
def test_enrolment_files_of_any_content(data: bytes) -> None:
    got = attempt(lambda: parse_enrolment(data, "enrolment.csv"), MalformedFile)
    if isinstance(got, MalformedFile):
        assert str(got).startswith("enrolment.csv"), got
        return
    ids = [r.card_id for r in got]
    assert len(ids) == len(set(ids))  # a duplicate id is never accepted


@fuzz_settings(0.5)
@given(mutated(GOOD_CARD, max_edits=6))
def test_card_files_of_any_content(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.card"
        path.write_bytes(data)
        os.chmod(path, 0o600)
        got = attempt(lambda: load_card_file(path), MalformedFile)
        if not isinstance(got, MalformedFile):
            assert got.credential and got.counter >= 0
