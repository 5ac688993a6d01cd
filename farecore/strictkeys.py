"""Unknown keys in a configuration file are errors that name the nearest valid key.

A typo (``[revocaton]``, ``max_age``, ``entyr``) must never be silently ignored: the
setting it meant would then quietly keep its default. This module only checks names;
each file's loader checks the values.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from farecore.errors import ConfigError

__all__ = ["check_keys"]


def check_keys(
    table: Mapping[str, Any], where: str, allowed: Iterable[str], what: str = "key"
) -> None:
    """Raise ConfigError naming the first key of ``table`` not in ``allowed``."""
    names = list(allowed)
    for key in table:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid: {', '.join(names)}"
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}unknown {what} {key!r}{hint}")
