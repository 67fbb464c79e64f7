"""`nntrtool inspect`: not built yet."""

from __future__ import annotations

from nntrtool.errors import NntrError


def inspect_command() -> None:
    """Not built yet."""
    raise NntrError("'inspect' is not available in this version")
