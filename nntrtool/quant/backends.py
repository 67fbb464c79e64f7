"""Which backend runs the kernels: numpy (reference), numba (CPU default) or cupy (GPU).

``resolve_backend`` turns a user's choice into one that works here. CuPy counts as usable
only when it imports, sees a device, and runs a tiny kernel; otherwise a request for it falls
back to numba with a one-time notice (a warning when cupy was asked for by name, a log record
when "auto" simply finds no GPU).
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any

from nntrtool.errors import UsageError

BACKENDS: tuple[str, ...] = ("numpy", "numba", "cupy")
BACKEND_CHOICES: tuple[str, ...] = ("auto", *BACKENDS)

log = logging.getLogger("nntrtool.quant")
_notified: set[str] = set()


@functools.cache
def _cupy_status() -> tuple[Any, str]:
    """(the cupy module, "") when a GPU is usable, else (None, why not)."""
    try:
        import cupy
    except Exception as err:  # ImportError, or a broken CUDA install raising anything
        return None, f"cupy is not installed ({type(err).__name__})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "cupy found no GPU"
        probe = cupy.arange(4, dtype=cupy.float32)
        if float((probe * 2).sum()) != 12.0:
            return None, "cupy gave a wrong result on this GPU"
    except Exception as err:
        return None, f"cupy cannot use a GPU here ({type(err).__name__}: {err})"
    return cupy, ""


@functools.cache
def _numba_usable() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:
        return False
    return True


def cupy_module() -> Any:
    """The cupy module if a GPU is usable, else ``None``."""
    return _cupy_status()[0]


def available_backends() -> list[str]:
    """The backends that work on this machine, slowest first (numpy is always there)."""
    found = ["numpy"]
    if _numba_usable():
        found.append("numba")
    if cupy_module() is not None:
        found.append("cupy")
    return found


def _notice_once(key: str, message: str, *, warn: bool) -> None:
    if key in _notified:
        return
    _notified.add(key)
    if warn:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    else:
        log.info(message)


def backend_choice(name: str | None = "auto") -> str:
    """A user's backend choice, normalized (``None`` is ``"auto"``); UsageError if unknown.
    Checks the name only: nothing is imported."""
    choice = (name or "auto").strip().lower()
    if choice not in BACKEND_CHOICES:
        raise UsageError(
            f"--backend {name!r} is not known; choose one of {', '.join(BACKEND_CHOICES)}"
        )
    return choice


def resolve_backend(name: str | None = "auto") -> str:
    """The backend to run for a user's choice: ``"auto"`` is cupy when a GPU is usable, else
    numba; an unavailable cupy or numba falls back (with a one-time notice)."""
    choice = backend_choice(name)
    if choice == "numpy":
        return choice
    cpu = "numba" if _numba_usable() else "numpy"
    if choice in ("auto", "cupy"):
        cupy, why = _cupy_status()
        if cupy is not None:
            return "cupy"
        _notice_once(f"cupy:{choice}", f"{why}; using the {cpu} backend", warn=(choice == "cupy"))
        return cpu
    if choice == "numba" and cpu != "numba":
        _notice_once("numba", "numba is not usable here; using the numpy backend", warn=True)
        return "numpy"
    return choice


def array_module(backend: str) -> Any:
    """The array module (numpy or cupy) that runs the array code of ``backend``."""
    if backend == "cupy":
        cupy = cupy_module()
        if cupy is not None:
            return cupy
    import numpy

    return numpy
