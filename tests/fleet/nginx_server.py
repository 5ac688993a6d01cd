"""A real nginx (Debian's) serving a directory, as a package server would, for tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """A running nginx: ``url`` serves ``root``; ``pause``/``resume`` freeze it (SIGSTOP),
    so a client's request hangs as it would on a dead network."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, work: Path) -> None:
        self.proc = proc
        self.url = url
        self.work = work

    def _pids(self) -> list[int]:
        pids = [self.proc.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text().split()
                except OSError:
                    continue
                if int(stat[3]) == self.proc.pid:
                    pids.append(int(entry.name))
        return pids

    def pause(self) -> None:
        for pid in self._pids():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._pids():
            os.kill(pid, signal.SIGCONT)


@contextmanager
def nginx_serving(root: Path, work: Path) -> Iterator[Nginx]:
    """nginx serving ``root`` on a free local port, with its files under ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the test's files
    temps = "".join(
        f"{kind}_temp_path {work / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = work / "nginx.conf"
    conf.write_text(
        f"{user}daemon off;\nworker_processes 2;\npid {work / 'nginx.pid'};\n"
        f"error_log {work / 'error.log'} info;\nevents {{ worker_connections 1024; }}\n"
        f"http {{\n access_log off;\n {temps} default_type application/octet-stream;\n"
        f" types {{ application/json json; }}\n"
        f" server {{ listen 127.0.0.1:{port}; root {root}; etag on; location / {{ }} }}\n}}\n"
    )
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(work)], stderr=subprocess.PIPE)
    server = Nginx(proc, f"http://127.0.0.1:{port}/", work)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start listening in 10 s") from None
                time.sleep(0.02)
        yield server
    finally:
        server.resume()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
