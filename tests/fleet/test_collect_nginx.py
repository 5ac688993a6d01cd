"""The collection point as it is deployed: behind nginx, which terminates TLS and maps a
path prefix, and with its own TLS (``--cert``/``--key``) for a point on its own.

nginx runs as a real process with a generated configuration in the test's directory;
the certificate is made by the test for 127.0.0.1 and is the courier's trust anchor.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_collect_support import (
    DAY,
    TID,
    TZ,
    CutProxy,
    batch_of,
    collect_process,
    day_ms,
    tapper,
    terminal_key,
    write_register,
)

from farecore.fleet.upload import Courier, CourierSettings

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")


def make_cert(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collect.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    """nginx on https://127.0.0.1:PORT/farecore/ in front of ``farecore collect``;
    yields (nginx port, collect port, certificate)."""
    cert, key = make_cert(tmp_path)
    register = write_register(tmp_path / "terminals.csv", [terminal_key()])
    with collect_process(tmp_path / "point", register) as cp:
        port = free_port()
        conf = tmp_path / "nginx.conf"
        temp = tmp_path / "nginx-temp"
        temp.mkdir()
        conf.write_text(
            f"""
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/nginx-error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp_path}/nginx-access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        client_max_body_size 64m;
        location /farecore/ {{
            proxy_pass http://127.0.0.1:{cp.port}/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
        }}
    }}
}}
"""
        )
        proc = subprocess.Popen(
            [NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "nginx-error.log"), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"nginx did not start: {proc.stderr.read()}") from None  # type: ignore[union-attr]
                    time.sleep(0.05)
            yield port, cp.port, cert
        finally:
            proc.terminate()
            proc.wait(15)


def test_hand_in_through_nginx_with_tls_and_a_cut_connection(
    tmp_path: Path, nginx: tuple[int, int, Path]
) -> None:
    port, _, cert = nginx
    journal = tmp_path / "bus.sqlite"
    with tapper(journal) as t:
        t.day(DAY, 80, seed=1)
        t.day(DAY + dt.timedelta(days=1), 10, seed=2)
    data = batch_of(journal, DAY)
    # A relay in front of nginx cuts the TLS stream in the middle of the first day's
    # upload; the next pass resumes from what the point holds.
    proxy = CutProxy(port)
    proxy.cut_after = 3 * 4096
    s = CourierSettings(
        destination=f"https://127.0.0.1:{proxy.port}/farecore/",
        state=tmp_path / "state" / "upload.json",
        spool=tmp_path / "state" / "outbox",
        utc_offset_min=TZ,
        since=DAY,
        chunk_bytes=4096,
        timeout_s=5,
        ca=cert,
    )
    clock_ms = lambda: day_ms(DAY, 48 + 1)  # noqa: E731
    with Courier(s, terminal_key(), journal, clock_ms=clock_ms) as c:
        import threading

        failed: list[BaseException] = []
        th = threading.Thread(target=lambda: _try(c, failed))
        th.start()
        assert proxy.held.wait(20)
        time.sleep(0.3)
        proxy.drop()
        th.join(30)
        assert failed and not th.is_alive()
        # nginx closes its side to the point once it sees the client gone.
        log = tmp_path / "point-collect.err"
        deadline = time.monotonic() + 20
        while "interrupted at offset" not in log.read_text():
            assert time.monotonic() < deadline, _logs(tmp_path)
            time.sleep(0.05)
        part = tmp_path / "point" / "incoming" / str(TID) / f"{TID}-{DAY}.fcb.part"
        held = part.stat().st_size if part.exists() else 0
        assert 0 < held < len(data)
        sent_before = c.point.bytes_sent
        proxy.relay_all()
        acks = c.run_once()
        assert c.point.bytes_sent - sent_before < len(data)  # the rest, not all again
        assert c.clock_offset_s is not None
    proxy.close()
    assert [a.day for a in acks] == [DAY, DAY + dt.timedelta(days=1)]
    stored = (tmp_path / "point" / "batches" / str(TID) / f"{TID}-{DAY}.fcb").read_bytes()
    assert stored == data and acks[0].sha256 == hashlib.sha256(data).digest()
    assert (tmp_path / "point" / "heads" / str(TID) / "latest.json").exists()


def _logs(tmp: Path) -> str:
    return "\n".join(
        f"== {name}\n{(tmp / name).read_text()}"
        for name in ("point-collect.err", "nginx-error.log", "nginx-access.log")
        if (tmp / name).exists()
    )


def _try(c: Courier, failed: list[BaseException]) -> None:
    try:
        c.hand_in()
    except BaseException as exc:
        failed.append(exc)


def test_collect_serves_tls_itself(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    register = write_register(tmp_path / "terminals.csv", [terminal_key()])
    journal = tmp_path / "bus.sqlite"
    with tapper(journal) as t:
        t.day(DAY, 5)
    with collect_process(
        tmp_path / "point", register, "--cert", str(cert), "--key", str(key)
    ) as cp:
        assert cp.url.startswith("https://")
        # A client that never finishes its handshake holds no one else up.
        with socket.create_connection(("127.0.0.1", cp.port)) as idle:
            idle.sendall(b"\x16\x03\x01")
            s = CourierSettings(
                destination=cp.url,
                state=tmp_path / "state.json",
                spool=tmp_path / "outbox",
                utc_offset_min=TZ,
                since=DAY,
                ca=cert,
            )
            with Courier(s, terminal_key(), journal, clock_ms=lambda: day_ms(DAY, 25)) as c:
                assert len(c.run_once()) == 1
        untrusting = CourierSettings(
            destination=cp.url,
            state=tmp_path / "state2.json",
            spool=tmp_path / "outbox2",
            utc_offset_min=TZ,
            since=DAY,
        )
        with (
            Courier(untrusting, terminal_key(), journal, clock_ms=lambda: day_ms(DAY, 25)) as c,
            pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            c.run_once()
