"""The per-type error limits verify applies, and the ``--max-rel-err`` option that sets them.

The sums behind the metrics (:class:`~nntrtool.quant.error_stats.ErrorStats`) live with the
kernels; the default limit of each type is written in its :mod:`nntrtool.qtypes` entry.
"""

from __future__ import annotations

from nntrtool.errors import UsageError
from nntrtool.qtypes import F32, TYPES, TensorType
from nntrtool.quant.error_stats import ErrorStats, compare_arrays

#: Default largest relative error ``||x - x'|| / ||x||`` per stored type (see the type table).
DEFAULT_MAX_REL_ERR: dict[str, float] = {
    t.name: t.max_rel_err
    for t in sorted(TYPES, key=lambda t: not t.quantized)  # quantized types first
    if t.plain_name is None
}

__all__ = ["DEFAULT_MAX_REL_ERR", "ErrorStats", "base_type", "compare_arrays", "parse_thresholds"]


def base_type(ttype: TensorType) -> TensorType:
    """The type whose values a tensor holds: repacked Q4_0 holds Q4_0 values."""
    return ttype.plain


def parse_thresholds(values: list[str] | None) -> dict[str, float]:
    """Turn ``--max-rel-err`` values (``X`` for every quantized type, or ``TYPE=X``) into limits.

    Starts from :data:`DEFAULT_MAX_REL_ERR`; raises ``UsageError`` on a bad value or type.
    """
    limits = dict(DEFAULT_MAX_REL_ERR)
    for raw in values or []:
        text = raw.strip()
        name, sep, number = text.rpartition("=")
        try:
            limit = float(number)
        except ValueError:
            raise UsageError(
                f"--max-rel-err {raw!r}: expected a number (0.1) or TYPE=NUMBER (q4_0=0.1)"
            ) from None
        if not limit >= 0.0:
            raise UsageError(
                f"--max-rel-err {raw!r}: no error is below a negative or NaN limit; give a "
                "number >= 0, e.g. 0.1"
            )
        if sep:
            key = name.strip().lower()
            if key not in limits:
                raise UsageError(
                    f"--max-rel-err {raw!r}: unknown type {name!r}; use one of "
                    + ", ".join(sorted(limits))
                )
            limits[key] = limit
        else:
            for key in limits:
                if key != F32.name:
                    limits[key] = limit
    return limits
