"""How ``auto`` picks between numpy and numba for one job: whichever should finish first.

numba's kernels are many times faster than numpy's, but a kernel not yet in numba's on-disk
cache is compiled first (one to seven seconds each here), and even a cached one costs numba's
import and a load. For a small model the numpy kernels are done before numba would have
started, so a new user's first commands run in well under a second instead of waiting for a
compile. Both backends write the same bytes, so the choice changes no output, only the time.

A kernel counts as compiled when a marker says so: it is written to the folder numba caches
to, after the kernel first ran there under numba, and it names this package's kernel sources
and numba's install, so an edit or an upgrade makes it stale. This module imports no numba.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass

_QUANT_DIR = os.path.dirname(os.path.abspath(__file__))

#: Seconds to import numba and run the first parallel kernel in a process (threads start).
NUMBA_START_S = 0.55
#: Seconds to load one cached kernel.
CACHED_LOAD_S = 0.05
#: Extra seconds of the first compile in a process (numba builds its compiler state).
FIRST_COMPILE_S = 0.8
#: Seconds to compile each kernel (a C-contiguous source of the given element type): each one
#: compiled after another in one process on this project's 2-core x86-64 VM at load average
#: 1.4, so without the first compile's extra. Only the ratio to the numpy rates below matters,
#: and a loaded machine stretches both; ``benchmarks/bench_first_run.py --kernels`` measures
#: the compiles (with that extra) on any machine.
COMPILE_S: dict[str, float] = {
    "quantize-q4_0-float32": 1.3,
    "quantize-q4_0-uint16": 2.4,
    "quantize-q6_k-float32": 6.0,
    "quantize-q6_k-uint16": 7.0,
    "quantize-q8_0-float32": 1.0,
    "quantize-q8_0-uint16": 1.3,
    "dequantize-q4_0": 1.5,
    "dequantize-q6_k": 2.1,
    "dequantize-q8_0": 0.9,
    "repack": 0.5,
    "unpack": 0.5,
    "error-sums": 1.7,
}
#: Elements per second of the numpy kernels on one core (same machine, same load).
NUMPY_RATE: dict[str, float] = {
    "quantize-q4_0": 140e6,
    "quantize-q6_k": 18e6,
    "quantize-q8_0": 100e6,
    "quantize-imatrix-q4_0": 8e6,
    "quantize-imatrix-q6_k": 6e6,
    "dequantize-q4_0": 600e6,
    "dequantize-q6_k": 450e6,
    "dequantize-q8_0": 1000e6,
    "repack": 900e6,
    "unpack": 1300e6,
    "error-sums": 60e6,
}
#: Elements per second of the numba kernels, conservatively (one busy core).
NUMBA_RATE: dict[str, float] = {
    "quantize-q4_0": 2e9,
    "quantize-q6_k": 150e6,
    "quantize-q8_0": 2e9,
    "quantize-imatrix-q4_0": 60e6,
    "quantize-imatrix-q6_k": 40e6,
    "dequantize-q4_0": 1e9,
    "dequantize-q6_k": 1.5e9,
    "dequantize-q8_0": 1.5e9,
    "repack": 3e9,
    "unpack": 3e9,
    "error-sums": 1e9,
}
_UNKNOWN_COMPILE_S = 3.0
_UNKNOWN_RATE = 100e6


@dataclass(frozen=True)
class KernelUse:
    """One kernel a job runs (its marker name) and how many elements it runs over."""

    kernel: str
    elements: int


def quantize_use(
    qtype: str, source_dtype: str, elements: int, *, imatrix: bool = False
) -> KernelUse:
    """The quantize kernel of ``qtype`` for a source dtype (f16 and bf16 share one kernel),
    the importance-weighted one with ``imatrix``."""
    element = "float32" if source_dtype.lower() in ("f32", "float32") else "uint16"
    op = "quantize-imatrix" if imatrix else "quantize"
    return KernelUse(f"{op}-{qtype.lower()}-{element}", elements)


def dequantize_use(qtype: str, elements: int) -> KernelUse:
    """The dequantize kernel of ``qtype``."""
    return KernelUse(f"dequantize-{qtype.lower()}", elements)


def repack_use(elements: int, *, unpack: bool = False) -> KernelUse:
    """The Q4_0 repack kernel (one for every layout), or its inverse."""
    return KernelUse("unpack" if unpack else "repack", elements)


# ---------------------------------------------------------------------------- markers


def _writable_dir(path: str) -> bool:
    """Whether files can be created in ``path`` (made if missing); numba's own test."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def choose_cache_dir(pkg_dir: str) -> str | None:
    """Where numba should cache our kernels: ``None`` when its defaults work (a writable
    ``__pycache__`` next to the sources, else its per-user cache), else a writable folder."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    if _writable_dir(os.path.join(pkg_dir, "__pycache__")):
        return None
    home_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    for candidate in (
        os.path.join(home_cache, "nntrtool", "numba"),
        os.path.join(tempfile.gettempdir(), f"nntrtool-numba-{user}"),
    ):
        if _writable_dir(candidate):
            return candidate
    return None


def use_numba_cache() -> None:
    """Point numba at the cache folder :func:`choose_cache_dir` picks for this package's kernels;
    call it before numba is imported (numba reads ``NUMBA_CACHE_DIR`` then)."""
    chosen = choose_cache_dir(_QUANT_DIR)
    if chosen:
        os.environ["NUMBA_CACHE_DIR"] = chosen
        if "numba.core.config" in sys.modules:
            sys.modules["numba.core.config"].CACHE_DIR = chosen


def numba_cache_root() -> str:
    """The folder numba caches this package's kernels under (what :func:`use_numba_cache` sets up)."""
    return _cache_root(os.environ.get("NUMBA_CACHE_DIR") or "")


@functools.cache
def _cache_root(explicit: str) -> str:
    if explicit:
        return explicit
    return choose_cache_dir(_QUANT_DIR) or os.path.join(_QUANT_DIR, "__pycache__")


@functools.cache
def _stamp() -> str:
    """A hash of the kernel sources (this package) and of numba's install: a marker written
    under another one is stale."""
    h = hashlib.sha256()
    files = [
        os.path.join(_QUANT_DIR, n) for n in sorted(os.listdir(_QUANT_DIR)) if n.endswith(".py")
    ]
    for path in files:
        try:
            with open(path, "rb") as fh:
                h.update(path.encode() + b"\0" + fh.read())
        except OSError:
            continue
    spec = importlib.util.find_spec("numba")
    if spec is not None and spec.origin:
        st = os.stat(spec.origin)
        h.update(f"{spec.origin}:{st.st_mtime_ns}:{st.st_size}".encode())
    return h.hexdigest()[:16]


def _marker_path(kernel: str) -> str:
    return os.path.join(numba_cache_root(), "nntrtool-kernels", f"{kernel}.{_stamp()}")


def is_compiled(kernel: str) -> bool:
    """Whether ``kernel`` ran under numba with this cache folder and these sources before."""
    return os.path.exists(_marker_path(kernel))


_marked: set[str] = set()


def mark_compiled(kernel: str) -> None:
    """Record that ``kernel`` ran under numba (so numba holds it in its cache); once a process."""
    path = _marker_path(kernel)
    if path in _marked:
        return
    _marked.add(path)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w"):
            pass
    except OSError:  # a read-only cache: the kernel simply counts as not compiled
        pass


# ---------------------------------------------------------------------------- the choice


def _run_seconds(uses: Iterable[KernelUse], rates: dict[str, float]) -> float:
    """Seconds to run ``uses`` at ``rates``, which are keyed by the kernel without its source
    element type."""
    seconds = 0.0
    for u in uses:
        family = u.kernel.removesuffix("-float32").removesuffix("-uint16")
        seconds += u.elements / rates.get(family, _UNKNOWN_RATE)
    return seconds


def numpy_seconds(uses: Iterable[KernelUse]) -> float:
    """Expected seconds of ``uses`` on the numpy backend."""
    return _run_seconds(uses, NUMPY_RATE)


def numba_seconds(uses: Iterable[KernelUse], *, all_cached: bool = False) -> float:
    """Expected seconds of ``uses`` on numba: start, compile or load each kernel, then run
    (``all_cached``: as if every kernel were compiled already)."""
    uses = list(uses)
    if not uses:
        return 0.0
    seconds = NUMBA_START_S
    compiled_any = False
    for kernel in {u.kernel for u in uses}:
        if all_cached or is_compiled(kernel):
            seconds += CACHED_LOAD_S
        else:
            compiled_any = True
            seconds += COMPILE_S.get(kernel, _UNKNOWN_COMPILE_S)
    if compiled_any:
        seconds += FIRST_COMPILE_S
    return seconds + _run_seconds(uses, NUMBA_RATE)


def choose_backend(requested: str | None, uses: Iterable[KernelUse]) -> str:
    """The backend to run ``uses`` on: ``resolve_backend(requested)``, except that ``auto``
    on a machine without a usable GPU takes numpy when numpy should finish before numba (no
    compile to wait for); numba is then not even imported. ``auto`` means the backend named
    by ``NNTRTOOL_BACKEND`` when that is set (for commands without a ``--backend`` option)."""
    from .backends import backend_choice, cupy_module, resolve_backend

    if backend_choice(requested) == "auto":
        requested = _environment_backend()
    if requested != "auto" or cupy_module() is not None:
        return resolve_backend(requested)
    uses = [u for u in uses if u.elements > 0]
    on_numpy = numpy_seconds(uses)
    if on_numpy > numba_seconds(uses):
        return resolve_backend(requested)
    if on_numpy > numba_seconds(uses, all_cached=True) and importlib.util.find_spec("numba"):
        # Big enough that compiled kernels would win: have them ready for the next job.
        compile_later(sorted({u.kernel for u in uses if not is_compiled(u.kernel)}))
    return "numpy"


def _environment_backend() -> str:
    from nntrtool.errors import UsageError

    from .backends import BACKEND_CHOICES, backend_choice

    value = os.environ.get("NNTRTOOL_BACKEND") or "auto"
    try:
        return backend_choice(value)
    except UsageError:
        raise UsageError(
            f"NNTRTOOL_BACKEND={value!r} is not a backend: use one of {', '.join(BACKEND_CHOICES)}"
        ) from None


_background: list[subprocess.Popen] = []
#: A background compile holding the lock longer than this has died; the lock is taken over.
_STALE_LOCK_S = 900.0


def compile_later(kernels: list[str]) -> bool:
    """Compile ``kernels`` in a detached, low-priority process so that the next job finds them
    cached; at most one such process per cache folder. False when none was started (nothing
    to do, one already running, ``NNTRTOOL_BACKGROUND_COMPILE=0``, or no writable cache)."""
    if not kernels or os.environ.get("NNTRTOOL_BACKGROUND_COMPILE", "1") == "0":
        return False
    lock = os.path.join(numba_cache_root(), "nntrtool-kernels", "compiling.lock")
    try:
        os.makedirs(os.path.dirname(lock), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.stat(lock).st_mtime > _STALE_LOCK_S:
                os.unlink(lock)
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError:  # held by a running compile, or a read-only cache
        return False
    # The child picks the same cache folder from the same environment; it imports this copy.
    env = dict(os.environ, NNTRTOOL_COMPILE_LOCK=lock)
    package_root = os.path.dirname(os.path.dirname(_QUANT_DIR))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "nntrtool.quant._compile_kernels", *kernels],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        _background.append(child)  # never waited for: it outlives a short command on purpose
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        return False
    return True
