"""Mixture-of-experts machinery every MoE family shares.

Whatever the source layout, experts are stored as one ``[out, in]`` matrix per expert and
projection, ``model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight`` (and ``.bias`` for
GPT-OSS), and routers stay F32 (the runtime computes them in FP32). The families' own layouts
(Qwen3-MoE's per-expert checkpoints, GPT-OSS's fused and MXFP4-packed experts) are declared in
their modules under :mod:`nntrtool.architectures`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from nntrtool.errors import SourceError
from nntrtool.messages import checkpoint_unreadable
from nntrtool.tensors.base import SourceTensor
from nntrtool.tensors.transforms import DerivedTensor, Rule, TensorLookup, prefer_type

ROUTER_REASON = "router: f32 (the runtime computes routing in FP32; --type to choose another)"
EVEN, ODD = slice(0, None, 2), slice(1, None, 2)


def _router(m: re.Match[str], t: SourceTensor, lookup: TensorLookup) -> list[SourceTensor]:
    return [prefer_type(t, "f32", ROUTER_REASON)]


def router_rule(pattern: str) -> Rule:
    """Routers (tensors matching ``pattern``) preferred F32."""
    return Rule(pattern, _router, "router")


def experts_of(t: SourceTensor, ndim: int) -> int:
    """The expert count of a fused ``ndim``-D expert tensor; SourceError for another shape."""
    if t.ndim != ndim:
        raise SourceError(
            checkpoint_unreadable(
                t.file.name,
                f"tensor {t.name!r} {list(t.shape)} is not the {ndim}-D fused expert tensor "
                "GPT-OSS checkpoints hold",
            )
        )
    return t.shape[0]


def bias_row(
    base: SourceTensor, name: str, expert: int, columns: slice, note: str
) -> DerivedTensor:
    """Expert ``expert``'s 1-D bias out of a fused ``[E, n]`` bias, ``columns`` picked."""
    size = len(range(base.shape[-1])[columns])

    def read(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(inputs[0].read(expert, expert + 1)[:, columns][: stop - start])

    share = base.nbytes * size // (base.shape[0] * base.shape[-1])
    return DerivedTensor(name, base.dtype, (size,), [base], read, note, source_nbytes=share)


def expert_at(*index: object):
    """An index function for a :class:`Placement`: expert number from group 2, then ``index``."""
    return lambda m: (int(m.group(2)), *index)
