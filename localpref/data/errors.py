"""Errors and skip policy for bad input.

Bad input never silently becomes NaN, an empty span or a truncated-away correction: it raises a
``SteerError`` naming where it came from (file, line, field), or, under ``on_error="skip"``, it
is dropped and counted by ``reason`` in a ``SkipCounter``.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

OnError = Literal["raise", "skip"]


class SteerError(ValueError):
    """A steer (or raw row) that cannot be used, with where and why.

    ``reason`` is a short stable key used for counting (e.g. ``"invalid_json"``,
    ``"missing_field"``, ``"identical_continuations"``, ``"span_too_long"``).
    """

    def __init__(self, reason: str, message: str, *, file: str | None = None,
                 line: int | None = None, field: str | None = None):
        self.reason = reason
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        where = ":".join(str(x) for x in (file, line) if x is not None)
        loc = " ".join(x for x in (where, f"field '{field}'" if field else "") if x)
        super().__init__(f"{loc}: {message} [{reason}]" if loc else f"{message} [{reason}]")

    def located(self, *, file: str | None = None, line: int | None = None) -> "SteerError":
        """The same error with a file/line filled in where it was missing."""
        return SteerError(self.reason, self.message, file=self.file or file,
                          line=self.line or line, field=self.field)


class SkipCounter(Counter):
    """Counts of skipped items by reason; ``handle`` applies an ``on_error`` policy."""

    def handle(self, err: SteerError, on_error: OnError) -> None:
        if on_error == "raise":
            raise err
        if on_error != "skip":
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self[err.reason] += 1
