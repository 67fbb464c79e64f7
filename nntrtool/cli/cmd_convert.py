"""`nntrtool convert`: not built yet."""

from __future__ import annotations

from nntrtool.errors import NntrError


def convert_command() -> None:
    """Not built yet."""
    raise NntrError("'convert' is not available in this version")
