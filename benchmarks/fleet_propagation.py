"""How long a published revocation takes to reach a fleet of gates polling over HTTP.

The goal (issue #21): a revocation, once published, reaches 99 % of 5,000 gates within
60 s, each gate polling every 30 s. What runs:

- a package directory (``farecore.fleet.publish``): keyring, a 100,000-id base table,
  no delta, served by a real nginx (``etag on``);
- the gates, spread over spawned worker processes. Each is a real ``PackageFollower``
  with its own ``HttpSource``, conditional-request state and package cache, whose
  ``apply`` puts the package in force in its own ``HotRevocation`` (durable marks first,
  as a gate's; one ``TableStore`` per process, as the gates of one host share one).
  A scheduler per process runs ``follower.poll()`` on a small thread pool when each gate
  is due: a random phase, then the follower's own wait (poll_s x U(0.9, 1.1)) after each
  poll. Warm-up puts version 1 in force everywhere; the first gate of a process fetches
  the files and the others' caches get hard links to them (a gate's first download of
  the base is not what is measured here);
- one interval of steady polling (the baseline: the same fleet's conditional GETs);
- version 2, the same base with a delta of 1,000 new revocations. For each gate: the
  time from the rename of ``package.json`` to the moment its snapshot has the new
  generation (and holds the new ids).

Quick: 500 gates polling every 3 s (the same request rate) against two intervals (6 s),
as 60 s is two 30 s intervals.

    python benchmarks/fleet_propagation.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import heapq
import logging
import multiprocessing as mp
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from _report import goal, logged, percentile, write_report

from farecore.card.crypto import Algorithm, PrivateKey
from farecore.card.keys import (
    IssuerKey,
    Keyring,
    SigningKey,
    load_public_key_file,
    save_signing_key,
)
from farecore.decide.revocation import (
    HotRevocation,
    RevocationInForce,
    RevocationTable,
    TableStore,
    build_delta,
)
from farecore.decide.revocation import build_table as build_revocation_table
from farecore.fleet.follow import HttpSource, PackageCache, PackageFollower, Prepared
from farecore.fleet.publish import PublishInputs, publish
from farecore.gate.marks import GateMarks

_log = logging.getLogger(__name__)
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
UNCHANGED, CHANGED, FAILED, REFUSED, ERROR = range(5)


@dataclasses.dataclass(frozen=True)
class Plan:
    gates: int
    poll_s: float
    workers: int = 4
    threads: int = 8  # per worker: the polls in flight at once
    table_ids: int = 100_000
    delta_adds: int = 1_000

    @property
    def goal_s(self) -> float:
        return 2 * self.poll_s  # the 60 s at 30 s polling

    @property
    def deadline_s(self) -> float:
        return 3 * self.poll_s  # a gate not there by then is counted as never


FULL = Plan(gates=5_000, poll_s=30.0)
QUICK = Plan(gates=500, poll_s=3.0)


@dataclasses.dataclass(frozen=True)
class _WorkerSpec:
    worker: int
    first_gate: int
    gates: int
    url: str
    root: Path
    keyring: Path
    signer: Path
    poll_s: float
    threads: int
    target_generation: int  # the delta's
    probe_id: int


class _Gate:
    """One simulated gate: its follower, cache, marks and revocation in force."""

    __slots__ = ("cache", "due", "fleet", "follower", "hot", "marks", "reached", "started")

    def __init__(self, fleet: _Fleet, terminal: int) -> None:
        home = fleet.spec.root / "gates" / str(terminal)
        self.fleet = fleet
        self.cache = PackageCache(home / "package")
        self.marks = GateMarks.load(home / "marks.json", terminal)
        self.hot: HotRevocation | None = None
        self.due = self.started = 0.0  # when the poll now running was due, and began
        # (due, poll start, in force, new ids revoked) once the target generation is in force
        self.reached: tuple[float, float, float, bool] | None = None
        source = HttpSource(fleet.spec.url, timeout_s=10.0)
        self.follower = PackageFollower(source, self.cache, fleet.keyring, self.apply, poll_s=0)

    def _adopt(self, table: RevocationInForce) -> None:
        self.marks.revocation = table.floor_mark()
        self.marks.save()

    def apply(self, prepared: Prepared) -> None:
        fleet = self.fleet
        if self.hot is None:
            self.hot = HotRevocation(
                prepared.revocation_base,
                fleet.signer,
                poll_interval_s=0,
                store=fleet.store,
                floor=self.marks.revocation,
                on_adopt=self._adopt,
            )
        self.hot.offer(prepared.revocation_base, prepared.revocation_delta)
        snapshot = self.hot.snapshot()
        if self.reached is None and snapshot.generation >= fleet.spec.target_generation:
            revoked = snapshot.lookup(fleet.spec.probe_id) is not None
            self.reached = (self.due, self.started, time.time(), revoked)


class _Fleet:
    """The gates of one worker process and the scheduler that polls them."""

    def __init__(self, spec: _WorkerSpec) -> None:
        self.spec = spec
        self.keyring = Keyring.load(spec.keyring)
        self.signer = load_public_key_file(spec.signer, role="revocation")
        self.store = TableStore(spec.root / "store")
        first = spec.first_gate
        self.gates = [_Gate(self, first + i + 1) for i in range(spec.gates)]
        self.pool = ThreadPoolExecutor(spec.threads, thread_name_prefix="poll")
        self.rng = random.Random(spec.worker)
        self.heap: list[tuple[float, int]] = []
        self.cond = threading.Condition()
        self.stopping = False
        self.dispatcher: threading.Thread | None = None
        # per poll: start, lag behind its due time, duration, thread CPU, outcome
        self.polls: list[tuple[float, float, float, float, int]] = []

    def _poll(self, gate: _Gate, due: float | None) -> int:
        f = gate.follower
        failures, refusals = f.failures, f.refusals
        gate.due = due if due is not None else 0.0
        gate.started = start = time.time()
        cpu = time.thread_time()
        try:
            kind = CHANGED if f.poll() else UNCHANGED
        except Exception:
            _log.exception("poll of gate %d failed", gate.marks.terminal_id)
            kind = ERROR
        if kind == UNCHANGED and f.failures > failures:
            kind = FAILED
        elif kind == UNCHANGED and f.refusals > refusals:
            kind = REFUSED
        end = time.time()
        if due is not None:
            self.polls.append((start, start - due, end - start, time.thread_time() - cpu, kind))
        return kind

    def warm_up(self) -> dict[str, Any]:
        """Every gate takes the published package (version 1) once, as at its start."""
        t0 = time.time()
        first = self.gates[0]
        self._poll(first, None)
        seeds = [p for p in first.cache.files.iterdir() if not p.name.startswith(".")]
        for gate in self.gates[1:]:
            for p in seeds:
                os.link(p, gate.cache.files / p.name)
        for _ in range(3):  # a gate whose first poll failed tries again, as a gate would
            todo = [g for g in self.gates if g.follower.version is None]
            list(self.pool.map(lambda g: self._poll(g, None), todo))
        holding = sum(1 for g in self.gates if g.follower.version is not None)
        return {"seconds": time.time() - t0, "holding": holding}

    def run(self, start: float) -> None:
        """Poll every gate from ``start`` on: a random phase in one interval, then the
        follower's own wait after each poll."""
        poll_s = self.spec.poll_s
        with self.cond:
            for i in range(len(self.gates)):
                heapq.heappush(self.heap, (start + self.rng.uniform(0, poll_s), i))
        self.dispatcher = threading.Thread(target=self._dispatch, name="dispatch", daemon=True)
        self.dispatcher.start()

    def _dispatch(self) -> None:
        while True:
            with self.cond:
                while not self.stopping:
                    wait = self.heap[0][0] - time.time() if self.heap else None
                    if wait is not None and wait <= 0:
                        break
                    self.cond.wait(wait)
                if self.stopping:
                    return
                due, i = heapq.heappop(self.heap)
            self.pool.submit(self._scheduled, i, due)

    def _scheduled(self, i: int, due: float) -> None:
        self._poll(self.gates[i], due)
        with self.cond:
            nxt = time.time() + self.spec.poll_s * self.rng.uniform(0.9, 1.1)
            heapq.heappush(self.heap, (nxt, i))
            self.cond.notify()

    def mark(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"wall": time.time(), "cpu": usage.ru_utime + usage.ru_stime}

    def reached(self) -> int:
        return sum(1 for g in self.gates if g.reached is not None)

    def stop(self) -> dict[str, Any]:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.dispatcher is not None:
            self.dispatcher.join()
        self.pool.shutdown(wait=True)
        for g in self.gates:
            if g.hot is not None:
                g.hot.close()
        return {
            "polls": self.polls,
            "reached": [g.reached for g in self.gates],
            "refusals": sum(g.follower.refusals for g in self.gates),
            "errors": [g.follower.last_error for g in self.gates if g.follower.refusals][:3],
            "memory": _memory(),
        }


def _memory() -> dict[str, float]:
    """This process's memory in MB: peak and current RSS, anonymous RSS, and PSS (a
    page mapped by 1,250 gates' tables counts once in PSS, 1,250 times in RSS)."""
    out: dict[str, float] = {}
    for name, keys in (("status", ("VmHWM", "VmRSS", "RssAnon")), ("smaps_rollup", ("Pss",))):
        try:
            with open(f"/proc/self/{name}", encoding="ascii") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in keys:
                        out[key] = int(value.split()[0]) / 1024
        except OSError:
            pass
    return out


def _worker_main(conn: Connection, spec: _WorkerSpec) -> None:
    try:
        fleet = _Fleet(spec)
        conn.send(len(fleet.gates))
        while True:
            command, arg = conn.recv()
            if command == "warm":
                conn.send(fleet.warm_up())
            elif command == "run":
                fleet.run(arg)
                conn.send(True)
            elif command == "mark":
                conn.send(fleet.mark())
            elif command == "reached":
                conn.send(fleet.reached())
            elif command == "stop":
                conn.send(fleet.stop())
                return
    except BaseException:
        with contextlib.suppress(OSError):  # the parent may be gone already
            conn.send(RuntimeError(f"worker {spec.worker}:\n{traceback.format_exc()}"))


class _Workers:
    def __init__(self, specs: list[_WorkerSpec]) -> None:
        ctx = mp.get_context("spawn")  # fresh processes: their memory is theirs alone
        self.conns: list[Connection] = []
        self.procs: list[mp.process.BaseProcess] = []
        for spec in specs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, spec), name=f"gates-{spec.worker}")
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def _recv(self, conn: Connection) -> Any:
        try:
            got = conn.recv()
        except EOFError:
            raise RuntimeError("a worker process died") from None
        if isinstance(got, RuntimeError):
            raise got
        return got

    def ask(self, command: str, arg: Any = None) -> list[Any]:
        for conn in self.conns:
            conn.send((command, arg))
        return [self._recv(conn) for conn in self.conns]

    def ready(self) -> int:
        return sum(self._recv(conn) for conn in self.conns)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()  # a worker still waiting for a command gets EOF and ends
        for proc in self.procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()
                proc.join()


# --- the package server --------------------------------------------------------------


class _Nginx:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def cpu_s(self) -> float:
        """CPU seconds used so far by nginx's master and workers."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(entry.name) == self.proc.pid or int(fields[1]) == self.proc.pid:
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def requests(self) -> list[tuple[float, int, str]]:
        """(time, status, path) of each request served, from the access log."""
        out = []
        for line in self.log.read_text().splitlines():
            t, status, path = line.split(" ", 2)
            out.append((float(t), int(status), path))
        return out


@contextlib.contextmanager
def _nginx_serving(root: Path, work: Path) -> Iterator[_Nginx]:
    """Debian's nginx serving ``root`` on a free local port, logging every request."""
    work.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the files
    temps = "".join(
        f"{kind}_temp_path {work / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    log = work / "access.log"
    conf = work / "nginx.conf"
    conf.write_text(
        f"{user}daemon off;\nworker_processes 2;\npid {work / 'nginx.pid'};\n"
        f"error_log {work / 'error.log'} warn;\nevents {{ worker_connections 4096; }}\n"
        f"http {{\n {temps} default_type application/octet-stream;\n"
        " types { application/json json; }\n log_format bench '$msec $status $uri';\n"
        f" access_log {log} bench;\n"
        f" server {{ listen 127.0.0.1:{port}; root {root}; etag on;\n"
        '  location = /package.json { add_header Cache-Control "no-cache"; }\n'
        "  location / { } }\n}\n"
    )
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(work)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err.strip()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not listen within 10 s") from None
                time.sleep(0.02)
        yield _Nginx(proc, f"http://127.0.0.1:{port}/", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the publisher -------------------------------------------------------------------


@dataclasses.dataclass
class _Office:
    out: Path
    keyring: Path
    signer: Path
    base: Path
    delta: Path
    probe_id: int
    publishing: SigningKey

    def inputs(self, with_delta: bool) -> PublishInputs:
        signer = load_public_key_file(self.signer, role="revocation")
        return PublishInputs(self.keyring, self.base, signer, self.delta if with_delta else None)


def _key(role: str, key_id: int) -> SigningKey:
    return SigningKey(role, key_id, PrivateKey(Algorithm.ED25519, bytes([key_id % 256]) * 32))


def _office(root: Path, plan: Plan) -> _Office:
    """Keys, keyring, a base table and the delta to publish later: the card office's."""
    root.mkdir(parents=True, exist_ok=True)
    revocation, publishing, issuer = (
        _key("revocation", 77),
        _key("publishing", 501),
        _key("issuer", 9),
    )
    _, signer = save_signing_key(revocation, root / "revocation")
    entry = IssuerKey(publishing.key_id, publishing.algorithm, publishing.private.public_bytes)
    ring = Keyring([IssuerKey(9, issuer.algorithm, issuer.private.public_bytes)], [entry])
    ring.save(root / "keyring.json")
    rng = np.random.default_rng(21)
    ids = np.unique(rng.integers(1, 2**63, size=plan.table_ids + plan.delta_adds, dtype=np.uint64))
    rng.shuffle(ids)
    base_ids, new_ids = ids[: ids.size - plan.delta_adds], ids[ids.size - plan.delta_adds :]
    now = int(time.time())
    base = root / "base.frt"
    times, reasons = np.full(base_ids.size, now, np.int64), np.ones(base_ids.size, np.uint8)
    build_revocation_table(base_ids, times, reasons, revocation, 1, now, base)
    table = RevocationTable.open(base, revocation.public())
    every = np.concatenate([base_ids, new_ids])
    n = every.size
    delta = root / "delta.frd"
    build_delta(
        table, every, np.full(n, now, np.int64), np.ones(n, np.uint8), revocation, 2, now, delta
    )
    return _Office(
        root / "pkg", root / "keyring.json", signer, base, delta, int(new_ids[0]), publishing
    )


# --- the run -------------------------------------------------------------------------


def _stats(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    return statistics.median(values), percentile(values, 99), max(values)


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not np.isfinite(value) else round(value, digits)


def measure_propagation(quick: bool, workdir: Path, plan: Plan | None = None) -> dict[str, Any]:
    """Run the fleet and return ``{"metrics", "goals", "rows"}`` for ``write_report``."""
    plan = plan or (QUICK if quick else FULL)
    office = _office(workdir / "office", plan)
    publish(office.out, office.inputs(False), office.publishing)
    with _nginx_serving(office.out, workdir / "nginx") as server:
        per = -(-plan.gates // plan.workers)
        specs = [
            _WorkerSpec(
                w,
                w * per,
                min(per, plan.gates - w * per),
                server.url,
                workdir / f"worker-{w}",
                office.keyring,
                office.signer,
                plan.poll_s,
                plan.threads,
                2,
                office.probe_id,
            )
            for w in range(plan.workers)
            if w * per < plan.gates
        ]
        t_spawn = time.time()
        workers = _Workers(specs)
        try:
            gates = workers.ready()
            _log.info(
                "%d gates in %d processes (%.1f s); warming up",
                gates,
                len(specs),
                time.time() - t_spawn,
            )
            warm = workers.ask("warm")
            holding = sum(w["holding"] for w in warm)
            warmup_s = max(w["seconds"] for w in warm)
            _log.info("%d of %d gates hold version 1 after %.1f s", holding, gates, warmup_s)
            t_run = time.time() + 0.2
            workers.ask("run", t_run)
            time.sleep(max(0.0, t_run - time.time()))
            marks0, nginx0 = workers.ask("mark"), server.cpu_s()
            time.sleep(max(0.0, t_run + plan.poll_s - time.time()))
            marks1, nginx1 = workers.ask("mark"), server.cpu_s()
            t_before = time.time()
            publish(office.out, office.inputs(True), office.publishing)
            t_after = time.time()
            renamed = os.stat(office.out / "package.json").st_ctime
            t_pub = min(max(renamed, t_before), t_after)  # the rename (ctime), within publish
            _log.info("version 2 published; waiting for the gates")
            reached, last_said = 0, t_pub
            while reached < gates and time.time() < t_pub + plan.deadline_s:
                time.sleep(min(0.25, plan.poll_s / 20))
                reached = sum(workers.ask("reached"))
                if time.time() - last_said >= 10:
                    _log.info("%d of %d gates after %.0f s", reached, gates, time.time() - t_pub)
                    last_said = time.time()
            _log.info("%d of %d gates after %.1f s; stopping", reached, gates, time.time() - t_pub)
            results = workers.ask("stop")
        finally:
            workers.close()
        served = server.requests()
    window = (marks0[0]["wall"], marks1[0]["wall"])
    worker_cpu = sum(b["cpu"] - a["cpu"] for a, b in zip(marks0, marks1, strict=True))
    return _summarize(
        plan, gates, holding, warmup_s, t_pub, window, worker_cpu, nginx1 - nginx0, results, served
    )


def _summarize(
    plan: Plan,
    gates: int,
    holding: int,
    warmup_s: float,
    t_pub: float,
    window: tuple[float, float],
    worker_cpu: float,
    nginx_cpu: float,
    results: list[dict[str, Any]],
    served: list[tuple[float, int, str]],
) -> dict[str, Any]:
    polls = [p for r in results for p in r["polls"]]
    reached = [g for r in results for g in r["reached"] if g is not None]
    latency = sorted(at - t_pub for _, _, at, _ in reached)
    everyone = latency + [float("inf")] * (gates - len(latency))  # missing: never
    p50, p99, top = (
        (statistics.median(everyone), percentile(everyone, 99), everyone[-1])
        if gates
        else (None, None, None)
    )
    schedule = [due - t_pub for due, _, _, _ in reached]  # when the poll was due
    wait = [start - t_pub for _, start, _, _ in reached]
    work = [(at - start) * 1e3 for _, start, at, _ in reached]
    lo, hi = window
    steady = [p for p in polls if lo <= p[0] < hi]
    unchanged = [p for p in steady if p[4] == UNCHANGED]
    get_p50, get_p99, _ = _stats([p[2] * 1e3 for p in unchanged])
    cpu_per_poll = statistics.fmean(p[3] for p in unchanged) * 1e3 if unchanged else None
    lag_steady = percentile([p[1] * 1e3 for p in steady], 99) if steady else None
    late = [p[1] * 1e3 for p in polls if p[0] >= t_pub]
    lag_after = percentile(late, 99) if late else None
    in_window = [r for r in served if lo <= r[0] < hi]
    after = [r for r in served if r[0] >= t_pub]
    new_polls = [p for p in polls if p[4] == CHANGED]
    memory = [r["memory"] for r in results]
    within = sum(1 for x in latency if x <= plan.goal_s) / gates if gates else None
    metrics: dict[str, Any] = {
        "propagation_gates": gates,
        "propagation_poll_interval_s": plan.poll_s,
        "propagation_worker_processes": len(results),
        "propagation_table_ids": plan.table_ids,
        "propagation_delta_added": plan.delta_adds,
        "propagation_warmup_s": _r(warmup_s, 1),
        "propagation_gates_on_version_1": holding,
        "propagation_p50_s": _r(p50),
        "propagation_p99_s": _r(p99),
        "propagation_max_s": _r(top),
        "propagation_within_goal_share": _r(within, 4),
        "propagation_gates_reached": len(latency),
        "propagation_new_ids_revoked_share": (
            _r(sum(1 for *_, ok in reached if ok) / gates, 4) if gates else None
        ),
        "propagation_p99_vs_poll_interval": _r(p99 / plan.poll_s if p99 is not None else None),
        # The poll schedule alone (the best these gates could do: when their next poll
        # was due), and when it actually started.
        "propagation_schedule_p99_s": _r(_stats(schedule)[1]),
        "propagation_wait_for_poll_p99_s": _r(_stats(wait)[1]),
        "propagation_new_package_poll_p50_ms": _r(_stats(work)[0], 2),
        "propagation_new_package_poll_p99_ms": _r(_stats(work)[1], 2),
        "propagation_new_package_poll_cpu_ms": _r(
            statistics.fmean(p[3] for p in new_polls) * 1e3 if new_polls else None, 2
        ),
        "propagation_conditional_get_p50_ms": _r(get_p50, 2),
        "propagation_conditional_get_p99_ms": _r(get_p99, 2),
        "propagation_poll_cpu_ms": _r(cpu_per_poll, 3),
        "propagation_worker_cpu_per_poll_ms": _r(
            worker_cpu / len(steady) * 1e3 if steady else None, 3
        ),
        "propagation_nginx_requests_per_s": _r(len(in_window) / (hi - lo), 1),
        "propagation_nginx_304_share": _r(
            sum(1 for r in in_window if r[1] == 304) / len(in_window) if in_window else None, 4
        ),
        "propagation_nginx_cpu_per_request_us": _r(
            nginx_cpu / len(in_window) * 1e6 if in_window else None, 1
        ),
        "propagation_nginx_200_after_publish": sum(1 for r in after if r[1] == 200),
        # How late polls started after they were due (the simulator keeping up): in the
        # steady window, and after the publish, when each gate's new-package poll does
        # its durable writes on the one disk all simulated gates share.
        "propagation_scheduler_lag_p99_ms": _r(lag_steady, 2),
        "propagation_scheduler_lag_after_publish_p99_ms": _r(lag_after, 2),
        "propagation_polls_failed": sum(1 for p in polls if p[4] in (FAILED, ERROR)),
        "propagation_packages_refused": sum(r["refusals"] for r in results),
        "propagation_worker_peak_rss_mb": _r(max(m.get("VmHWM", 0) for m in memory), 1),
        "propagation_worker_rss_anon_mb": _r(max(m.get("RssAnon", 0) for m in memory), 1),
        "propagation_worker_pss_total_mb": _r(sum(m.get("Pss", 0) for m in memory), 1),
    }
    for r in results:
        for why in r["errors"]:
            _log.warning("a gate refused a package: %s", why)
    goal_s = plan.goal_s
    goals = [
        goal(
            f"revocation reaches 99 % of {gates} gates within {goal_s:g} s "
            f"({plan.poll_s:g} s polls via nginx)",
            metrics["propagation_p99_s"],
            "<=",
            goal_s,
            "s",
        )
    ]

    m = metrics
    cond = m["propagation_conditional_get_p99_ms"]
    table = [  # what, value, baseline, goal
        ("propagation p50 s", m["propagation_p50_s"], plan.poll_s / 2, ""),
        ("propagation p99 s", m["propagation_p99_s"], plan.poll_s, f"<= {goal_s:g}"),
        ("propagation max s", m["propagation_max_s"], plan.poll_s * 1.1, ""),
        (
            "p99 vs the poll schedule alone",
            m["propagation_p99_s"],
            m["propagation_schedule_p99_s"],
            "",
        ),
        (f"share within {goal_s:g} s", m["propagation_within_goal_share"], None, ">= 0.99"),
        ("new-package poll p99 ms", m["propagation_new_package_poll_p99_ms"], cond, ""),
        ("conditional GET p99 ms", cond, None, ""),
        ("nginx requests/s", m["propagation_nginx_requests_per_s"], gates / plan.poll_s, ""),
        ("nginx 304 share", m["propagation_nginx_304_share"], None, ""),
        ("client CPU per poll ms", m["propagation_poll_cpu_ms"], None, ""),
        ("worker peak RSS MB", m["propagation_worker_peak_rss_mb"], None, ""),
        ("workers' PSS MB", m["propagation_worker_pss_total_mb"], None, ""),
    ]
    rows = [
        (
            what,
            "n/a" if value is None else f"{value:g}",
            "" if base is None else f"{base:.4g}",
            "" if value is None or not base else f"{value / base:.2f}",
            target,
        )
        for what, value, base, target in table
    ]
    return {"metrics": metrics, "goals": goals, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 gates polling every 3 s")
    parser.add_argument(
        "--out", help="JSON path (default benchmarks/results/fleet_propagation.json)"
    )
    parser.add_argument(
        "--workdir", help="where the gates keep their state (default: a temporary directory)"
    )
    args = parser.parse_args(argv)
    with (
        logged("fleet_propagation"),
        tempfile.TemporaryDirectory(prefix="fleet-prop-", dir=args.workdir) as tmp,
    ):
        got = measure_propagation(args.quick, Path(tmp))
        write_report(
            "fleet_propagation", args.quick, got["metrics"], got["goals"], args.out, got["rows"]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
