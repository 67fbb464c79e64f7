"""The errors a user can cause, each with one clear line of text and an exit code.

Anything raised that is *not* an :class:`NntrError` is a bug in nntrtool and is shown as such.
"""

from __future__ import annotations


class NntrError(Exception):
    """An error the user can act on. ``str(err)`` is one line: what is wrong and what to do."""

    exit_code: int = 1


class UsageError(NntrError):
    """Bad options or arguments (a wrong path, an override that does not fit, ...)."""

    exit_code = 2


class FormatError(NntrError):
    """A file that is not a valid NNTR file: bad magic, truncated, corrupt directory, ..."""

    exit_code = 2


class SourceError(NntrError):
    """A model source that cannot be read: missing files, corrupt safetensors, bad dtype, ..."""

    exit_code = 2


class QuantError(NntrError, ValueError):
    """Input a quantization kernel refuses: wrong shape, rows not a multiple of the group, ..."""

    exit_code = 2


class NonFiniteError(QuantError):
    """NaN or inf in a tensor. ``row`` and ``col`` say where the first one is."""

    def __init__(self, message: str, row: int = -1, col: int = -1, value: float = float("nan")):
        super().__init__(message)
        self.row = row
        self.col = col
        self.value = value


class OutputExistsError(UsageError):
    """The output exists and ``--force`` was not given."""


class DiskFullError(NntrError):
    """Not enough free disk space for the output (checked up front, or hit while writing)."""

    exit_code = 2


class TensorNotFoundError(UsageError, KeyError):
    """A tensor name asked for that the file or source does not hold (also a ``KeyError``)."""

    __str__ = Exception.__str__  # KeyError would quote the message
