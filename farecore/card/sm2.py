"""SM2 with SM3 (GM/T 0003, GM/T 0004) exactly as CARD-SPEC §4a pins it.

farecore does here, in its own code, everything §4a makes byte-exact: the curve
sm2p256v1, the strict public-key parse (65 bytes ``04 ‖ X ‖ Y``, a point on the curve,
never the point at infinity), Z with the GM/T 0009 default ID, e = SM3(Z ‖ M), the raw
``r ‖ s`` signature with its range checks (1 ≤ r, s ≤ n−1, r + s ≢ 0 mod n) and the DER
the backend speaks. The backend, gmssl-pyx (the ``sm`` extra, docs/crypto-sm2.md), does
only the elliptic-curve work on a digest: sign with a fresh nonce of its own, verify.
Nothing normalises ``s``: unlike ECDSA, (r, n−s) is simply another, invalid, signature.

Without the backend, parsing still works (a credential's shape never depends on it), but
no SM2 key loads: :func:`backend` raises MalformedInput naming the extra.

This module must never read the clock, the disk or the network.
"""

from __future__ import annotations

import importlib
import re
import secrets
import threading
from types import ModuleType

from cryptography.hazmat.primitives import hashes

from farecore.card.stderr_trap import StderrTrap
from farecore.errors import BadSignature, MalformedInput

__all__ = [
    "DEFAULT_ID",
    "EXTRA_HINT",
    "N",
    "backend",
    "der_to_raw",
    "message_digest",
    "new_secret",
    "parse_public_key",
    "public_from_secret",
    "raw_to_der",
    "secret_scalar",
    "signature_scalars",
    "z_value",
]

# sm2p256v1, GB/T 32918.5
P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A = P - 3
B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
GX = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
GY = 0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0

#: GM/T 0009's default signer ID; §4a uses it for issuer and card signatures alike.
DEFAULT_ID = b"1234567812345678"
EXTRA_HINT = "pip install 'farecore[sm]'"
_BACKEND_MODULE = "gmssl_pyx"
_CURVE_BYTES = b"".join(v.to_bytes(32, "big") for v in (A, B, GX, GY))


def sm3(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def parse_public_key(raw: bytes) -> bytes:
    """The 64-byte ``X ‖ Y`` of a §4a public key; MalformedInput unless ``raw`` is exactly
    ``04 ‖ X ‖ Y`` with X, Y < p and the point on the curve (so never the point at infinity,
    whose only 65-byte spelling, all zeros, is not on it: b ≠ 0)."""
    if len(raw) != 65 or raw[0] != 0x04:
        raise MalformedInput("an SM2 public key must be 65 bytes, SEC1 uncompressed (04 ‖ X ‖ Y)")
    x = int.from_bytes(raw[1:33], "big")
    y = int.from_bytes(raw[33:], "big")
    if x >= P or y >= P or (y * y - (x * x * x + A * x + B)) % P != 0:
        raise MalformedInput("not a point of the SM2 curve sm2p256v1")
    return bytes(raw[1:])


def z_value(xy: bytes, user_id: bytes = DEFAULT_ID) -> bytes:
    """Z = SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA) for the signer's ``X ‖ Y``."""
    return sm3((8 * len(user_id)).to_bytes(2, "big") + user_id + _CURVE_BYTES + xy)


def message_digest(z: bytes, message: bytes) -> bytes:
    """e = SM3(Z ‖ M): the digest that is signed."""
    h = hashes.Hash(hashes.SM3())
    h.update(z)
    h.update(message)
    return h.finalize()


def signature_scalars(signature: bytes) -> tuple[int, int]:
    """(r, s) of a 64-byte ``r ‖ s``; BadSignature unless 1 ≤ r, s ≤ n−1 and r + s ≢ 0."""
    if len(signature) != 64:
        raise BadSignature(f"signature is {len(signature)} bytes, expected 64")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < N and 0 < s < N):
        raise BadSignature("SM2 signature component out of range")
    if (r + s) % N == 0:
        raise BadSignature("SM2 signature has r + s = 0 mod n")
    return r, s


def _der_int(v: int) -> bytes:
    body = v.to_bytes(v.bit_length() // 8 + 1, "big")  # a leading 00 keeps it positive
    return b"\x02" + bytes([len(body)]) + body


def raw_to_der(r: int, s: int) -> bytes:
    """DER ``SEQUENCE { INTEGER r, INTEGER s }`` (what gmssl-pyx reads) of in-range r, s."""
    body = _der_int(r) + _der_int(s)
    return b"\x30" + bytes([len(body)]) + body


def der_to_raw(der: bytes) -> bytes:
    """The 64-byte ``r ‖ s`` of a DER signature from the backend, checked strictly."""
    out, pos = [], 2
    try:
        if der[0] != 0x30 or der[1] != len(der) - 2:
            raise IndexError
        for _ in range(2):
            length = der[pos + 1]
            if der[pos] != 0x02 or not 1 <= length <= 33:
                raise IndexError
            out.append(int.from_bytes(der[pos + 2 : pos + 2 + length], "big"))
            pos += 2 + length
    except IndexError:
        raise BadSignature("the SM2 backend returned a malformed DER signature") from None
    if pos != len(der) or not all(0 < v < N for v in out):
        raise BadSignature("the SM2 backend returned a malformed DER signature")
    return out[0].to_bytes(32, "big") + out[1].to_bytes(32, "big")


def secret_scalar(secret: bytes) -> int:
    """The private scalar d of a 32-byte secret; ValueError unless 1 ≤ d ≤ n−2 (SM2 needs
    1 + d invertible mod n)."""
    d = int.from_bytes(secret, "big")
    if not 0 < d < N - 1:
        raise ValueError("SM2 private scalar out of range (1 to n-2)")
    return d


def new_secret() -> bytes:
    """A fresh private scalar from the operating system's CSPRNG, uniform in [1, n−2]."""
    return (secrets.randbelow(N - 2) + 1).to_bytes(32, "big")


# Public key from a secret. gmssl-pyx has no call for it, so farecore computes d·G itself.
# A process that loads a few keys uses a Montgomery ladder (about 3 ms a key). One that
# loads many (the simulator's cards) switches, after its first _LADDER_KEYS keys, to a
# fixed-base comb over a table of G's multiples built once (about 0.15 s): d = Σ dᵢ·256ⁱ,
# so d·G = Σ (dᵢ·256ⁱ)·G, 32 look-ups and mixed additions with no doubling (about 0.35 ms
# a key). This runs once when a key is loaded, never per signature; it is not
# constant-time, which a key load on the signer's own machine can afford
# (docs/crypto-sm2.md).
_Jac = tuple[int, int, int]
_INF: _Jac = (1, 1, 0)
_WINDOW = 8  # bits per table row: 32 rows of 255 affine points (8,160, about 1.5 MB)
_LADDER_KEYS = 48  # keys made by the ladder before the table pays for itself
_ROWS = (N.bit_length() + _WINDOW - 1) // _WINDOW


def _double(p: _Jac) -> _Jac:
    x, y, z = p
    if z == 0 or y == 0:
        return _INF
    delta = z * z % P
    gamma = y * y % P
    beta = x * gamma % P
    alpha = 3 * (x - delta) * (x + delta) % P  # a = -3
    x3 = (alpha * alpha - 8 * beta) % P
    z3 = ((y + z) * (y + z) - gamma - delta) % P
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % P
    return (x3, y3, z3)


def _add(p: _Jac, q: _Jac) -> _Jac:
    if p[2] == 0:
        return q
    if q[2] == 0:
        return p
    x1, y1, z1 = p
    x2, y2, z2 = q
    z1z1, z2z2 = z1 * z1 % P, z2 * z2 % P
    u1, u2 = x1 * z2z2 % P, x2 * z1z1 % P
    s1, s2 = y1 * z2 * z2z2 % P, y2 * z1 * z1z1 % P
    h, r = (u2 - u1) % P, (s2 - s1) % P
    if h == 0:
        return _double(p) if r == 0 else _INF
    hh = h * h % P
    hhh = h * hh % P
    v = u1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    y3 = (r * (v - x3) - s1 * hhh) % P
    return (x3, y3, z1 * z2 * h % P)


def _add_affine(p: _Jac, x2: int, y2: int) -> _Jac:
    """p + (x2, y2), the second point affine (Z = 1): the comb's only operation."""
    x1, y1, z1 = p
    if z1 == 0:
        return (x2, y2, 1)
    z1z1 = z1 * z1 % P
    h = (x2 * z1z1 - x1) % P
    r = (y2 * z1 * z1z1 - y1) % P
    if h == 0:
        return _double(p) if r == 0 else _INF
    hh = h * h % P
    hhh = h * hh % P
    v = x1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    return (x3, (r * (v - x3) - y1 * hhh) % P, z1 * h % P)


def _to_affine(points: list[_Jac]) -> list[tuple[int, int]]:
    """Jacobian points (none at infinity) to affine, with one inversion for all of them."""
    prefix, acc = [], 1
    for _, _, z in points:
        prefix.append(acc)
        acc = acc * z % P
    inv = pow(acc, -1, P)
    out: list[tuple[int, int]] = [(0, 0)] * len(points)
    for i in range(len(points) - 1, -1, -1):
        x, y, z = points[i]
        zinv = inv * prefix[i] % P
        inv = inv * z % P
        zinv2 = zinv * zinv % P
        out[i] = (x * zinv2 % P, y * zinv2 * zinv % P)
    return out


_comb: list[list[tuple[int, int]]] | None = None
_comb_lock = threading.Lock()


def _comb_table() -> list[list[tuple[int, int]]]:
    """Row i holds j·256ⁱ·G for j = 1 … 255 (index j − 1), affine. None of these is the
    point at infinity: every multiple is below n, G's prime order."""
    global _comb
    with _comb_lock:
        if _comb is None:
            points: list[_Jac] = []
            base: _Jac = (GX, GY, 1)
            for _ in range(_ROWS):
                row = [base]
                for _ in range((1 << _WINDOW) - 2):
                    row.append(_add(row[-1], base))
                points.extend(row)
                base = _double(row[(1 << (_WINDOW - 1)) - 1])  # 2 · 128·base = 256·base
            flat = _to_affine(points)
            size = (1 << _WINDOW) - 1
            _comb = [flat[i * size : (i + 1) * size] for i in range(_ROWS)]
        return _comb


def _base_mul(d: int) -> tuple[int, int]:
    """d·G in affine coordinates for 1 ≤ d < n."""
    table = _comb_table()
    mask = (1 << _WINDOW) - 1
    acc: _Jac = _INF
    row = 0
    while d:
        digit = d & mask
        if digit:
            x, y = table[row][digit - 1]
            acc = _add_affine(acc, x, y)
        d >>= _WINDOW
        row += 1
    return _to_affine([acc])[0]


def _ladder(d: int) -> tuple[int, int]:
    """d·G in affine coordinates for 1 ≤ d < n, by a Montgomery ladder (no table)."""
    r0, r1 = _INF, (GX, GY, 1)
    for i in range(N.bit_length() - 1, -1, -1):
        if (d >> i) & 1:
            r0, r1 = _add(r0, r1), _double(r1)
        else:
            r0, r1 = _double(r0), _add(r0, r1)
    return _to_affine([r0])[0]


_keys_made = 0


def public_from_secret(secret: bytes) -> bytes:
    """The 65-byte ``04 ‖ X ‖ Y`` of d·G."""
    global _keys_made
    d = secret_scalar(secret)
    _keys_made += 1
    ax, ay = _base_mul(d) if _keys_made > _LADDER_KEYS else _ladder(d)
    return b"\x04" + ax.to_bytes(32, "big") + ay.to_bytes(32, "big")


# The backend, imported on first use so that farecore loads without it.
_backend: ModuleType | None = None


def backend() -> ModuleType:
    """gmssl-pyx; MalformedInput naming the extra when it is not installed."""
    global _backend
    if _backend is None:
        try:
            _backend = importlib.import_module(_BACKEND_MODULE)
        except ImportError:
            raise MalformedInput(
                f"SM2-SM3 keys need the SM2 backend (gmssl-pyx), which is not installed: "
                f"{EXTRA_HINT}"
            ) from None
    return _backend


_trap = StderrTrap(re.compile(rb"^\S+\.c:\d+:\w+\(\):.*$"))  # GmSSL's error_print lines


def verify_digest(xy: bytes, digest: bytes, r: int, s: int) -> bool:
    """The backend's verdict on an in-range (r, s) over ``digest`` for the key ``X ‖ Y``."""
    gm = backend()
    try:
        return bool(_trap.call(gm.sm2_verify_sm3_digest, xy, digest, raw_to_der(r, s)))
    except gm.GmsslInnerError:
        return False


def sign_digest(secret: bytes, digest: bytes) -> bytes:
    """A 64-byte ``r ‖ s`` over ``digest``, with the backend's own random nonce."""
    return der_to_raw(backend().sm2_sign_sm3_digest(secret, digest))
