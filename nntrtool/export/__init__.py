"""Export of NNTR files to the folders other runtimes load (today: nntrainer's CausalLM).

``layouts`` holds the per-architecture weight-file order; ``nntrainer`` plans, checks and
writes the folder. Everything a command does is reachable from here.
"""

from __future__ import annotations

from nntrtool.architectures.nntrainer_layout import ArchitectureLayout, Role, Slot
from nntrtool.export.export_plan import ExportPlan, ExportResult, TensorExport
from nntrtool.export.folder_writer import ISA_LAYOUTS, check_output, write_export
from nntrtool.export.layouts import ARCHITECTURES
from nntrtool.export.nntrainer import (
    TARGETS,
    RuntimeOptions,
    check_target,
    export_nntr,
    nntrainer_type_overrides,
    plan_export,
)
from nntrtool.export.shortcut import convert_and_export

__all__ = [
    "ARCHITECTURES",
    "ISA_LAYOUTS",
    "TARGETS",
    "ArchitectureLayout",
    "ExportPlan",
    "ExportResult",
    "Role",
    "RuntimeOptions",
    "Slot",
    "TensorExport",
    "check_output",
    "check_target",
    "convert_and_export",
    "export_nntr",
    "nntrainer_type_overrides",
    "plan_export",
    "write_export",
]
