"""Hypothesis over the settlement's batch parser: any bytes in, a partial out, never a crash.

The parser sees files anyone can write (no key is needed to drop a file into the batch
directory), so it must answer every input with a rejected partial naming the problem,
and must never pay a byte that the terminal's signature does not cover.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from settle_world import DAY, World, day_ms, terminal_key

from farecore.card.keys import Keyring
from farecore.errors import BadSignature, MalformedInput
from farecore.journal.batch import BATCH_MAGIC, peek_header, verify_batch
from farecore.settlement.fares import parse_fares
from farecore.settlement.terminals import parse_terminals
from farecore.settlement.unit import Partial, UnitConfig, settle_bytes

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
_FIELDS = ("format", "terminal_id", "day", "first_seq", "last_seq", "count", "prev_hash")


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, UnitConfig]:
    world = World(tmp_path_factory.mktemp("hostile"))
    try:
        world.tap(101, 1, day_ms(8))
        world.tap(101, 2, day_ms(9))
        world.export()
        data = (world.batches / f"101-{DAY.isoformat()}.fcb").read_bytes()
        register = parse_terminals((world.root / "terminals.csv").read_text())
        fares = parse_fares((world.root / "fares.toml").read_text())
        keyring = Keyring.from_bytes((world.root / "keyring.json").read_bytes()).to_bytes()
    finally:
        world.close()
    cfg = UnitConfig(DAY, tuple(register.values()), keyring, fares.operators)
    return data, cfg


def _framed(header: bytes, rest: bytes) -> bytes:
    return BATCH_MAGIC + struct.pack(">I", len(header)) + header + rest


def _never_crashes(data: bytes, cfg: UnitConfig) -> Partial:
    partial = settle_bytes(data, cfg, "x.fcb")
    assert isinstance(partial, Partial)
    peek_header(data)  # never raises either
    try:
        verify_batch(data, None)
    except (MalformedInput, BadSignature):
        pass
    return partial


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(header=_JSON, rest=st.binary(max_size=64))
def test_any_json_header_is_answered(
    valid: tuple[bytes, UnitConfig], header: object, rest: bytes
) -> None:
    _, cfg = valid
    raw = json.dumps(header, allow_nan=True).encode()
    assert not _never_crashes(_framed(raw, rest), cfg).ok


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    depth=st.integers(1, 20_000),
    digits=st.integers(1, 20_000),
    field=st.sampled_from(_FIELDS),
)
def test_deep_and_long_headers_are_refused_before_parsing(
    valid: tuple[bytes, UnitConfig], depth: int, digits: int, field: str
) -> None:
    _, cfg = valid
    deep = b'{"' + field.encode() + b'":' + b"[" * depth + b"]" * depth + b"}"
    long = b'{"' + field.encode() + b'":' + b"9" * digits + b"}"
    for raw in (deep, long):
        partial = _never_crashes(_framed(raw, b""), cfg)
        assert not partial.ok


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_changed_valid_batch_is_rejected(
    valid: tuple[bytes, UnitConfig], data: st.DataObject
) -> None:
    original, cfg = valid
    assert settle_bytes(original, cfg).ok
    how = data.draw(st.sampled_from(["flip", "cut", "grow", "splice"]))
    mutated = bytearray(original)
    if how == "flip":
        at = data.draw(st.integers(0, len(mutated) - 1))
        mutated[at] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        del mutated[data.draw(st.integers(0, len(mutated) - 1)) :]
    elif how == "grow":
        mutated += data.draw(st.binary(min_size=1, max_size=32))
    else:
        at = data.draw(st.integers(0, len(mutated)))
        mutated[at:at] = data.draw(st.binary(min_size=1, max_size=32))
    partial = _never_crashes(bytes(mutated), cfg)
    assert not partial.ok and not len(partial.rides)


def test_random_bytes_of_every_small_length(valid: tuple[bytes, UnitConfig]) -> None:
    _, cfg = valid
    for n in range(0, 40):
        assert not _never_crashes(BATCH_MAGIC[:n] + b"\xff" * n, cfg).ok


def test_the_key_of_one_terminal_cannot_sign_for_another(
    valid: tuple[bytes, UnitConfig], tmp_path: Path
) -> None:
    from farecore.journal.batch import encode_batch

    _, cfg = valid
    data = encode_batch(
        [],
        {},
        terminal_id=101,
        day=DAY,
        utc_offset_min=480,
        first_seq=1,
        prev_hash=b"\0" * 32,
        key=terminal_key(102),
    )
    partial = settle_bytes(data, cfg)
    assert not partial.ok and "signature" in partial.anomalies[0].detail
