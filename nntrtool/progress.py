"""The progress callbacks that long-running library functions take.

Library code never prints. A function that works through many parameters takes a factory
``progress(total, description)`` returning a context manager that yields a
:class:`ProgressLike`, and reports what it has done through that object;
``nntrtool.cli.display.progress_factory`` makes one that draws a bar or logs lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class ProgressLike(Protocol):
    """What a long-running function reports through (``nntrtool.cli.display.Progress``)."""

    def advance(self, n: int, current: str | None = None) -> None: ...

    def log(self, message: str) -> None: ...


#: ``factory(total, description)`` -> a context manager giving a :class:`ProgressLike`.
ProgressFactory = Callable[[int, str], Any]
