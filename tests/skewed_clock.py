"""Run ``python -m farecore`` as a process whose wall clock was set: ``skewed_clock.py
SPEC ARGS...``. SPEC is ``-86400`` (seconds added to the true time) or ``@1654084800``
(the clock starts there and runs on).

Only ``time.time`` and ``time.time_ns`` move, before farecore is imported; monotonic
clocks keep running, as on a machine whose clock was set back. (libfaketime breaks
Python's sleeps when it leaves the monotonic clock alone, and hangs them when it does
not.)
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    spec, args = sys.argv[1], sys.argv[2:]
    true_ns = time.time_ns
    if spec.startswith("@"):
        offset_ns = int(spec[1:]) * 1_000_000_000 - true_ns()
    else:
        offset_ns = int(spec) * 1_000_000_000

    def time_ns() -> int:
        return true_ns() + offset_ns

    time.time_ns = time_ns
    time.time = lambda: time_ns() / 1e9
    from farecore.cli import main as farecore_main

    return farecore_main(args)


if __name__ == "__main__":
    sys.exit(main())
