"""`nntrtool export`: not built yet."""

from __future__ import annotations

from nntrtool.errors import NntrError


def export_command() -> None:
    """Not built yet."""
    raise NntrError("'export' is not available in this version")
