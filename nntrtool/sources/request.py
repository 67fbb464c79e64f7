"""One request for a model source: where it is and how to read it, as one value.

A :class:`SourceRequest` is what every command that reads a model passes down (convert, verify,
export, imatrix): the path or hub id, its revision, a config for a bare weights file, the GGUF
of a folder or repo, and LoRA adapters merged on the way. Functions that take a source accept
a request or a plain path / hub id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nntrtool.sources.base import ModelSource


@dataclass(frozen=True)
class SourceRequest:
    """A model to open: ``spec`` (a folder, file or hub id) and how to read it."""

    spec: str | os.PathLike
    revision: str | None = None
    #: ``config.json`` for a lone ``.safetensors`` / ``.bin`` file.
    config: str | Path | None = None
    #: Which GGUF of a folder or hub repo.
    gguf_file: str | None = None
    #: LoRA adapters (:class:`nntrtool.sources.lora.AdapterSpec`) merged while reading.
    adapters: tuple[Any, ...] = field(default=())
    #: Read a GGUF of an unknown family with its own tensor names and values.
    gguf_raw_names: bool = False

    @classmethod
    def of(cls, source: SourceRequest | str | os.PathLike, **how: Any) -> SourceRequest:
        """``source`` as a request; ``how`` (revision, config, gguf_file, adapters) fills in a
        plain path or id, and changes the fields it names of a request."""
        if "adapters" in how:
            how["adapters"] = tuple(how["adapters"] or ())
        if isinstance(source, SourceRequest):
            return replace(source, **how) if how else source
        return cls(source, **how)

    def without_adapters(self) -> SourceRequest:
        """The same model before any adapter is merged."""
        return replace(self, adapters=())

    def open(self) -> ModelSource:
        """Open the model (see :func:`nntrtool.sources.open_source`); use it as a context."""
        from nntrtool.sources.resolve import open_source

        return open_source(
            self.spec,
            revision=self.revision,
            config=self.config,
            adapters=self.adapters,
            gguf_file=self.gguf_file,
            gguf_raw_names=self.gguf_raw_names,
        )

    def __str__(self) -> str:
        return os.fspath(self.spec)
