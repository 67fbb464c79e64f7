"""The logits check: run the source model with and without the file's weights on one prompt."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.errors import NntrError, UsageError
from nntrtool.progress import ProgressFactory, ProgressLike
from nntrtool.qtypes import F32
from nntrtool.sources.request import SourceRequest
from nntrtool.sources.torch_model import import_torch, load_source_model, state_slot
from nntrtool.verify.matching import rows_cols, tied_head
from nntrtool.verify.metrics import base_type
from nntrtool.verify.report import json_float


@dataclass
class LogitsReport:
    """How much the file's weights change what the model predicts on a fixed prompt."""

    tokens: list[int]
    kl_mean: float
    kl_max: float
    top1_agreement: float
    max_logit_diff: float
    replaced: int
    not_replaced: list[str]
    unused: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": list(self.tokens),
            "positions": len(self.tokens),
            "kl_mean": json_float(self.kl_mean),
            "kl_max": json_float(self.kl_max),
            "top1_agreement": json_float(self.top1_agreement),
            "max_logit_diff": json_float(self.max_logit_diff),
            "replaced": self.replaced,
            "not_replaced": list(self.not_replaced),
            "unused": list(self.unused),
        }


#: Length of the default prompt.
DEFAULT_PROMPT_LENGTH = 64


def default_tokens(vocab_size: int, length: int = DEFAULT_PROMPT_LENGTH) -> list[int]:
    """A fixed prompt of token ids spread over the vocabulary (same ids on every run)."""
    if vocab_size < 2:
        return [0] * length
    # A multiplicative walk over the ids: deterministic, covers the vocabulary evenly.
    return [(1 + i * 7919) % vocab_size for i in range(length)]


def parse_tokens(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; ``UsageError`` on anything else."""
    try:
        tokens = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise UsageError(
            f"--tokens {text!r}: expected comma-separated token ids like 1,2,3"
        ) from None
    if not tokens or any(t < 0 for t in tokens):
        raise UsageError(f"--tokens {text!r}: expected one or more non-negative token ids")
    return tokens


def logits_divergence(ref: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Per-position KL(P_ref || P_test) of the softmax distributions (float64), top-1 agreement
    and the largest absolute logit difference, for ``(positions, vocab)`` logits."""
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(test, dtype=np.float64)
    la = a - a.max(axis=-1, keepdims=True)
    la = la - np.log(np.exp(la).sum(axis=-1, keepdims=True))
    lb = b - b.max(axis=-1, keepdims=True)
    lb = lb - np.log(np.exp(lb).sum(axis=-1, keepdims=True))
    kl = (np.exp(la) * (la - lb)).sum(axis=-1)
    kl = np.maximum(kl, 0.0)  # rounding can give -1e-17 for identical rows
    top1 = float(np.mean(a.argmax(axis=-1) == b.argmax(axis=-1)))
    return kl, top1, float(np.max(np.abs(a - b)))


def compare_logits(
    file_path: str | Path,
    source: SourceRequest | str | Path,
    *,
    tokens: list[int] | None = None,
    backend: str = "auto",
    progress: ProgressFactory | None = None,
) -> LogitsReport:
    """Run the source model on a fixed prompt, then with every weight replaced by the file's
    dequantized value, and measure how far the next-token distributions moved."""
    torch, _ = import_torch()
    model, source_names = load_source_model(source)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    ids = list(tokens) if tokens else default_tokens(vocab)
    bad = [t for t in ids if t >= vocab]
    if bad:
        raise UsageError(
            f"--tokens: id {bad[0]} is outside the vocabulary (size {vocab}); give ids below "
            f"{vocab}"
        )
    input_ids = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        ref = model(input_ids=input_ids).logits[0].double().numpy()

    replaced, not_replaced, unused = load_file_weights(
        model, file_path, source_names, backend=backend, progress=progress
    )
    with torch.no_grad():
        test = model(input_ids=input_ids).logits[0].double().numpy()
    kl, top1, max_diff = logits_divergence(ref, test)
    return LogitsReport(
        tokens=ids,
        kl_mean=float(kl.mean()),
        kl_max=float(kl.max()),
        top1_agreement=top1,
        max_logit_diff=max_diff,
        replaced=replaced,
        not_replaced=not_replaced,
        unused=unused,
    )


def load_file_weights(
    model: Any,
    file_path: str | Path,
    source_names: set[str],
    *,
    backend: str = "auto",
    progress: ProgressFactory | None = None,
) -> tuple[int, list[str], list[str]]:
    """Replace the model's weights in place, tensor by tensor, with the file's dequantized values.

    Returns how many weights were replaced, the source weights the file did not replace and the
    file tensors the model does not use. A tied head counts as replaced through its embedding.
    """
    import torch

    from nntrtool.format import NntrFile

    state = model.state_dict()
    replaced: set[str] = set()
    unused: list[str] = []
    with NntrFile(file_path) as nf:
        tied = tied_head(nf.config)
        total = sum(math.prod(e.shape) for e in nf.tensors if e.name in state)
        bar = progress(total, "loading weights") if progress else contextlib.nullcontext(None)
        with bar as prog:
            _replace_weights(nf, state, replaced, unused, backend, prog)
        if tied is not None and tied[0] in state and tied[0] not in replaced:
            head, emb = state[tied[0]], state.get(tied[1])
            if emb is not None and tied[1] in replaced:
                if head.data_ptr() != emb.data_ptr():
                    with torch.no_grad():
                        head.copy_(emb)
                replaced.add(tied[0])
    # Parameters the model shares (tied weights) count as replaced through either name.
    ptr_replaced = {state[n].data_ptr() for n in replaced}
    not_replaced = sorted(
        n
        for n, v in state.items()
        if n not in replaced and v.data_ptr() not in ptr_replaced and n in source_names
    )
    return len(replaced), not_replaced, unused


def _replace_weights(
    nf: Any,
    state: dict,
    replaced: set[str],
    unused: list[str],
    backend: str,
    progress: ProgressLike | None,
) -> None:
    """Copy every file tensor the model has, dequantized, into the model's state in place."""
    import torch

    from nntrtool.architectures import placements_for
    from nntrtool.quant import dequantize, unpack
    from nntrtool.verify.raw_names import raw_placements

    placements = placements_for(nf.config)
    placements += raw_placements(nf.config, state, (e.name for e in nf.tensors))
    for entry in nf.tensors:
        slot = state_slot(entry.name, state, placements)
        if slot is None:
            unused.append(entry.name)
            continue
        key, index, transpose = slot
        target = state[key][index] if index else state[key]
        shape = tuple(int(s) for s in entry.shape)
        if tuple(target.shape) != (tuple(reversed(shape)) if transpose else shape):
            raise NntrError(
                f"--logits: {entry.name} is {list(shape)} in the file but "
                f"{list(target.shape)} in the model; verify the file against the model it was "
                "converted from"
            )
        value = _read_dequantized(nf, entry, dequantize, unpack, backend)
        value = np.ascontiguousarray(value.T if transpose else value)
        with torch.no_grad():
            target.copy_(torch.from_numpy(value).reshape(target.shape))
        replaced.add(key)
        if progress is not None:
            progress.advance(value.size, current=entry.name)


def _read_dequantized(
    nf: Any, entry: Any, dequantize: Any, unpack: Any, backend: str
) -> np.ndarray:
    """A whole tensor of the file as float32 of its shape (unpacked first when repacked)."""
    shape = tuple(int(s) for s in entry.shape)
    if entry.ttype is F32:
        return np.array(nf.array(entry.name), dtype=np.float32).reshape(shape)
    rows, cols = rows_cols(shape)
    data = nf.raw(entry.name).reshape(rows, -1)  # the stored bytes, whatever the type
    if entry.layout is not None:
        data = unpack(np.ascontiguousarray(data), entry.layout.name)
    out = dequantize(data, base_type(entry.ttype).name, (rows, cols), backend=backend)
    return np.ascontiguousarray(out, dtype=np.float32).reshape(shape)
