"""Which importance-matrix entry belongs to which source tensor, and the column weights it gives.

An entry is found under the tensor's Hugging Face name or under llama.cpp's name for it
(:mod:`nntrtool.names`); a per-expert Hugging Face matrix takes its expert's row of the fused
entry. Every entry must belong to a tensor of the model and fit its columns: anything else
means the file was made for another model, which is refused rather than half applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nntrtool.imatrix.format import Imatrix, ImatrixError

#: The end of every line refusing a matrix made for another model.
_OTHER_MODEL = (
    "the importance matrix was made for another model; make one for this model (nntrtool imatrix)"
)


@dataclass(frozen=True)
class TensorImportance:
    """The importance of one tensor's columns and the entry (and expert) it came from."""

    entry: str
    expert: int | None
    weights: np.ndarray

    @property
    def label(self) -> str:
        """The entry's name, with the expert for a per-expert tensor."""
        return self.entry if self.expert is None else f"{self.entry}[{self.expert}]"


def _lookup(name: str, config: dict[str, Any]) -> list[tuple[str, int | None]]:
    from nntrtool.names import hf_to_gguf

    keys: list[tuple[str, int | None]] = [(name, None)]
    mapped = hf_to_gguf(name, config)
    if mapped is not None:
        keys.append(mapped)
    return keys


def match_imatrix(
    imx: Imatrix, tensors: Sequence[tuple[str, tuple[int, ...]]], config: dict[str, Any]
) -> dict[str, TensorImportance]:
    """``{tensor name: importance}`` for the 2-D tensors among ``tensors`` (name, shape) that
    the importance matrix covers. Raises :class:`ImatrixError` when an entry fits no tensor
    (names or sizes of another model)."""
    where = f"importance matrix {imx.path.name!r}"
    importance_of: dict[str, np.ndarray] = {}
    found: dict[str, TensorImportance] = {}
    claimed: set[str] = set()
    experts_of: dict[str, set[int]] = {}
    for name, shape in tensors:
        for key, expert in _lookup(name, config):
            entry = imx.entries.get(key)
            if entry is None:
                continue
            claimed.add(key)
            if len(shape) != 2:
                break
            cols = int(shape[-1])
            n_mat, n_cols = entry.n_mat, entry.n_cols
            if expert is not None and n_mat == 1 and n_cols != cols and n_cols % cols == 0:
                # Legacy and early GGUF files keep one count and all experts in one row.
                n_mat, n_cols = n_cols // cols, cols
            fits = n_cols == cols and (n_mat > expert if expert is not None else n_mat == 1)
            if not fits:
                have = f"{n_cols} columns" if n_mat == 1 else f"{n_mat} experts x {n_cols} columns"
                want = f"expert {expert} of a matrix with " if expert is not None else ""
                raise ImatrixError(
                    f"{where}: entry {key!r} holds {have}, but {name!r} is {want}{cols} "
                    f"columns: {_OTHER_MODEL}"
                )
            if key not in importance_of:
                importance_of[key] = entry.importance().reshape(n_mat, n_cols)
            row = importance_of[key][expert if expert is not None else 0]
            found[name] = TensorImportance(key, expert, np.ascontiguousarray(row))
            if expert is not None:
                experts_of.setdefault(key, set()).add(expert)
            break
    for key, seen in sorted(experts_of.items()):
        n_mat = importance_of[key].shape[0]
        if n_mat != len(seen):
            raise ImatrixError(
                f"{where}: entry {key!r} holds {n_mat} experts, but the model has {len(seen)} "
                f"there: {_OTHER_MODEL}"
            )
    stray = sorted(set(imx.entries) - claimed)
    if stray and not claimed:
        raise ImatrixError(
            f"{where}: none of its {len(stray)} entries (e.g. {stray[0]!r}) names a tensor of "
            f"this model: {_OTHER_MODEL}"
        )
    if stray:
        more = f" (and {len(stray) - 1} more)" if len(stray) > 1 else ""
        raise ImatrixError(
            f"{where}: entry {stray[0]!r}{more} matches no tensor of this model: {_OTHER_MODEL}"
        )
    return found
