"""``with`` over what farecore opens: entering gives the object, leaving closes it."""

from __future__ import annotations

from typing import Self

__all__ = ["Closing"]


class Closing:
    """A base for anything with ``close()``: ``with thing:`` closes it on the way out,
    whatever happened inside."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
