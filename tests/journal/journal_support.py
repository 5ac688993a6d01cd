"""Constants shared by the journal-area tests and the gate driver (a plain module)."""

from __future__ import annotations

from farecore.journal.terminal import Direction, TapContext

TERMINAL_ID = 4242
# 2026-03-02 10:00 in Qingdao (UTC+8)
BASE_MS = 1_772_416_800_000
CTX = TapContext("qd-metro", "M3", "wusi-square", Direction.ENTRY)
