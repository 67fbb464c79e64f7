"""`nntrtool bench`: not built yet."""

from __future__ import annotations

from nntrtool.errors import NntrError


def bench_command() -> None:
    """Not built yet."""
    raise NntrError("'bench' is not available in this version")
