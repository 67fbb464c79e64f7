"""The per-tensor conversion plan: which type and layout each source tensor is stored in, and why.

:func:`make_plan` is the one place that decides it; ``convert --dry-run``, ``convert`` and
``verify`` all call it, so what is shown, what is written and what is checked cannot disagree.
The plan reads no tensor data except, when the config does not settle it, a row-by-row
comparison of the output head with the embeddings to detect tied weights.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from nntrtool import __version__
from nntrtool.errors import SourceError, UsageError
from nntrtool.format import Stored, TensorSpec, predict_file_size
from nntrtool.model_config import ModelConfig
from nntrtool.plan.mixes import MIXES, MixModel, mix_type
from nntrtool.plan.options import ConvertOptions
from nntrtool.qtypes import (
    F32,
    Q4_0,
    Q4_0_REPACKED,
    Q6_K,
    Q8_0,
    TYPES_BY_NAME,
    RepackLayout,
    TensorType,
    fitting_type,
    get_layout,
    get_type,
)
from nntrtool.shapes import TensorTotals
from nntrtool.sources.tied import TiedEmbeddings, detect_tied

#: Source dtypes the converter reads (safetensors names).
SUPPORTED_DTYPES = ("F32", "F16", "BF16")

#: Last name parts of module buffers that checkpoints save beside the weights: integer index
#: tables and counters (BERT's ``position_ids``, ``token_type_ids``; batch norm's counter).
#: A non-float tensor with one of these names is skipped; any other non-float tensor is refused.
BUFFER_NAMES = ("position_ids", "token_type_ids", "num_batches_tracked")
_INTEGER_DTYPES = ("BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64")


class _Tensor(Protocol):
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    rows: int

    def read(self, start_row: int = 0, stop_row: int | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class TensorPlan(Stored):
    """How one source tensor is stored: target type, repack layout, and the reason for both."""

    name: str
    source_dtype: str
    shape: tuple[int, ...]
    ttype: TensorType
    layout: RepackLayout | None
    reason: str
    nbytes: int
    source_nbytes: int = 0
    fallback: bool = False
    unrepacked: bool = False
    #: What a declared transform or an adapter did to the tensor on its way (empty: nothing).
    note: str = ""
    #: The importance-matrix entry weighting this tensor's quantization (None: plain).
    importance: str | None = None
    #: The source's quantized blocks are stored as they are (same type: no dequantize).
    copy_blocks: bool = False
    #: The source is block-quantized in another type: dequantized, then quantized again.
    requantized: bool = False

    @property
    def quantized(self) -> bool:
        return self.ttype.quantized

    @property
    def encoded(self) -> bool:
        """Whether the stored bytes come from a type's kernels (blocks, or F16 values) rather
        than being float32 values."""
        return self.ttype.plain.kernels is not None

    @property
    def quant_name(self) -> str:
        """The kernel's type name (``q4_0`` for repacked tensors too)."""
        return self.ttype.plain.name

    @property
    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.ttype, self.shape, self.layout)

    def to_config(self) -> dict[str, Any]:
        out = {"type": self.display_type, "source_dtype": self.source_dtype, "reason": self.reason}
        if self.note:
            out["note"] = self.note
        if self.importance is not None:
            out["imatrix"] = self.importance
        return out


@dataclass
class ConversionPlan(TensorTotals):
    """The plan for a whole model: the stored tensors in source order plus everything decided."""

    tensors: list[TensorPlan]
    options: ConvertOptions
    model_config: dict[str, Any]
    origin: dict[str, Any]
    tied: TiedEmbeddings
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: What is recorded about the importance matrix (name, sha256, ...), when one is used.
    imatrix: dict[str, Any] | None = None
    #: Column weights per tensor name, for the tensors the importance matrix covers.
    importance: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _predicted: int | None = field(default=None, repr=False)

    @property
    def specs(self) -> list[TensorSpec]:
        return [t.spec for t in self.tensors]

    @property
    def fallbacks(self) -> list[tuple[str, str]]:
        """Tensors that did not get the type asked for, with the reason."""
        return [(t.name, t.reason) for t in self.tensors if t.fallback]

    @property
    def unrepacked(self) -> list[tuple[str, str]]:
        """Q4_0 tensors left plain although a repack format was asked for, with the reason."""
        return [(t.name, t.reason) for t in self.tensors if t.unrepacked]

    @property
    def without_importance(self) -> list[tuple[str, str]]:
        """Tensors an importance matrix would weight (Q4_0, Q6_K) that it holds no data for."""
        if self.imatrix is None:
            return []
        return [
            (t.name, f"{t.quant_name}: no importance data, plain quantizer")
            for t in self.tensors
            if t.importance is None and t.quantized and _uses_imatrix(t.quant_name)
        ]

    @property
    def source_bytes(self) -> int:
        return sum(t.source_nbytes for t in self.tensors)

    def tensor(self, name: str) -> TensorPlan:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def to_config(self) -> dict[str, Any]:
        """The ``"nntrtool"`` section stored in the file's config: options, source, per-tensor plan."""
        opts = self.options
        return {
            "version": __version__,
            "quant_type": opts.quant_type,
            "repack_format": opts.repack_format,
            "type_overrides": [o.text for o in opts.type_overrides],
            "keep_f32": list(opts.keep_f32),
            "head_type": opts.head_type,
            "source": dict(self.origin),
            "tied": self.tied.tied,
            "tied_embedding": self.tied.embedding if self.tied.tied else None,
            "tied_head": self.tied.head if self.tied.tied else None,
            "skipped": {name: reason for name, reason in self.skipped},
            **({"imatrix": self.imatrix} if self.imatrix is not None else {}),
            "tensors": {t.name: t.to_config() for t in self.tensors},
        }

    def file_config(self) -> dict[str, Any]:
        """The whole config stored in the file: the model's config plus the ``nntrtool`` section."""
        cfg = dict(self.model_config)
        cfg["nntrtool"] = self.to_config()
        return cfg

    @property
    def predicted_size(self) -> int:
        """Exact size in bytes of the file this plan writes."""
        if self._predicted is None:
            self._predicted = predict_file_size(self.file_config(), self.specs)
        return self._predicted

    def bytes_by_type(self) -> dict[str, tuple[int, int, int]]:
        """``{display type: (tensors, params, bytes)}`` in first-seen order."""
        out: dict[str, tuple[int, int, int]] = {}
        for t in self.tensors:
            n, p, b = out.get(t.display_type, (0, 0, 0))
            out[t.display_type] = (n + 1, p + t.numel, b + t.nbytes)
        return out

    def store_f32(self, reasons: dict[str, str]) -> ConversionPlan:
        """A copy of the plan with the named tensors stored as F32 for the given reasons."""
        tensors = [
            replace(
                t,
                ttype=F32,
                layout=None,
                reason=reasons[t.name],
                nbytes=F32.nbytes(t.shape),
                fallback=True,
                unrepacked=False,
                importance=None,
            )
            if t.name in reasons
            else t
            for t in self.tensors
        ]
        return replace(self, tensors=tensors, _predicted=None)


def make_plan(source: Any, options: ConvertOptions) -> ConversionPlan:
    """Decide the stored type, layout and reason of every tensor of ``source`` (an open source).

    Raises :class:`SourceError` for tensors in a dtype the converter cannot read and
    :class:`UsageError` for a ``--type`` override that does not fit a matrix it selects.
    """
    tensors = list(source.tensors)
    if not tensors:
        raise SourceError("the source holds no tensors: nothing to convert")
    buffers = [
        (t.name, f"{t.dtype} buffer, not a weight: not stored")
        for t in tensors
        if t.dtype in _INTEGER_DTYPES and t.name.rsplit(".", 1)[-1] in BUFFER_NAMES
    ]
    if buffers:
        dropped = {name for name, _ in buffers}
        tensors = [t for t in tensors if t.name not in dropped]
    for t in tensors:
        if not getattr(t, "supported", t.dtype in SUPPORTED_DTYPES):
            raise SourceError(
                f"tensor {t.name!r} has dtype {t.dtype}, which nntrtool cannot convert "
                f"(supported: {', '.join(SUPPORTED_DTYPES)} and GGUF block types)"
            )
    if options.quant_type == "auto":
        options = options.with_(quant_type=default_quant_type(source))
    config = dict(source.config or {})
    tied = detect_tied(tensors, config)
    skipped: list[tuple[str, str]] = list(buffers)
    if tied.tied and tied.head_in_source and tied.head is not None:
        skipped.append((tied.head, f"tied to {tied.embedding}: {tied.reason}"))
    # The file format has no empty tensors; a dimension of 0 holds no data to lose.
    skipped += [
        (t.name, f"empty tensor (shape {list(t.shape)}): nothing to store")
        for t in tensors
        if t.shape and math.prod(t.shape) == 0
    ]
    skip = {name for name, _ in skipped}
    used_overrides: set[int] = set()
    # --head-type applies to the output head, or to the embeddings when they are the head
    head = (tied.embedding if tied.tied else tied.head) if options.head_type else None
    mix_model = None
    if options.quant_type in MIXES:
        cfg = ModelConfig.of(config)
        layers = cfg.num_layers if isinstance(cfg.num_layers, int) else 0
        mix_model = MixModel(layers, cfg.num_experts or 0, tied.tied, config)
    plans = [
        plan_tensor(t, options, used_overrides, head=head, mix_model=mix_model)
        for t in tensors
        if t.name not in skip
    ]
    notes = []
    if options.head_type and head is None:
        notes.append(f"--head-type {options.head_type}: the model has no head or token embeddings")
    notes += [
        f"--type {o.text!r} matched no matrix"
        for i, o in enumerate(options.type_overrides)
        if i not in used_overrides
    ]
    notes += [
        f"--keep-f32 {p!r} matched no tensor"
        for p in options.keep_f32
        if not any(re.search(p, t.name) for t in tensors)
    ]
    notes = list(getattr(source, "notes", None) or []) + notes
    if buffers:
        names = ", ".join(name for name, _ in buffers)
        notes.append(f"skipped non-float buffers (not weights): {names}")
    requantized = [p for p in plans if p.requantized]
    if requantized:
        kinds = sorted({p.source_dtype.lower() for p in requantized})
        notes.append(
            f"{len(requantized)} tensors requantized from {', '.join(kinds)}: the file is lossy "
            "relative to the GGUF (--quant-type keep stores q4_0, q6_k and q8_0 blocks as they are)"
        )
    plan = ConversionPlan(
        tensors=plans,
        options=options,
        model_config=config,
        origin=dict(getattr(source, "origin", {}) or {}),
        tied=tied,
        skipped=skipped,
        notes=notes,
    )
    if options.imatrix is not None:
        plan = _apply_imatrix(plan, tensors, options.imatrix)
    return plan


def _uses_imatrix(quant_name: str) -> bool:
    return get_type(quant_name).uses_imatrix


def _apply_imatrix(plan: ConversionPlan, tensors: list[_Tensor], path: Any) -> ConversionPlan:
    """The plan with each Q4_0 / Q6_K tensor the importance matrix covers marked as weighted.

    Every entry must fit a tensor of the source (checked against all of them, also those not
    stored); an ImatrixError says when the file was made for another model.
    """
    from nntrtool.imatrix import match_imatrix, read_imatrix

    imx = read_imatrix(path)
    shapes = [(t.name, tuple(int(s) for s in t.shape)) for t in tensors]
    tied = plan.tied
    if tied.tied and not tied.head_in_source and tied.head and tied.embedding:
        # The head is the embeddings: an entry for it (a tied model's output) is not foreign.
        shapes.append((tied.head, dict(shapes)[tied.embedding]))
    found = match_imatrix(imx, shapes, plan.model_config)
    tensors_out, weights = [], {}
    for t in plan.tensors:
        hit = found.get(t.name)
        # copied blocks are not quantized again: an importance matrix cannot change them
        if hit is not None and t.quantized and not t.copy_blocks and _uses_imatrix(t.quant_name):
            t = replace(t, importance=hit.label)
            weights[t.name] = hit.weights
        tensors_out.append(t)
    summary = imx.summary()
    summary["tensors"] = len(weights)
    return replace(plan, tensors=tensors_out, imatrix=summary, importance=weights, _predicted=None)


def default_quant_type(source: Any) -> str:
    """What ``--quant-type auto`` means for ``source``: ``keep`` for GGUF files, else ``q4_0``."""
    return "keep" if getattr(source, "gguf", None) is not None else Q4_0.name


def _keep_type(dtype: str, cols: int) -> tuple[TensorType, str, bool]:
    """``--quant-type keep``: the stored type for a source dtype, the reason, and whether it
    is a fallback."""
    own = TYPES_BY_NAME.get(dtype.lower())
    if own is not None and own.kernels is not None:  # stored as it is: blocks, or F16 values
        return own, f"keep: {own.name}", False
    if dtype in SUPPORTED_DTYPES:
        return F32, f"keep: {dtype.lower()} as f32", False
    for ttype in (Q6_K, Q8_0):
        if ttype.fits(cols):
            return ttype, f"keep: {dtype.lower()} has no NNTR type, {ttype.name} instead", False
    return F32, f"keep: {dtype.lower()} has no NNTR type and rows fit no block: f32", True


@dataclass(frozen=True)
class TypeChoice:
    """What a rule decided for one tensor: the stored type, why, and whether it is a fallback."""

    ttype: TensorType
    reason: str
    fallback: bool = False


@dataclass
class TensorQuestion:
    """What the rules look at for one tensor."""

    tensor: _Tensor
    options: ConvertOptions
    shape: tuple[int, ...]
    head: str | None
    used_overrides: set[int] | None
    #: The model as a type mixture (``--quant-type q4_k_m``) sees it; None for other types.
    mix_model: MixModel | None = None

    @property
    def cols(self) -> int:
        return self.shape[-1]

    @property
    def for_head(self) -> bool:
        """Whether ``--head-type`` applies to this tensor (the head or tied embeddings)."""
        return bool(self.options.head_type) and self.tensor.name == self.head


def _rule_keep_f32(q: TensorQuestion) -> TypeChoice | None:
    for pattern in q.options.keep_f32:
        if re.search(pattern, q.tensor.name):
            return TypeChoice(F32, f"--keep-f32 {pattern!r}")
    return None


def _rule_matrices_only(q: TensorQuestion) -> TypeChoice | None:
    if len(q.shape) == 2:
        return None
    what = "scalar" if not q.shape else f"{len(q.shape)}-D tensor"
    return TypeChoice(F32, f"{what}: only 2-D matrices are quantized")


def _fitted(ttype: TensorType, cols: int, asked: str) -> TypeChoice:
    """``ttype`` when rows of ``cols`` fit its blocks, else the first type down its fallback
    chain that they fit, with the reason."""
    if not ttype.quantized or ttype.fits(cols):
        return TypeChoice(ttype, f"{asked} {ttype.name}" if asked else f"matrix: {ttype.name}")
    instead = fitting_type(ttype, cols)
    said = f"{asked} {ttype.name}: last" if asked else "last"
    return TypeChoice(
        instead,
        f"{said} dimension {cols} is not a multiple of {ttype.block_size}"
        + ("" if asked else f" ({ttype.name})")
        + f": {instead.name} instead",
        fallback=True,
    )


def _rule_head_type(q: TensorQuestion) -> TypeChoice | None:
    # like the default type, and like llama.cpp's output type: falls back where it cannot fit
    if not q.for_head:
        return None
    return _fitted(get_type(str(q.options.head_type)), q.cols, "--head-type")


def _rule_type_override(q: TensorQuestion) -> TypeChoice | None:
    for i, o in enumerate(q.options.type_overrides):
        if not o.matches(q.tensor.name):
            continue
        if q.used_overrides is not None:
            q.used_overrides.add(i)
        ttype = get_type(o.type_name)
        if ttype.quantized and not ttype.fits(q.cols):
            raise UsageError(
                f"--type {o.text!r} does not fit tensor {q.tensor.name!r} {list(q.shape)}: its "
                f"last dimension {q.cols} is not a multiple of {ttype.name}'s block size "
                f"{ttype.block_size}: choose a type that fits (f16 fits any) or a pattern "
                "that leaves this tensor out"
            )
        return TypeChoice(ttype, f"--type {o.text!r}")
    return None


def _rule_preferred(q: TensorQuestion) -> TypeChoice | None:
    found = _preferred(q.tensor)
    return TypeChoice(get_type(found[0]), found[1]) if found is not None else None


def _rule_keep(q: TensorQuestion) -> TypeChoice | None:
    if q.options.quant_type != "keep":
        return None
    ttype, reason, fallback = _keep_type(q.tensor.dtype, q.cols)
    return TypeChoice(ttype, reason, fallback)


def _rule_mix(q: TensorQuestion) -> TypeChoice | None:
    mix = MIXES.get(q.options.quant_type)
    if mix is None or q.mix_model is None:
        return None
    from nntrtool.names import hf_to_gguf_name

    gguf_name = hf_to_gguf_name(q.tensor.name, q.mix_model.config)
    type_name, why = mix_type(mix, gguf_name, q.cols, q.mix_model)
    return TypeChoice(get_type(type_name), why, fallback=";" in why)


def _rule_requested(q: TensorQuestion) -> TypeChoice:
    return _fitted(get_type(q.options.quant_type), q.cols, "")


#: The rules in the order they are asked; the first that decides wins. ``--head-type`` takes
#: the head out of ``--type`` overrides and declared preferences.
TENSOR_RULES = (
    _rule_keep_f32,
    _rule_matrices_only,
    _rule_head_type,
    lambda q: None if q.for_head else _rule_type_override(q),
    lambda q: None if q.for_head else _rule_preferred(q),
    _rule_keep,
    _rule_mix,
    _rule_requested,
)


def plan_tensor(
    t: _Tensor,
    options: ConvertOptions,
    used_overrides: set[int] | None = None,
    *,
    head: str | None = None,
    mix_model: MixModel | None = None,
) -> TensorPlan:
    """The plan of one tensor under ``options``: the first of :data:`TENSOR_RULES` that decides
    gives the type; ``head`` names the tensor that ``--head-type`` applies to (the head or
    tied embeddings)."""
    shape = tuple(int(s) for s in t.shape)
    question = TensorQuestion(t, options, shape, head, used_overrides, mix_model)
    choice = next(c for c in (rule(question) for rule in TENSOR_RULES) if c is not None)
    return _tensor_plan(question, choice)


def _tensor_plan(q: TensorQuestion, choice: TypeChoice) -> TensorPlan:
    """The plan entry for a decided type: block copies, requantization and repacking noted."""
    t, shape, ttype, reason = q.tensor, q.shape, choice.ttype, choice.reason
    common = {
        "name": t.name,
        "source_dtype": t.dtype,
        "shape": shape,
        # A derived tensor (merged, decoded) accounts for the source bytes it was made from.
        "source_nbytes": int(getattr(t, "source_nbytes", t.nbytes)),
        "note": str(getattr(t, "note", "") or ""),
        "fallback": choice.fallback,
    }
    blocked = t.dtype not in SUPPORTED_DTYPES
    if ttype is F32:
        if blocked:
            reason += f", dequantized from {t.dtype.lower()}"
        return TensorPlan(ttype=F32, layout=None, reason=reason, nbytes=F32.nbytes(shape), **common)
    copy_blocks = blocked and ttype.name == t.dtype.lower()
    if copy_blocks:
        reason += f", copied {ttype.name} blocks"
    elif blocked:
        reason += f", requantized from {t.dtype.lower()}"
    layout = None
    unrepacked = False
    if ttype is Q4_0 and q.options.repack_format is not None:
        wanted = get_layout(q.options.repack_format)
        rows = shape[0]
        if rows % wanted.rows == 0:
            ttype, layout = Q4_0_REPACKED, wanted
            reason += f", repacked {wanted.name}"
        else:
            unrepacked = True
            reason += (
                f"; not repacked: {rows} rows are not a multiple of {wanted.name}'s group of "
                f"{wanted.rows}"
            )
    return TensorPlan(
        ttype=ttype,
        layout=layout,
        reason=reason,
        nbytes=ttype.nbytes(shape),
        unrepacked=unrepacked,
        copy_blocks=copy_blocks,
        requantized=blocked and not copy_blocks,
        **common,
    )


def _preferred(t: _Tensor) -> tuple[str, str] | None:
    """The type a declared transform prefers for ``t`` (a router: f32), when it fits."""
    prefer = getattr(t, "preferred", None)
    found = prefer() if callable(prefer) else None
    if found is None:
        return None
    ttype = get_type(found[0])
    return found if not ttype.quantized or ttype.fits(int(t.shape[-1])) else None
