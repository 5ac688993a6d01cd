"""Checks shared by the subcommands: integers in range, paths that name something, and
no silent rollback. A bad argument is refused by argparse (one line, exit 2) before the
command reads or writes anything."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from farecore.errors import ConfigError

__all__ = ["count", "path", "refuse_rollback", "uint"]


def _whole(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def uint(bits: int, what: str) -> Callable[[str], int]:
    """An argparse type: a decimal integer from 0 to 2**bits - 1."""
    top = (1 << bits) - 1

    def parse(text: str) -> int:
        value = _whole(text)
        if not 0 <= value <= top:
            raise argparse.ArgumentTypeError(f"{what} must be 0..{top}, not {value}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def count(what: str, low: int = 1) -> Callable[[str], int]:
    """An argparse type: how many of something, a decimal integer of at least ``low``."""

    def parse(text: str) -> int:
        value = _whole(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{what} must be at least {low}, not {value}")
        return value

    parse.__name__ = what
    return parse


def path(text: str) -> Path:
    """An argparse type: a path that is not empty (``Path("")`` would quietly mean ".")."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path names no file")
    return Path(text)


def refuse_rollback(
    out: Path, generation: int, claimed: Callable[[bytes], int | None], what: str, replace: bool
) -> None:
    """Refuse to overwrite ``out`` when it holds ``generation`` or a later one.

    Gates refuse an older or equal generation, so writing one over a published file
    would only look like an update; ``replace`` (``--replace``) says it is meant.
    """
    if replace or not out.exists():
        return
    if not out.is_file():
        raise ConfigError(f"{out} is not a file")
    try:
        with open(out, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise ConfigError(f"cannot read {out}: {exc.strerror or exc}") from None
    held = claimed(head)
    if held is None:
        raise ConfigError(f"{out} exists and is not a {what}; remove it, or pass --replace")
    if held >= generation:
        raise ConfigError(
            f"{out} holds generation {held}; generation {generation} would not replace it at "
            f"any gate (they refuse an older or equal one). Use a higher --generation, or "
            "pass --replace to overwrite it anyway"
        )
