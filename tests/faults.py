"""Helpers for the fault-injection tests: run the real CLI in a subprocess, hit it with a signal
or a changed source at a chosen moment, and check what it leaves behind."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INTERRUPTED = "interrupted; nothing written"


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "nntrtool", *(str(a) for a in args)]


def run_cli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def snapshot(*paths: Path) -> dict[str, str]:
    """Content hashes of every file under ``paths`` (inputs must come out unchanged)."""
    out: dict[str, str] = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not progress output."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not line.startswith("[nntrtool]") and "\r" not in line
    ]


def one_line(stderr: str) -> str:
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def interrupt_when(
    argv: list[str],
    ready: Callable[[], bool],
    sig: int,
    delay: float = 0.0,
    timeout: float = 120,
) -> tuple[subprocess.Popen[str], str, bool]:
    """Start ``argv``, wait until ``ready()`` holds, wait ``delay`` more, send ``sig``.

    Returns the finished process, its stderr, and whether the signal was sent while it ran
    (``False``: it ended first, which the caller may accept for late moments)."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    sent = False
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.005)
        if delay:
            time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            sent = True
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc, stderr, sent


def temp_appeared(folder: Path) -> Callable[[], bool]:
    """True once something (the temporary output) appears in ``folder``."""
    return lambda: any(True for _ in folder.iterdir())


def expected_status(sig: int) -> int:
    return 128 + int(sig)


SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
