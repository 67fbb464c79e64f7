"""`nntrtool repack`: not built yet."""

from __future__ import annotations

from nntrtool.errors import NntrError


def repack_command() -> None:
    """Not built yet."""
    raise NntrError("'repack' is not available in this version")
