"""A model opened for reading: its config, origin and tensors (:class:`ModelSource`).

The tensors themselves (:class:`~nntrtool.tensors.base.SourceTensor` and its kin) live in
:mod:`nntrtool.tensors`, below every model format and family; their names are handed on here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nntrtool.errors import SourceError
from nntrtool.shapes import TensorTotals
from nntrtool.tensors.base import (  # noqa: F401  (handed on: sources read tensors of these kinds)
    BLOCK_DTYPES,
    DTYPE_BITS,
    RAW_DTYPES,
    READABLE_DTYPES,
    ArrayTensor,
    SourceTensor,
    decode_blocks,
    dtype_nbytes,
    register_block_dtype,
)


class ModelSource(TensorTotals):
    """A model opened for reading: its config, where it came from, and its tensors in order.

    Use as a context manager, or call :meth:`close`; arrays read from a closed source stay
    valid while referenced.
    """

    def __init__(
        self,
        config: dict[str, Any],
        origin: dict[str, Any],
        root: Path | None,
        tensors: list[SourceTensor],
        files: list[Path],
        closers: list[Any] | None = None,
        notes: list[str] | None = None,
    ):
        #: The model's ``config.json`` content.
        self.config = config
        #: Where the model came from: ``kind`` (folder, safetensors, checkpoint or hub), ``path``,
        #: and for hub ids ``repo_id``, ``revision`` (the commit) and ``ref`` (what was asked for).
        self.origin = origin
        #: The folder holding config and tokenizer files, if there is one.
        self.root = root
        #: Every tensor, in file order (shards in name order, tensors in data order).
        self.tensors = tensors
        #: The weight files the tensors are read from.
        self.files = files
        #: What opening the source changed or could not settle (shown as warnings by convert).
        self.notes: list[str] = list(notes or [])
        #: The open GGUF file, for sources read from one (metadata, tokenizer).
        self.gguf: Any = None
        self._by_name = {t.name: t for t in tensors}
        self._closers = list(closers or [])

    def tensor(self, name: str) -> SourceTensor:
        """The tensor called ``name``; SourceError if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise SourceError(f"the model has no tensor named {name!r}") from None

    @property
    def names(self) -> list[str]:
        """Tensor names in order."""
        return [t.name for t in self.tensors]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[SourceTensor]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def check_unchanged(self) -> None:
        """SourceError when a file the tensors are read from changed since it was opened."""
        for opened in self._closers:
            check = getattr(opened, "check_unchanged", None)
            if check is not None:
                check()

    def close(self) -> None:
        """Release file handles and maps (idempotent)."""
        closers, self._closers = self._closers, []
        for closer in closers:
            closer.close()

    def __enter__(self) -> ModelSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ModelSource({self.origin.get('kind')}: {self.origin.get('repo_id') or self.origin.get('path')}, "
            f"{len(self.tensors)} tensors)"
        )
