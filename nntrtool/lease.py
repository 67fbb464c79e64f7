"""Keeping a memory-mapped source file from being cut short while it is read (Linux).

NNTR files and PyTorch checkpoints are read through a memory map. A mapped file that another
process truncates kills the reader with SIGBUS as soon as a page past the new end is touched,
and Python cannot turn that into an exception. A read lease (``fcntl(F_SETLEASE, F_RDLCK)``)
closes that gap: the kernel makes any process that opens the file for writing or truncates it
wait (up to ``/proc/sys/fs/lease-break-time`` seconds) and sends this process SIGIO first. The
SIGIO handler raises :class:`~nntrtool.errors.SourceError` ("changed while being read") in the
main thread, so the run stops, removes its temporary output and exits 2 before the other
process may change a byte. The lease stays until this process exits (or the file is closed
with nothing having tried to change it), so no worker thread still reading can meet a cut page.

Leases are taken only once :func:`enable` was called, as the command-line entry point does: a
program using nntrtool as a library keeps control of its own signals, and of its own writes to
a file it has open through nntrtool (which a lease would make wait).

A lease cannot be taken everywhere: not on another user's file (without CAP_LEASE), not while
some process holds the file open for writing, not on every file system, not outside Linux.
:func:`take` then returns ``None``, and the command line reads such a file without a map
(:func:`wanted`): NNTR tensors with ``pread`` into copies, a PyTorch checkpoint loaded whole, a
transformers model's parameters copied out of their map. A file replaced by rename (a new
inode) never faults a map and is caught by the checks between reads.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from nntrtool.errors import SourceError

try:
    import fcntl

    _SETLEASE = getattr(fcntl, "F_SETLEASE", None)
    _GETLEASE = getattr(fcntl, "F_GETLEASE", None)
except ImportError:  # not on POSIX
    fcntl = None  # type: ignore[assignment]
    _SETLEASE = _GETLEASE = None

_SIGIO = getattr(signal, "SIGIO", None)

#: Open leases: file descriptor -> the path it leases.
_held: dict[int, Path] = {}
#: Leases whose break began (another process wants to write): kept until this process exits.
_broken: dict[int, Path] = {}
_lock = threading.RLock()  # the SIGIO handler may run while the main thread holds it


class ReadLease:
    """A read lease on ``path``, held through its own read-only descriptor."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    @property
    def broken(self) -> bool:
        """Whether another process has tried to write or truncate the file."""
        return self.fd in _broken

    def check(self) -> None:
        """SourceError if another process has tried to write or truncate the file."""
        if self.broken:
            raise _changed(self.path)

    def release(self) -> None:
        """Give the lease back (kept, though, once broken: readers may still be running)."""
        with _lock:
            if self.fd in _broken or _held.pop(self.fd, None) is None:
                return
        os.close(self.fd)


def _changed(path: Path) -> SourceError:
    from nntrtool.messages import source_changed

    return SourceError(source_changed(path, "another process opened it for writing or cut it"))


def _on_sigio(signum: int, frame: object) -> None:
    """A lease break began: mark every lease that is breaking, then stop the run (unless its
    output is already complete and named)."""
    hit: Path | None = None
    with _lock:
        for fd, path in list(_held.items()):
            try:
                state = fcntl.fcntl(fd, _GETLEASE)
            except OSError:
                continue
            if state != fcntl.F_RDLCK:  # F_UNLCK: the lease is being broken
                _broken[fd] = _held.pop(fd)
                hit = hit or path
    outputs = sys.modules.get("nntrtool.outputs")
    if hit is not None and not (outputs is not None and outputs.completed):
        raise _changed(hit)  # (once the output is complete, every byte was read already)


_enabled = {"on": False}


def enable() -> None:
    """Take leases from now on in this process (the command-line tool calls this at start)."""
    _enabled["on"] = True


def wanted() -> bool:
    """Whether this process guards its mapped sources (the command line does): where a lease
    cannot be taken, readers then read copies instead of mapping the file."""
    return _enabled["on"]


def _handler_ready() -> bool:
    """Install the SIGIO handler (main thread only, never over another one)."""
    if not _enabled["on"] or _SIGIO is None:
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(_SIGIO)
    if current is _on_sigio:
        return True
    if current not in (signal.SIG_DFL, None):
        return False
    signal.signal(_SIGIO, _on_sigio)
    return True


def take(path: str | os.PathLike[str]) -> ReadLease | None:
    """A read lease on ``path``, or ``None`` where one cannot be had (see the module text)."""
    if _SETLEASE is None or not _handler_ready():
        return None
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, _SETLEASE, fcntl.F_RDLCK)
    except OSError:  # not our file, open for writing somewhere, or no lease support here
        os.close(fd)
        return None
    with _lock:
        _held[fd] = path
        if fcntl.fcntl(fd, _GETLEASE) != fcntl.F_RDLCK:  # a break began before it was noted
            _broken[fd] = _held.pop(fd)
            raise _changed(path)
    return ReadLease(path, fd)


#: Leases kept until this process exits (files a library maps for as long as it runs).
_kept: list[ReadLease] = []


def hold(paths: Any) -> int:
    """Lease every file of ``paths`` until this process exits: for files another library maps
    (transformers keeps a model's parameters in the mapped safetensors file). How many."""
    taken = [held for held in (take(p) for p in paths) if held is not None]
    _kept.extend(taken)
    return len(taken)


def reset() -> None:
    """Give every lease back and take no more: the end of a command-line run in a process that
    goes on afterwards (a program or test calling the command line's ``main``)."""
    with _lock:
        fds = [*_held, *_broken]
        _held.clear()
        _broken.clear()
        _kept.clear()
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _enabled["on"] = False
    if _SIGIO is not None and threading.current_thread() is threading.main_thread():
        if signal.getsignal(_SIGIO) is _on_sigio:
            signal.signal(_SIGIO, signal.SIG_DFL)


def breaking() -> bool:
    """Whether another process has begun to break one of this process's leases."""
    return bool(_broken)
