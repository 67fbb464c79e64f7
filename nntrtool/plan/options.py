"""The options of a conversion, validated once and shared by the plan, the pipeline and the CLI."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nntrtool.errors import UsageError
from nntrtool.plan.mixes import MIX_NAMES
from nntrtool.qtypes import LAYOUTS, TARGET_TYPE_NAMES
from nntrtool.sources.request import SourceRequest

#: ``--quant-type`` values besides the stored types: ``keep`` stores GGUF blocks as they are
#: (see the plan), ``auto`` is ``keep`` for GGUF sources and ``q4_0`` for the others.
QUANT_TYPE_CHOICES = (*TARGET_TYPE_NAMES, *MIX_NAMES, "keep", "auto")

#: Source bytes per row chunk: large enough to amortize calls, small enough to bound memory.
DEFAULT_CHUNK_BYTES = 16 << 20


@dataclass(frozen=True)
class TypeOverride:
    """One ``--type REGEX=TYPE``: tensors whose name matches ``pattern`` are stored as ``type_name``."""

    pattern: str
    type_name: str

    @property
    def text(self) -> str:
        return f"{self.pattern}={self.type_name}"

    def matches(self, name: str) -> bool:
        return re.search(self.pattern, name) is not None


def parse_type_override(text: str) -> TypeOverride:
    """Parse ``REGEX=TYPE`` (the type is after the last ``=``); UsageError when malformed."""
    pattern, sep, type_name = text.rpartition("=")
    type_name = type_name.strip().lower()
    if not sep or not pattern:
        raise UsageError(f"--type {text!r}: expected REGEX=TYPE, e.g. 'mlp\\.down_proj=q8_0'")
    if type_name not in TARGET_TYPE_NAMES:
        raise UsageError(
            f"--type {text!r}: unknown type {type_name!r}; choose one of "
            f"{', '.join(TARGET_TYPE_NAMES)}"
        )
    _compile(pattern, f"--type {text!r}")
    return TypeOverride(pattern, type_name)


def _compile(pattern: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as err:
        from nntrtool.messages import bad_pattern

        raise UsageError(bad_pattern(what, pattern, str(err))) from None


def _one_of(value: Any, choices: tuple[str, ...], option: str, more: str = "") -> str:
    """``value`` lower-cased when it is one of ``choices``; else a UsageError naming them."""
    name = str(value).lower()
    if name not in choices:
        raise UsageError(
            f"{option} {value!r} is not known; choose one of {', '.join(choices)}{more}"
        )
    return name


@dataclass(frozen=True)
class ConvertOptions:
    """Everything that decides what ``convert`` does; the CLI fills it from its flags.

    ``type_overrides`` holds :class:`TypeOverride` objects or ``"REGEX=TYPE"`` strings;
    ``repack_format`` is a layout name from :data:`nntrtool.qtypes.LAYOUTS` or ``None``;
    ``quant_type`` is one of :data:`QUANT_TYPE_CHOICES` (``auto`` is resolved by the plan);
    ``gguf_file`` picks the GGUF of a folder or hub repo; ``gguf_raw_names`` reads a GGUF
    of an unknown family with its own tensor names and values.
    """

    quant_type: str = "auto"
    repack_format: str | None = None
    type_overrides: tuple[TypeOverride, ...] = ()
    keep_f32: tuple[str, ...] = ()
    head_type: str | None = None
    backend: str = "auto"
    threads: int | None = None
    force: bool = False
    dry_run: bool = False
    allow_nonfinite: bool = False
    #: Refuse a tensor whose values do not fit its type rather than storing it as f32.
    strict: bool = False
    revision: str | None = None
    config: str | Path | None = None
    gguf_file: str | None = None
    gguf_raw_names: bool = False
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    #: LoRA adapters merged while converting (:class:`nntrtool.sources.lora.AdapterSpec`).
    adapters: tuple[Any, ...] = ()
    #: An importance matrix (llama.cpp imatrix, GGUF or .dat) weighting Q4_0 / Q6_K errors.
    imatrix: str | Path | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "quant_type", _one_of(self.quant_type, QUANT_TYPE_CHOICES, "--quant-type")
        )
        repack = self.repack_format
        if repack is not None and str(repack).lower() in ("", "none"):
            repack = None
        elif repack is not None:
            repack = _one_of(repack, tuple(LAYOUTS), "--repack-format", " or none")
        object.__setattr__(self, "repack_format", repack)
        overrides = tuple(
            o if isinstance(o, TypeOverride) else parse_type_override(str(o))
            for o in (self.type_overrides or ())
        )
        object.__setattr__(self, "type_overrides", overrides)
        if self.head_type is not None:
            head = _one_of(self.head_type, TARGET_TYPE_NAMES, "--head-type")
            object.__setattr__(self, "head_type", head)
        keep = tuple(str(p) for p in (self.keep_f32 or ()))
        for p in keep:
            _compile(p, f"--keep-f32 {p!r}")
        object.__setattr__(self, "keep_f32", keep)
        if self.threads is not None and int(self.threads) < 1:
            raise UsageError(f"--threads {self.threads}: give at least 1")
        if int(self.chunk_bytes) < 1:
            raise UsageError(f"chunk budget {self.chunk_bytes} bytes: give at least 1")

    def source(self, spec: Any) -> SourceRequest:
        """The source request these options make of ``spec`` (a path, hub id or request)."""
        return SourceRequest.of(
            spec,
            revision=self.revision,
            config=self.config,
            gguf_file=self.gguf_file,
            adapters=self.adapters,
            gguf_raw_names=self.gguf_raw_names,
        )

    def with_(self, **changes: Any) -> ConvertOptions:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_file_config(cls, section: dict[str, Any], **kwargs: Any) -> ConvertOptions:
        """The options that produced a file, from its stored ``config["nntrtool"]`` section."""
        return cls(
            quant_type=section.get("quant_type", "q4_0"),
            repack_format=section.get("repack_format"),
            type_overrides=tuple(section.get("type_overrides", ())),
            keep_f32=tuple(section.get("keep_f32", ())),
            head_type=section.get("head_type"),
            **kwargs,
        )
