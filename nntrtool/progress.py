"""The progress callbacks that long-running library functions take.

Library code never prints. A function that works through many parameters takes a factory
``progress(total, description)`` returning a context manager that yields a
:class:`ProgressLike`, and reports what it has done through that object;
``nntrtool.cli.display.progress_factory`` makes one that draws a bar or logs lines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol


class ProgressLike(Protocol):
    """What a long-running function reports through (``nntrtool.cli.display.Progress``)."""

    def advance(self, n: int, current: str | None = None) -> None: ...

    def log(self, message: str) -> None: ...


#: ``factory(total, description)`` -> a context manager giving a :class:`ProgressLike`.
ProgressFactory = Callable[[int, str], Any]


def token_progress(progress: ProgressFactory | None, total: int, description: str) -> Any:
    """A progress bar counting tokens (nothing when ``progress`` is None)."""
    if progress is None:
        return contextlib.nullcontext(None)
    try:
        return progress(total, description, unit="tokens")
    except TypeError:  # a factory without units
        return progress(total, description)
