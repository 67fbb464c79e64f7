"""Keeping a streaming conversion's memory flat: prefaulting and releasing mapped source pages.

Source tensors are zero-copy views of read-only file mappings. Every page touched stays in the
process's resident set until it is unmapped, so a conversion that only reads would still grow
to the size of the model. After a chunk is done its pages are dropped from this process with
``madvise(MADV_DONTNEED)`` (the kernel's page cache keeps them, nothing is re-read from disk);
before a chunk is needed its pages can be mapped ahead with ``MADV_POPULATE_READ``.
Both act only on views whose memory provably belongs to an ``mmap.mmap`` object: dropping pages
of ordinary (anonymous) memory would zero them.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

PAGE = mmap.PAGESIZE
#: How far around a read fault Linux may map cached pages: its fault-around window (64 KiB) and
#: whole large folios of the page cache (up to 2 MiB on ext4 today; measured).
FAULT_AROUND = max(PAGE, 2 << 20)
_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
# Linux 5.14+: map the pages now (read faults in bulk); older kernels answer EINVAL.
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
_WILLNEED = getattr(mmap, "MADV_WILLNEED", None)
_populate_ok = True


def _mapping_of(arr: np.ndarray) -> tuple[mmap.mmap, int] | None:
    """The ``mmap`` object holding ``arr``'s memory and its base address, or ``None``."""
    obj: Any = arr
    seen = 0
    while obj is not None and seen < 32:
        if isinstance(obj, mmap.mmap):
            try:
                base = np.frombuffer(obj, dtype=np.uint8, count=1).ctypes.data
            except (ValueError, TypeError, BufferError):
                return None
            return obj, base
        if isinstance(obj, np.ndarray):
            obj = obj.base
        elif isinstance(obj, memoryview):
            obj = obj.obj
        else:
            return None
        seen += 1
    return None


def _page_range(arr: np.ndarray, mm: mmap.mmap, base: int, inner: bool) -> tuple[int, int] | None:
    start = arr.ctypes.data - base
    stop = start + arr.nbytes
    if start < 0 or stop > len(mm) or stop <= start:
        return None
    if inner:
        # Only pages wholly inside the view: a neighbour's partial page may still be in use.
        lo = -(-start // PAGE) * PAGE
        hi = stop // PAGE * PAGE
    else:
        lo = start // PAGE * PAGE
        hi = min(len(mm), -(-stop // PAGE) * PAGE)
    return (lo, hi - lo) if hi > lo else None


def release_pages(arr: np.ndarray, edges: bool = False) -> bool:
    """Drop the mapped pages of ``arr`` from this process; ``True`` if it was a file mapping.

    With ``edges`` the pages around it go too, out to the aligned :data:`FAULT_AROUND` window
    (a read fault maps cached pages around it, whole large folios included): harmless for the
    read-only file mapping (a page still in use is mapped again from the page cache), and what
    keeps thousands of small scattered reads (one expert's scales) from each leaving pages behind.
    """
    if _MADV_DONTNEED is None or not isinstance(arr, np.ndarray):
        return False
    found = _mapping_of(arr)
    if found is None:
        return False
    mm, base = found
    rng = _page_range(arr, mm, base, inner=not edges)
    if rng is None:
        return True
    if edges:
        lo = rng[0] // FAULT_AROUND * FAULT_AROUND
        hi = min(len(mm), -(-(rng[0] + rng[1]) // FAULT_AROUND) * FAULT_AROUND)
        rng = (lo, hi - lo)
    try:
        mm.madvise(_MADV_DONTNEED, rng[0], rng[1])
    except (OSError, ValueError):
        return False
    return True


def prefault(arr: np.ndarray) -> None:
    """Map ``arr``'s file pages now, so the kernels that read it do not stall on page faults."""
    global _populate_ok
    if not isinstance(arr, np.ndarray):
        return
    found = _mapping_of(arr)
    if found is None:
        return
    mm, base = found
    rng = _page_range(arr, mm, base, inner=False)
    if rng is None:
        return
    if _populate_ok:
        try:
            mm.madvise(_MADV_POPULATE_READ, rng[0], rng[1])
            return
        except (OSError, ValueError):
            _populate_ok = False
    if _WILLNEED is not None:
        try:
            mm.madvise(_WILLNEED, rng[0], rng[1])
        except (OSError, ValueError):
            pass
