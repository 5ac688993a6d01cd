"""package.json: signed, strict, bounded; a flipped byte or a foreign key is refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from package_support import publishing_entry

from farecore.card.keys import Keyring, SigningKey
from farecore.errors import ConfigError
from farecore.fleet.package import (
    Manifest,
    PackageFile,
    PackageRefused,
    parse_package,
    sign_package,
    verify_package,
)
from sim.issuer import derive_key

KEY = SigningKey("publishing", 501, derive_key("format", "publishing"))
RING = Keyring([], [publishing_entry(KEY)])
SHA = "ab" * 32


def _manifest(version: int = 3, **extra: PackageFile) -> Manifest:
    files = [
        PackageFile("keyring", "keyring.json", SHA, 100, None),
        PackageFile("revocation_base", "t.frt", "cd" * 32, 4096, 7),
        PackageFile("revocation_delta", "d.frd", "ef" * 32, 300, 9),
        PackageFile("issued", "issued-1.fil", "01" * 32, 800, 2),
        *extra.values(),
    ]
    return Manifest(version, 1_796_000_000, tuple(files))


GOOD = sign_package(_manifest(), KEY)


def test_a_signed_package_parses_and_verifies() -> None:
    signed = parse_package(GOOD)
    verify_package(signed, RING)
    assert signed.manifest == _manifest()
    assert signed.manifest.revocation_generation == 9
    assert signed.manifest.one("revocation_base").generation == 7  # type: ignore[union-attr]


def test_only_a_publishing_key_of_the_keyring_in_force_verifies_it() -> None:
    other = SigningKey("publishing", 501, derive_key("other", "publishing"))
    forged = parse_package(sign_package(_manifest(), other))
    with pytest.raises(PackageRefused, match="signature does not verify"):
        verify_package(forged, RING)
    with pytest.raises(PackageRefused, match="publishing key 501"):
        verify_package(parse_package(GOOD), Keyring())
    with pytest.raises(PackageRefused, match="publishing key 501"):
        verify_package(parse_package(GOOD), RING.revoke_publisher(501))
    # A retired publishing key vouches for nothing, whatever date its package claims.
    for at in (1_795_000_000, 1_796_000_000, 1_900_000_000):
        with pytest.raises(PackageRefused, match="publishing key 501"):
            verify_package(parse_package(GOOD), RING.retire_publisher(501, at))


def test_signing_needs_a_publishing_key() -> None:
    with pytest.raises(ConfigError, match="publishing key, not a revocation key"):
        sign_package(_manifest(), SigningKey("revocation", 1, derive_key("x", "r")))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda m: m.update(version=0), "version must be an integer from 1"),
        (lambda m: m.update(created_at=-1), "created_at"),
        (lambda m: m.update(extra=1), "extra"),
        (lambda m: m["files"].pop(0), "0 keyring files"),
        (lambda m: m["files"].pop(1), "0 revocation_base files"),
        (lambda m: m["files"][0].update(role="binary"), "unknown role"),
        (lambda m: m["files"][0].update(name="../etc/passwd"), "not a plain file name"),
        (lambda m: m["files"][0].update(sha256="AB" * 32), "64 lowercase hex"),
        (lambda m: m["files"][0].update(size=True), "size must be an integer"),
        (lambda m: m["files"][0].update(generation=1), "has no generation"),
        (lambda m: m["files"][1].update(generation=None), "generation must be an integer"),
        (lambda m: m["files"][2].update(generation=7), "not above its base"),
        (lambda m: m["files"][3].update(name="t.frt"), "share a name"),
        (lambda m: m["files"].append(dict(m["files"][2])), "2 revocation_delta files"),
    ],
)
def test_every_bad_manifest_is_named(change: object, says: str) -> None:
    outer = json.loads(GOOD)
    inner = json.loads(outer["signed"])
    change(inner)  # type: ignore[operator]
    outer["signed"] = json.dumps(inner)
    with pytest.raises(PackageRefused, match=says):
        parse_package(json.dumps(outer).encode(), "p.json")


def test_outer_document_is_strict() -> None:
    outer = json.loads(GOOD)
    for key in ("signed", "key_id", "signature"):
        broken = dict(outer)
        del broken[key]
        with pytest.raises(PackageRefused, match=f"{key} is missing"):
            parse_package(json.dumps(broken).encode())
    with pytest.raises(PackageRefused, match="format"):
        parse_package(json.dumps({**outer, "format": "farecore-package/2"}).encode())
    with pytest.raises(PackageRefused, match="larger than"):
        parse_package(b" " * (1 << 20) + GOOD)
    with pytest.raises(PackageRefused, match="nest"):
        parse_package(b"[" * 100 + b"]" * 100)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_every_changed_byte_is_refused(where: int, xor: int) -> None:
    data = bytearray(GOOD)
    data[where % len(data)] ^= xor
    try:
        signed = parse_package(bytes(data))
        verify_package(signed, RING)
    except PackageRefused:
        return
    # A byte of JSON whitespace may change without changing the document.
    assert json.loads(bytes(data)) == json.loads(GOOD)


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    try:
        parse_package(data)
    except PackageRefused:
        pass


def test_the_golden_package_bytes() -> None:
    """Ed25519 is deterministic: the signed bytes of one manifest never change (a change
    here means every published package would read differently)."""
    import hashlib

    assert hashlib.sha256(GOOD).hexdigest() == (
        "1c6b84c07fc075cbe1802a61f06f5dcb48f015d186d12f9623bcf879a9255282"
    )
    assert json.loads(GOOD)["signed"].startswith('{"created_at":1796000000,"files":[')


@pytest.mark.parametrize(
    ("publishers", "says"),
    [
        ('"501"', "publishers must be a list"),
        ("[1]", "publishing key entry 0"),
        ('[{"key_id": 501}]', "publishing key entry 0: 'algorithm' is missing"),
        ('[{"key_id": 501, "algorithm": "Ed25519", "public_key": "00", "colour": 1}]', "colour"),
    ],
)
def test_a_keyring_with_bad_publishing_keys_is_named(publishers: str, says: str) -> None:
    from farecore.errors import MalformedFile

    data = f'{{"format": "farecore-keyring/1", "keys": [], "publishers": {publishers}}}'
    with pytest.raises(MalformedFile, match=says):
        Keyring.from_bytes(data.encode(), "k.json")


def test_a_keyring_round_trips_its_publishers_and_keeps_old_bytes() -> None:
    assert b"publishers" not in Keyring().to_bytes()
    assert Keyring.from_bytes(RING.to_bytes()).publishers == RING.publishers
