"""Conversion: the per-tensor plan (:mod:`.plan`) and the streaming pipeline (:mod:`.pipeline`).

``make_plan`` decides what each tensor becomes and why; ``convert`` carries it out. The
``convert --dry-run``, ``convert`` and ``verify`` commands all go through the same plan.
"""

from nntrtool.convert.options import ConvertOptions, TypeOverride, parse_type_override
from nntrtool.convert.pipeline import (
    ConversionReport,
    check_disk_space,
    check_output,
    convert,
    plan_conversion,
)
from nntrtool.convert.plan import (
    SUPPORTED_DTYPES,
    ConversionPlan,
    TensorPlan,
    TiedEmbeddings,
    detect_tied,
    make_plan,
    plan_tensor,
)

__all__ = [
    "SUPPORTED_DTYPES",
    "ConversionPlan",
    "ConversionReport",
    "ConvertOptions",
    "TensorPlan",
    "TiedEmbeddings",
    "TypeOverride",
    "check_disk_space",
    "check_output",
    "convert",
    "detect_tied",
    "make_plan",
    "parse_type_override",
    "plan_conversion",
    "plan_tensor",
]
