"""``farecore collect`` as a hostile network sees it: a real process, raw requests."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_collect_support import (
    DAY,
    OTHER_TID,
    TID,
    CollectProcess,
    batch_of,
    collect_process,
    day_ms,
    tapper,
    terminal_key,
    write_register,
)

from farecore.fleet.collect import Conflict
from farecore.fleet.collect_protocol import (
    SHA256_HEADER,
    TIME_HEADER,
    BatchName,
    parse_status,
)
from farecore.fleet.upload_dest import HttpPoint
from farecore.journal.heads import ChainHead, parse_head, sign_head
from farecore.journal.records import GENESIS_HASH

NAME = f"{TID}-{DAY}.fcb"
PATH = f"/v1/batches/{TID}/{NAME}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("world")
    with tapper(tmp / "a.sqlite") as t:
        t.day(DAY, 50, seed=1)
    with tapper(tmp / "b.sqlite") as t:  # the same terminal, other rides: other bytes
        t.day(DAY, 20, seed=9)
    return {
        "batch": batch_of(tmp / "a.sqlite", DAY),
        "other": batch_of(tmp / "b.sqlite", DAY),
        "register": write_register(
            tmp / "terminals.csv", [terminal_key(), terminal_key(OTHER_TID)]
        ),
    }


@pytest.fixture
def point(tmp_path: Path, world: dict[str, Any]) -> Iterator[CollectProcess]:
    with collect_process(tmp_path / "point", world["register"]) as cp:
        yield cp


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, world: dict[str, Any]
) -> Iterator[CollectProcess]:
    """One point for the tests that store nothing."""
    with collect_process(tmp_path_factory.mktemp("shared") / "point", world["register"]) as cp:
        yield cp


def request(
    cp: CollectProcess, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", cp.port, timeout=10)
    try:
        conn.request(
            method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()}
        )
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    assert resp.getheader(TIME_HEADER) is not None and resp.getheader(TIME_HEADER).isdigit()  # type: ignore[union-attr]
    doc = json.loads(raw) if raw else {}
    return resp.status, doc, resp


def put(
    cp: CollectProcess,
    data: bytes,
    first: int,
    last: int,
    total: int | None = None,
    sha: bytes | None = None,
    path: str = PATH,
) -> tuple[int, dict[str, Any]]:
    total = len(data) if total is None else total
    sha = sha or hashlib.sha256(data).digest()
    # ``data`` is the whole file; the chunk is first..last of it.
    status, doc, _ = request(
        cp,
        "PUT",
        path,
        data[first : last + 1],
        Content_Range=f"bytes {first}-{last}/{total}",
        **{SHA256_HEADER.replace("-", "_"): sha.hex()},
    )
    return status, doc


def test_upload_in_chunks_status_and_idempotent_reupload(
    point: CollectProcess, world: dict[str, Any]
) -> None:
    data = world["batch"]
    status, doc, _ = request(point, "GET", PATH)
    assert status == 200 and doc["verified"] is None and doc["partial"] is None
    half = len(data) // 2
    status, doc = put(point, data, 0, half - 1)
    assert status == 202 and doc["partial"]["offset"] == half
    status, doc, _ = request(point, "GET", PATH)
    assert parse_status(doc).partial.offset == half  # type: ignore[union-attr]
    status, doc = put(point, data, 0, 99)  # the same bytes, not where the point is
    assert status == 416 and doc["partial"]["offset"] == half
    other = hashlib.sha256(b"other").digest()
    status, doc = put(point, data, 0, 99, sha=other)  # other bytes from 0: a fresh start
    assert status == 202 and doc["partial"] == {
        "offset": 100,
        "total": len(data),
        "sha256": other.hex(),
    }
    status, doc = put(point, data, 100, 199)  # these bytes, but not from 0: start over
    assert status == 416 and doc["partial"]["sha256"] == other.hex()
    status, doc = put(point, data, 0, 99)
    assert status == 202 and doc["partial"]["offset"] == 100
    status, doc = put(point, data, 500, 599)  # beyond what it holds
    assert status == 416 and doc["partial"]["offset"] == 100
    status, doc = put(point, data, 100, len(data) - 1)
    assert status == 201
    ack = parse_status(doc).verified
    assert ack is not None and ack.sha256 == hashlib.sha256(data).digest() and ack.count == 50
    assert (point.root / "batches" / str(TID) / NAME).read_bytes() == data
    # The same bytes again, whole or in part: acknowledged again, nothing rewritten.
    status, doc = put(point, data, 0, len(data) - 1)
    assert status == 200 and parse_status(doc).verified == ack
    status, doc, resp = request(point, "HEAD", PATH)
    assert status == 200 and resp.getheader("Content-Length") is not None
    assert HttpPoint(point.url, clock_ms=lambda: 0).hand_in(BatchName(TID, DAY, None), data) == ack


def test_other_bytes_under_a_held_name_are_a_conflict(
    point: CollectProcess, world: dict[str, Any]
) -> None:
    client = HttpPoint(point.url, clock_ms=lambda: 0)
    ack = client.hand_in(BatchName(TID, DAY, None), world["batch"])
    with pytest.raises(Conflict) as conflict:
        client.hand_in(BatchName(TID, DAY, None), world["other"])
    assert conflict.value.existing == ack
    status, doc = put(point, world["other"], 0, len(world["other"]) - 1)
    assert status == 409 and doc["verified"]["sha256"] == ack.sha256.hex()
    assert (point.root / "batches" / str(TID) / NAME).read_bytes() == world["batch"]


@pytest.mark.parametrize(
    "damage",
    ["flip", "truncate", "wrong_sha", "wrong_name", "wrong_terminal"],
)
def test_what_fails_verification_is_kept_aside_and_refused(
    point: CollectProcess, world: dict[str, Any], damage: str
) -> None:
    data = bytearray(world["batch"])
    path, sha = PATH, None
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        del data[-10:]
    elif damage == "wrong_sha":
        sha = hashlib.sha256(b"something else").digest()
    elif damage == "wrong_name":
        path = f"/v1/batches/{TID}/{TID}-{DAY + dt.timedelta(days=-1)}.fcb"
    else:  # another registered terminal's name for this terminal's batch
        path = f"/v1/batches/{OTHER_TID}/{OTHER_TID}-{DAY}.fcb"
    status, doc = put(point, bytes(data), 0, len(data) - 1, sha=sha, path=path)
    assert status == 422, (doc, point.log())
    assert doc["verified"] is None and doc["error"]
    tid = OTHER_TID if damage == "wrong_terminal" else TID
    bad = list((point.root / "rejected" / str(tid)).glob("*.bad"))
    assert len(bad) == 1 and bad[0].read_bytes() == bytes(data)
    assert bad[0].with_suffix(".why").read_text().strip()
    assert not (point.root / "batches").exists() or not any((point.root / "batches").rglob("*.fcb"))
    assert not any((point.root / "incoming").rglob("*.part"))
    assert "refused PUT" in point.log()


def _head(seq: int, chain: bytes, time_ms: int) -> bytes:
    return sign_head(ChainHead(TID, seq, chain, time_ms, None, 3, 0), terminal_key())


def test_heads_keep_the_highest_seq_and_keep_conflicts_beside(point: CollectProcess) -> None:
    heads = point.root / "heads" / str(TID)
    t = day_ms(DAY, 12)
    h10 = _head(10, b"\x0a" * 32, t)
    status, doc, _ = request(point, "POST", f"/v1/heads/{TID}", h10)
    assert status == 200 and doc["latest"] and doc["of_day"]
    status, doc, _ = request(point, "POST", f"/v1/heads/{TID}", _head(7, b"\x07" * 32, t + 1000))
    assert status == 200 and not doc["latest"] and not doc["of_day"]
    assert (heads / "latest.json").read_bytes() == h10
    # Same seq, same hash, later: fresher, replaces.
    h10b = _head(10, b"\x0a" * 32, t + 2000)
    assert request(point, "POST", f"/v1/heads/{TID}", h10b)[0] == 200
    assert (heads / "latest.json").read_bytes() == h10b
    # Same seq, another hash: a rewritten journal. Kept beside, replaces nothing.
    forged = _head(10, b"\xee" * 32, t + 3000)
    status, doc, _ = request(point, "POST", f"/v1/heads/{TID}", forged)
    assert status == 409 and doc["conflict"]
    assert (heads / "latest.json").read_bytes() == h10b
    conflicts = list(heads.glob("conflict-10-*.json"))
    assert len(conflicts) == 1 and conflicts[0].read_bytes() == forged
    # A later day's head gets its own day file; the earlier day's stays.
    h12 = _head(12, b"\x0c" * 32, t + 86_400_000)
    assert request(point, "POST", f"/v1/heads/{TID}", h12)[0] == 200
    utc_day = dt.datetime.fromtimestamp(t / 1000, dt.UTC).date()
    assert (heads / f"{utc_day}.json").read_bytes() == h10b
    assert (heads / f"{utc_day + dt.timedelta(days=1)}.json").read_bytes() == h12
    status, _, _ = request(point, "GET", f"/v1/heads/{TID}")
    assert status == 200
    assert "rewritten" in point.log()
    # Unsigned, garbled or another terminal's heads are refused.
    other = sign_head(
        ChainHead(OTHER_TID, 1, b"\x01" * 32, t, None, None, 0), terminal_key(OTHER_TID)
    )
    assert request(point, "POST", f"/v1/heads/{TID}", other)[0] == 422
    tampered = h12.replace(b'"seq":12', b'"seq":13')
    assert request(point, "POST", f"/v1/heads/{TID}", tampered)[0] == 422
    assert request(point, "POST", f"/v1/heads/{TID}", b"{}")[0] == 422
    assert parse_head((heads / "latest.json").read_bytes(), "x").head.seq == 12


def test_an_empty_journals_head(point: CollectProcess) -> None:
    status, _, _ = request(
        point, "POST", f"/v1/heads/{TID}", _head(0, GENESIS_HASH, day_ms(DAY, 1))
    )
    assert status == 200


@pytest.mark.parametrize(
    ("method", "path", "want"),
    [
        ("GET", f"/v1/batches/{TID}/../../../etc/passwd", 404),
        ("GET", f"/v1/batches/{TID}/..%2f..%2fx.fcb", 400),
        ("GET", f"/v1/batches/{TID}/%2e%2e", 400),
        ("GET", f"/v1/batches/{TID}//{NAME}", 404),
        ("GET", f"/v1/batches/{TID}/{NAME}?x=1", 400),
        ("GET", f"/v1/batches/0{TID}/{NAME}", 404),
        ("GET", f"/v1/batches/{TID}/{TID}-2026-02-30.fcb", 400),
        ("GET", f"/v1/batches/{TID}/{TID}-2026-03-02+0.fcb", 400),
        ("GET", f"/v1/batches/{TID}/{OTHER_TID}-{DAY}.fcb", 400),
        ("GET", f"/v1/batches/99/99-{DAY}.fcb", 404),
        ("GET", "/", 404),
        ("GET", "/v1/heads/" + "9" * 20, 400),
        ("GET", "/v1/heads/" + "9" * 30, 404),
        ("DELETE", PATH, 501),
        ("POST", PATH, 405),
        ("PUT", f"/v1/heads/{TID}", 405),
    ],
)
def test_paths_are_exact(shared: CollectProcess, method: str, path: str, want: int) -> None:
    status, doc, _ = request(shared, method, path, b"" if method in ("POST", "PUT") else None)
    assert status == want, doc
    assert "error" in doc


def test_headers_are_strict_and_sizes_bounded(point: CollectProcess, world: dict[str, Any]) -> None:
    data = world["batch"]
    sha = hashlib.sha256(data).hexdigest()
    cases = [
        ({"Content-Range": f"bytes 0-9/{len(data)}"}, 400),  # no SHA-256
        ({"Content-Range": f"bytes 0-9/{len(data)}", SHA256_HEADER: sha.upper()}, 400),
        ({"Content-Range": f"bytes=0-9/{len(data)}", SHA256_HEADER: sha}, 400),
        ({"Content-Range": f"bytes 00-9/{len(data)}", SHA256_HEADER: sha}, 400),
        ({"Content-Range": "bytes 0-9/*", SHA256_HEADER: sha}, 400),
        ({"Content-Range": f"bytes 0-10/{len(data)}", SHA256_HEADER: sha}, 400),  # 11 ≠ 10 bytes
        ({"Content-Range": "bytes 0-9/2000000000", SHA256_HEADER: sha}, 413),  # > 1 GiB
        ({SHA256_HEADER: sha}, 400),  # no range
    ]
    for headers, want in cases:
        status, doc, _ = request(
            point, "PUT", PATH, data[:10], **{k.replace("-", "_"): v for k, v in headers.items()}
        )
        assert status == want, (headers, doc)
    # A body announced larger than a chunk may be is refused before it is read.
    with socket.create_connection(("127.0.0.1", point.port), timeout=10) as s:
        s.sendall(
            f"PUT {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {1 << 40}\r\n"
            f"Content-Range: bytes 0-{(1 << 40) - 1}/{1 << 40}\r\n{SHA256_HEADER}: {sha}\r\n\r\n".encode()
        )
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply
    with socket.create_connection(("127.0.0.1", point.port), timeout=10) as s:
        s.sendall(
            f"POST /v1/heads/{TID} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".encode()
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 413")
    with socket.create_connection(("127.0.0.1", point.port), timeout=10) as s:
        s.sendall(f"PUT {PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 411")
    for garbage in (
        b"\x00\x01\x02 garbage\r\n\r\n",
        b"GET " + b"/" * 70000 + b" HTTP/1.1\r\n\r\n",
        b"GET /v1/\x1b[2J\x1b[31mred HTTP/1.1\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", point.port), timeout=10) as s:
            s.sendall(garbage)
            reply = s.recv(4096)
        assert reply.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), reply
        assert b"Traceback" not in reply
    assert not any((point.root / "incoming").rglob("*.part"))
    time.sleep(0.2)
    log = point.log()
    assert "\x1b" not in log and "\\x1b[2J" in log  # a client's bytes never drive the terminal


def test_a_day_not_over_at_the_point_is_refused(point: CollectProcess) -> None:
    tomorrow = dt.date.today() + dt.timedelta(days=2)
    status, doc, _ = request(point, "GET", f"/v1/batches/{TID}/{TID}-{tomorrow}.fcb")
    assert status == 200  # asking is fine
    status, doc = put(point, b"x" * 10, 0, 9, path=f"/v1/batches/{TID}/{TID}-{tomorrow}.fcb")
    assert status == 425, doc


def test_connections_beyond_the_bound_are_closed_at_once(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    with collect_process(tmp_path / "point", world["register"], "--max-connections", "2") as cp:
        idle = [socket.create_connection(("127.0.0.1", cp.port)) for _ in range(2)]
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", cp.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert s.recv(100) == b""  # closed at once: two are open
        for s in idle:
            s.close()
        # Their handlers see the close and give the slots back; on a loaded machine that
        # may take a moment, so ask until answered (a closed connection is not an answer).
        deadline = time.monotonic() + 20
        while True:
            try:
                assert request(cp, "GET", PATH)[0] == 200
                break
            except (http.client.HTTPException, OSError):
                assert time.monotonic() < deadline, "the point never answered again"
                time.sleep(0.05)
        assert "too many open" in cp.log()


def test_bad_arguments_exit_2(
    tmp_path: Path, world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from farecore.cli import main

    (tmp_path / "p").mkdir()
    good = ["--dir", str(tmp_path / "p"), "--register", str(world["register"])]
    cases = [
        [*good, "--listen", "nohost"],
        [*good, "--listen", "127.0.0.1:99999"],
        ["--dir", str(tmp_path / "none"), *good[2:], "--listen", "127.0.0.1:0"],
        [*good[:2], "--register", str(tmp_path / "none.csv"), "--listen", "127.0.0.1:0"],
        [*good, "--listen", "127.0.0.1:0", "--tz", "8"],
        [*good, "--listen", "127.0.0.1:0", "--cert", "x"],
        [*good, "--listen", "127.0.0.1:0", "--cert", "x", "--key", "y"],
    ]
    for args in cases:
        try:
            status = main(["collect", *args])
        except SystemExit as exc:  # argparse's own refusals
            status = exc.code  # type: ignore[assignment]
        out, err = capsys.readouterr()
        assert status == 2, (args, err)
        last = err.strip().splitlines()[-1]
        assert last.startswith("farecore") and "error" in last and "Traceback" not in err
        assert out == ""
    # And a real process on a port in use.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "farecore", "collect", *good, "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "in use" in done.stderr, done.stderr


def test_a_refused_chunk_is_read_so_its_sender_gets_the_refusal(shared: CollectProcess) -> None:
    """A courier still sending a 1 MiB chunk reads the 416 with the offset, not a reset."""
    body = bytes(1 << 20)
    for _ in range(3):
        status, doc, _ = request(
            shared,
            "PUT",
            PATH,
            body,
            Content_Range=f"bytes 4096-{4096 + len(body) - 1}/{2 << 20}",
            **{SHA256_HEADER.replace("-", "_"): hashlib.sha256(b"x").hexdigest()},
        )
        assert status == 416 and doc["partial"] is None


def test_chunks_on_new_connections_follow_each_other_at_once(
    point: CollectProcess, world: dict[str, Any]
) -> None:
    """A proxy opens a new connection for each chunk: the next must never find the
    name still taken by the last (which has answered already)."""
    data = world["batch"]
    step = 256
    for first in range(0, len(data), step):
        last = min(first + step, len(data)) - 1
        status, doc = put(point, data, first, last)
        assert status == (201 if last == len(data) - 1 else 202), doc
    assert (point.root / "batches" / str(TID) / NAME).read_bytes() == data
