"""A real pcscd with the vpcd driver, run as a child process for tests, benchmarks and the simulator.

``PcscDaemon`` starts ``pcscd --foreground --apdu --debug`` with its log in a file, waits
until the daemon says it is ready, and stops it with SIGTERM (or SIGKILL, to test
recovery). By default it runs *isolated*: in a private mount namespace whose
``/run/pcscd`` is a directory of ours, with its own reader.conf.d naming vpcd on a port
of ours. Clients find it through ``PCSCLITE_CSOCK_NAME`` (see :attr:`client_env`), so
two test runs, or a test run and a system pcscd, never fight over one socket or one
vpcd port.

It must never touch a pcscd it did not start, and never leave one running after
:meth:`stop` or the ``with`` block.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from farecore.errors import ConfigError, ReaderIOError

__all__ = [
    "DEFAULT_VPCD_PORT",
    "SYSTEM_RUN_DIR",
    "VPCD_DRIVER",
    "PcscDaemon",
    "can_isolate",
    "free_port_pair",
    "needs_disable_polkit",
]

DEFAULT_VPCD_PORT = 35963
SYSTEM_RUN_DIR = Path("/run/pcscd")
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
_READY_LINE = b"daemon ready"


def needs_disable_polkit(pcscd: str = "pcscd") -> bool:
    """True when this pcscd has polkit support (pcsc-lite 2.x), which must be turned off here."""
    try:
        out = subprocess.run([pcscd, "--help"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"--disable-polkit" in out.stdout + out.stderr


def can_isolate() -> bool:
    """True when a private mount namespace can be made here (root, or CAP_SYS_ADMIN)."""
    if shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(
            ["unshare", "--mount", "true"], capture_output=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def free_port_pair(start: int = 40000, stop: int = 60000) -> int:
    """A port P such that P and P+1 are both free on all interfaces (vpcd opens both)."""
    for port in range(start + (os.getpid() % 997) * 2, stop, 2):
        if all(_port_free(p) for p in (port, port + 1)):
            return port
    raise ReaderIOError("no free TCP port pair for vpcd")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(run_dir: Path) -> None:
    """Remove pcscd.{comm,pid} left by a killed daemon; refuse if that daemon still lives."""
    pid_file = run_dir / "pcscd.pid"
    with contextlib.suppress(FileNotFoundError):
        text = pid_file.read_text().strip()
        if text.isdigit() and _pid_alive(int(text)):
            raise ReaderIOError(f"another pcscd (pid {text}) is running with {run_dir}")
    for name in ("pcscd.comm", "pcscd.pid"):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()


class PcscDaemon:
    """One pcscd child process; restartable; a context manager that always stops it.

    ``isolated=False`` runs the stock daemon on the system socket and the stock vpcd
    ports (35963/35964), e.g. for a demo next to ``pcsc_scan``; clients then need no
    environment. ``isolated=None`` isolates when this machine allows it (see
    :func:`can_isolate`) and falls back to the stock setup otherwise.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        isolated: bool | None = True,
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        ready_timeout: float = 10.0,
    ) -> None:
        pcscd = shutil.which("pcscd") or shutil.which("pcscd", path="/usr/sbin:/sbin")
        if pcscd is None:
            raise ConfigError("pcscd is not installed (Debian: apt-get install pcscd)")
        if not VPCD_DRIVER.exists():
            raise ConfigError(
                "the vpcd driver is not installed (Debian: apt-get install vsmartcard-vpcd)"
            )
        if isolated is None:
            isolated = can_isolate()
        elif isolated and shutil.which("unshare") is None:
            raise ConfigError("isolated pcscd needs unshare(1) from util-linux")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="farecore-pcscd-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.isolated = isolated
        if port is None:
            port = free_port_pair() if isolated else DEFAULT_VPCD_PORT
        self.port = port
        self.log_path = Path(log_path) if log_path else self.workdir / "pcscd.log"
        self.ready_timeout = ready_timeout
        self._pcscd = pcscd
        self._polkit = needs_disable_polkit(pcscd)
        self._proc: subprocess.Popen[bytes] | None = None
        self.run_dir = self.workdir / "run" if isolated else SYSTEM_RUN_DIR
        self.conf_dir = self.workdir / "reader.conf.d"

    # -- what clients need -------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "pcscd.comm"

    @property
    def client_env(self) -> dict[str, str]:
        """Environment a pyscard client (or ``farecore gate`` process) needs to reach us."""
        return {"PCSCLITE_CSOCK_NAME": str(self.socket_path)} if self.isolated else {}

    @property
    def reader_names(self) -> tuple[str, str]:
        """The two readers vpcd exposes: on :attr:`port` and on ``port + 1``."""
        return ("Virtual PCD 00 00", "Virtual PCD 00 01")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- lifecycle ---------------------------------------------------------------------

    def _command(self) -> list[str]:
        daemon = [self._pcscd, "--foreground", "--apdu", "--debug"]
        if self._polkit:
            daemon.append("--disable-polkit")
        if not self.isolated:
            return daemon
        daemon += ["--config", str(self.conf_dir)]
        # pcscd hard-codes /run/pcscd for its socket and pid file; a private mount
        # namespace lets us lay our own directory over it without touching the host's.
        script = f'mount --bind "$0" {SYSTEM_RUN_DIR} && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                str(self.run_dir), *daemon]  # fmt: skip

    def _write_config(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        SYSTEM_RUN_DIR.mkdir(parents=True, exist_ok=True)  # the mount point must exist
        (self.conf_dir / "vpcd").write_text(
            'FRIENDLYNAME "Virtual PCD"\n'
            f"DEVICENAME   /dev/null:0x{self.port:04X}\n"
            f"LIBPATH      {VPCD_DRIVER}\n"
            f"CHANNELID    0x{self.port:04X}\n"
        )

    def start(self) -> None:
        """Start the daemon and wait until it serves clients (ReaderIOError if it will not)."""
        if self.running:
            return
        if self.isolated:
            self._write_config()
        _remove_stale(self.run_dir)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self._log_tail(offset)
                self._proc = None
                raise ReaderIOError(f"pcscd exited at start; its log ends:\n{tail}")
            if _READY_LINE in self._log_since(offset) and self.socket_path.exists():
                return
            time.sleep(0.02)
        self.stop()
        raise ReaderIOError(f"pcscd not ready after {self.ready_timeout} s (log: {self.log_path})")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait (SIGKILL if it will not go)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, the way a crash looks: stale socket and pid files stay behind."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PcscDaemon:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- log ---------------------------------------------------------------------------

    def _log_since(self, offset: int) -> bytes:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read()
        except FileNotFoundError:
            return b""

    def _log_tail(self, offset: int, lines: int = 15) -> str:
        text = self._log_since(offset).decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])
