"""`nntrtool verify`: not built yet."""

from __future__ import annotations

from nntrtool.errors import NntrError


def verify_command() -> None:
    """Not built yet."""
    raise NntrError("'verify' is not available in this version")
