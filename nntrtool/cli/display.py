"""Shared terminal display: progress over parameters, plain log lines off a terminal, sizes.

Every long-running command (convert, verify, repack, export) reports through :class:`Progress`,
so they all look and behave alike: a rich bar with rate, ETA, the current tensor and the memory
in use on a terminal; a plain, throttled log line now and then when stderr is not a terminal;
nothing at all with ``--quiet``. Library code never prints: it calls the callbacks it is given.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any

from nntrtool.units import human_bytes, human_count  # also imported from here by callers


def rss_bytes() -> int:
    """Resident memory of this process."""
    import psutil

    return psutil.Process().memory_info().rss


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


class Progress:
    """Progress over a known total of units (parameters), shared by every long command.

    Use as a context manager; call :meth:`advance` with the units done and, optionally, the
    name of the tensor being worked on. Thread-safe enough for one producer at a time.
    """

    def __init__(self, total: int, description: str, *, quiet: bool = False, unit: str = "params"):
        self.total = max(int(total), 0)
        self.description = description
        self.quiet = quiet
        self.unit = unit
        self.done = 0
        self.current = ""
        self._rich: Any = None
        self._task: Any = None
        self._start = 0.0
        self._last_log = 0.0
        self.interactive = (not quiet) and sys.stderr.isatty()

    def __enter__(self) -> Progress:
        self._start = time.perf_counter()
        if self.interactive:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("[dim]{task.fields[mem]}[/] {task.fields[current]}"),
                console=stderr_console(),
                transient=False,
                refresh_per_second=8,
            )
            self._rich.__enter__()
            self._task = self._rich.add_task(
                self.description, total=self.total or None, rate="", mem="", current=""
            )
            _ = MofNCompleteColumn  # imported for callers that want it
        elif not self.quiet:
            self._log(f"{self.description}: {human_count(self.total)} {self.unit}")
        return self

    def _log(self, message: str) -> None:
        print(f"[nntrtool] {message}", file=sys.stderr, flush=True)

    def advance(self, n: int, current: str | None = None) -> None:
        """Count ``n`` more units as done; ``current`` names what is being worked on."""
        self.done += int(n)
        if current is not None:
            self.current = current
        if self.quiet:
            return
        now = time.perf_counter()
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        if self._rich is not None:
            if now - self._last_log > 0.1 or self.done >= self.total:
                self._last_log = now
                self._rich.update(
                    self._task,
                    completed=self.done,
                    rate=f"{human_count(rate)} {self.unit}/s",
                    mem=f"mem {human_bytes(rss_bytes())}",
                    current=self.current,
                )
        elif now - self._last_log >= 2.0:
            self._last_log = now
            pct = 100.0 * self.done / self.total if self.total else 100.0
            self._log(
                f"{pct:5.1f}% {human_count(self.done)}/{human_count(self.total)} {self.unit} "
                f"{human_count(rate)}/s mem {human_bytes(rss_bytes())} {self.current}"
            )

    def log(self, message: str) -> None:
        """A line of information above the bar (or a plain line), unless quiet."""
        if self.quiet:
            return
        if self._rich is not None:
            self._rich.console.print(message, markup=False, highlight=False)
        else:
            self._log(message)

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)
            self._rich = None
        elif not self.quiet and exc[0] is None:
            elapsed = time.perf_counter() - self._start
            self._log(f"done: {human_count(self.done)} {self.unit} in {elapsed:.2f} s")


def progress_factory(quiet: bool = False) -> Callable[[int, str], Progress]:
    """``(total, description) -> Progress``: the progress argument library functions take."""
    return functools.partial(Progress, quiet=quiet)
