"""Human-readable sizes and counts, for the library's messages and the commands' output alike."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_count(n: float) -> str:
    """``1_500_000 -> '1.50 M'``."""
    n = float(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def size_change(new: float, old: float) -> str:
    """How ``new`` bytes compare with ``old``: ``'2.10x smaller'``, ``'1.12x larger'``, or
    ``'the same size'`` when the ratio rounds to 1.00 (``'-'`` when either is not positive)."""
    if new <= 0 or old <= 0:
        return "-"
    if f"{old / new:.2f}" == "1.00" or f"{new / old:.2f}" == "1.00":
        return "the same size"
    return f"{old / new:.2f}x smaller" if new < old else f"{new / old:.2f}x larger"
