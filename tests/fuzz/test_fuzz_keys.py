"""Fuzz key files and the issuer keyring.

``load_private_key`` and ``load_public_key_file`` promise KeyFileError; ``Keyring.load``
and ``Keyring.from_bytes`` promise MalformedFile. Byte mutations of real files test the
JSON layer; documents with any JSON value in any field (numbers too long to convert,
deep nesting, wrong types) test the checks behind it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fuzz_support import attempt, fuzz_settings, mutated
from hypothesis import example, given
from hypothesis import strategies as st

from farecore.card.crypto import Algorithm
from farecore.card.keys import (
    Keyring,
    SigningKey,
    load_private_key,
    load_public_key_file,
    save_signing_key,
)
from farecore.errors import KeyFileError, MalformedFile
from sim.issuer import Issuer, derive_key

pytestmark = pytest.mark.fuzz

ED = SigningKey("terminal", 1001, derive_key("fuzz-keys", "ed"))
P256 = SigningKey("issuer", 7, derive_key("fuzz-keys", "p256", Algorithm.P256))
KEYRING = (
    Issuer.from_seed("fuzz-keys", key_id=1)
    .keyring()
    .add(Issuer.from_seed("fuzz-keys/2", 2, Algorithm.P256).keyring_entry())
    .retire(1, 1_800_000_000)
    .to_bytes()
)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-keys-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def key_files(workdir: Path) -> dict[str, bytes]:
    files = {}
    for name, key in (("ed", ED), ("p256", P256)):
        private, public = save_signing_key(key, workdir / name)
        files[f"{name}.key"], files[f"{name}.pub"] = private.read_bytes(), public.read_bytes()
    return files


class RawJson(str):
    """JSON text to emit as it is (a number Python will not convert)."""


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=10),
    st.sampled_from(
        [RawJson("1" * 5000), RawJson("1e999"), RawJson("[" * 3000), RawJson("-0"), "", "ED25519"]
    ),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _json(value: Any) -> str:
    if isinstance(value, RawJson):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_json(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


@st.composite
def edited_json(draw: st.DrawFn, base: bytes) -> bytes:
    """The JSON document ``base`` with a value replaced, added or dropped, at the top
    level or inside a keyring entry."""
    doc = json.loads(base)
    tables = [doc, *(doc.get("keys", []) if isinstance(doc.get("keys"), list) else [])]
    for _ in range(draw(st.integers(1, 3))):
        table = draw(st.sampled_from(tables))
        action = draw(st.sampled_from(["replace", "replace", "add", "drop"]))
        if action == "add" or not table:
            table[draw(st.text(max_size=8))] = draw(_values)
        elif action == "drop":
            del table[draw(st.sampled_from(sorted(table)))]
        else:
            table[draw(st.sampled_from(sorted(table)))] = draw(_values)
    return _json(doc).encode()


def _load_key(workdir: Path, name: str, data: bytes) -> None:
    path = workdir / name
    path.write_bytes(data)
    os.chmod(path, 0o600)  # so the mode check is not all a private key file ever meets
    if name.endswith(".key"):
        private = attempt(lambda: load_private_key(path), KeyFileError)
        if not isinstance(private, KeyFileError):
            private.sign(b"a loaded key signs")
    else:
        public = attempt(lambda: load_public_key_file(path), KeyFileError)
        if not isinstance(public, KeyFileError):
            public.key()


@fuzz_settings()
@given(name=st.sampled_from(["ed.key", "ed.pub", "p256.key", "p256.pub"]), draw=st.data())
def test_mutated_key_files(
    workdir: Path, key_files: dict[str, bytes], name: str, draw: st.DataObject
) -> None:
    _load_key(workdir, name, draw.draw(mutated(key_files[name])))


@fuzz_settings(2.0)
@given(name=st.sampled_from(["ed.key", "ed.pub", "p256.key", "p256.pub"]), draw=st.data())
def test_key_files_with_any_values(
    workdir: Path, key_files: dict[str, bytes], name: str, draw: st.DataObject
) -> None:
    _load_key(workdir, name, draw.draw(edited_json(key_files[name])))


def _load_keyring(workdir: Path, data: bytes) -> None:
    ring = attempt(lambda: Keyring.from_bytes(data), MalformedFile)
    if not isinstance(ring, MalformedFile):
        assert Keyring.from_bytes(ring.to_bytes()).to_bytes() == ring.to_bytes()
    path = workdir / "keyring.json"
    path.write_bytes(data)
    attempt(lambda: Keyring.load(path), MalformedFile)


@fuzz_settings()
@given(data=mutated(KEYRING))
def test_mutated_keyring(workdir: Path, data: bytes) -> None:
    _load_keyring(workdir, data)


@fuzz_settings(2.0)
@given(data=edited_json(KEYRING))
@example(data=KEYRING.replace(b'"key_id": 2', b'"key_id": ' + b"1" * 5000))
@example(data=b"[" * 100_000)
def test_keyring_with_any_values(workdir: Path, data: bytes) -> None:
    _load_keyring(workdir, data)


@pytest.mark.parametrize(
    "doc",
    [
        b"[" * 100_000,
        b'{"format": "farecore-key/1", "kind": "public", "key_id": ' + b"1" * 5000 + b"}",
    ],
    ids=["deep nesting", "a 5000-digit number"],
)
def test_what_the_json_parser_cannot_take(workdir: Path, doc: bytes) -> None:
    # Python's JSON parser raises RecursionError and ValueError for these: a key file
    # must still be refused with KeyFileError.
    for name in ("x.key", "x.pub"):
        _load_key(workdir, name, doc)
