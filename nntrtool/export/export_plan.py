"""What an export writes, decided before any byte is written: one entry per weight, the runtime
configs and the tokenizer files (:class:`ExportPlan`), and what was written (:class:`ExportResult`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nntrtool.architectures.nntrainer_layout import Slot
from nntrtool.qtypes import RepackLayout, TensorType
from nntrtool.shapes import TensorTotals


@dataclass(frozen=True)
class TensorExport:
    """One tensor of the weight file: where it comes from and how it is stored."""

    slot: Slot
    source_type: TensorType
    source_layout: RepackLayout | None
    out_type: str  # "f32", "f16", "q6_k", "q4_k_x8", or the Q4_0 layout name ("q4_0_8")
    out_shape: tuple[int, ...]
    nbytes: int
    transposed: bool
    #: The stored type whose values are re-encoded into ``out_type`` (lossy but for f32 and
    #: widening), or ``None`` when the stored blocks are copied or re-laid as they are.
    requant_from: str | None = None
    #: Bytes the runtime skips before the tensor (Q4_K's qscheme value).
    prefix: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.slot.shape)


@dataclass
class ExportPlan(TensorTotals):
    """Everything an export will write, decided and checked before any byte is written."""

    source: Path | None  # the NNTR file
    architecture: str
    isa: str
    tied: bool
    tensors: list[TensorExport]
    fc_dtype: str
    embedding_dtype: str
    lmhead_dtype: str | None
    config: dict[str, Any]
    generation_config: dict[str, Any]
    nntr_config: dict[str, Any]
    tokenizer_sources: list[Path]
    warnings: list[str]
    #: What the folder is (lossy steps, the runtime build it needs), for the summary.
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def model_file_name(self) -> str:
        return str(self.nntr_config["model_file_name"])

    def bytes_by_type(self) -> dict[str, int]:
        """Weight-file bytes per stored type."""
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.out_type] = out.get(t.out_type, 0) + t.nbytes
        return out


@dataclass
class ExportResult:
    """What an export wrote (or, with ``dry_run``, would write)."""

    out_dir: Path
    plan: ExportPlan
    files: list[str]
    seconds: float
    dry_run: bool = False

    @property
    def weight_file(self) -> Path:
        return self.out_dir / self.plan.model_file_name
