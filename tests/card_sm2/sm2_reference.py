"""A slow, plain SM2-SM3 written from GB/T 32918 and RFC 6979, for the tests only.

It shares no code with ``farecore.card.sm2``: affine arithmetic, Z and e from the
standard, and the deterministic nonce the vectors use (RFC 6979 §3.2 with HMAC-SM3,
q = n, x = d, h1 = e). With it the tests reproduce the vectors' bytes exactly, which
farecore's production signer (a fresh random nonce each time) deliberately does not.
Also: tongsuopy (Tongsuo) as the independent second implementation, behind two calls.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, hmac

P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
G = (
    0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
    0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0,
)
DEFAULT_ID = b"1234567812345678"

Point = tuple[int, int] | None  # None is the point at infinity


def add(p1: Point, p2: Point) -> Point:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % P == 0:
        return None
    if p1 == p2:
        lam = (3 * x1 * x1 + A) * pow(2 * y1, -1, P) % P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return (x3, (lam * (x1 - x3) - y1) % P)


def mul(k: int, point: Point) -> Point:
    result: Point = None
    while k:
        if k & 1:
            result = add(result, point)
        point = add(point, point)
        k >>= 1
    return result


def sm3(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def hmac_sm3(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SM3())
    h.update(data)
    return h.finalize()


def b32(v: int) -> bytes:
    return v.to_bytes(32, "big")


def public_key(d: int) -> bytes:
    point = mul(d, G)
    assert point is not None
    return b"\x04" + b32(point[0]) + b32(point[1])


def z_value(pub: bytes, user_id: bytes = DEFAULT_ID) -> bytes:
    entl = (8 * len(user_id)).to_bytes(2, "big")
    return sm3(entl + user_id + b32(A) + b32(B) + b32(G[0]) + b32(G[1]) + pub[1:])


def rfc6979_nonces(d: int, e: bytes):  # type: ignore[no-untyped-def]
    """RFC 6979 §3.2 candidates k for x = d, h1 = e, with HMAC-SM3 (qlen = hlen = 256)."""
    x = b32(d)
    h1 = b32(int.from_bytes(e, "big") % N)
    v, k = b"\x01" * 32, b"\x00" * 32
    k = hmac_sm3(k, v + b"\x00" + x + h1)
    v = hmac_sm3(k, v)
    k = hmac_sm3(k, v + b"\x01" + x + h1)
    v = hmac_sm3(k, v)
    while True:
        v = hmac_sm3(k, v)
        candidate = int.from_bytes(v, "big")
        if 1 <= candidate < N:
            yield candidate
        k = hmac_sm3(k, v + b"\x00")
        v = hmac_sm3(k, v)


def sign_with_k(d: int, e: bytes, k: int) -> bytes | None:
    """GB/T 32918.2 §6.1 steps A4-A7 with a given k; None if this k must be skipped."""
    point = mul(k, G)
    assert point is not None
    r = (int.from_bytes(e, "big") + point[0]) % N
    if r == 0 or r + k == N:
        return None
    s = pow(1 + d, -1, N) * (k - r * d) % N
    return None if s == 0 else b32(r) + b32(s)


def sign_deterministic(d: int, message: bytes, user_id: bytes = DEFAULT_ID) -> tuple[bytes, int]:
    """(r ‖ s, k) as the vectors make them."""
    e = sm3(z_value(public_key(d), user_id) + message)
    for k in rfc6979_nonces(d, e):
        sig = sign_with_k(d, e, k)
        if sig is not None:
            return sig, k
    raise AssertionError("unreachable")


def verify(pub: bytes, message: bytes, sig: bytes, user_id: bytes = DEFAULT_ID) -> bool:
    """GB/T 32918.2 §7.1, with the §4a key checks."""
    if len(pub) != 65 or pub[0] != 4 or len(sig) != 64:
        return False
    x, y = int.from_bytes(pub[1:33], "big"), int.from_bytes(pub[33:], "big")
    if x >= P or y >= P or (y * y - x**3 - A * x - B) % P:
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if not (0 < r < N and 0 < s < N) or (r + s) % N == 0:
        return False
    e = int.from_bytes(sm3(z_value(pub, user_id) + message), "big")
    point = add(mul(s, G), mul((r + s) % N, (x, y)))
    return point is not None and (e + point[0]) % N == r


def der(sig: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    return encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))


def tongsuo_verify(pub: bytes, message: bytes, sig: bytes) -> bool:
    """Tongsuo's verdict (default ID); False also when it will not load the key."""
    from tongsuopy.crypto import hashes as thashes
    from tongsuopy.crypto.asymciphers import ec as tec
    from tongsuopy.crypto.exceptions import InvalidSignature

    try:
        key = tec.EllipticCurvePublicKey.from_encoded_point(tec.SM2(), pub)
        key.verify(der(sig), message, tec.ECDSA(thashes.SM3()))
    except (InvalidSignature, ValueError):
        return False
    return True


def tongsuo_sign(d: int, message: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from tongsuopy.crypto import hashes as thashes
    from tongsuopy.crypto.asymciphers import ec as tec

    key = tec.derive_private_key(d, tec.SM2())
    r, s = decode_dss_signature(key.sign(message, tec.ECDSA(thashes.SM3())))
    return b32(r) + b32(s)
