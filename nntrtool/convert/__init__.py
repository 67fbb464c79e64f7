"""The convert operation: a source model streamed through its plan into an NNTR file.

The plan itself (:mod:`nntrtool.plan`) decides what each tensor becomes and why; the pipeline
(:mod:`.pipeline`) carries it out. The names of the plan are handed on here for callers that
only convert.
"""

from nntrtool.convert.pipeline import (
    ConversionReport,
    check_disk_space,
    check_output,
    convert,
    plan_conversion,
)
from nntrtool.plan import (
    SUPPORTED_DTYPES,
    ConversionPlan,
    ConvertOptions,
    TensorPlan,
    TypeOverride,
    make_plan,
    parse_type_override,
    plan_tensor,
)

__all__ = [
    "SUPPORTED_DTYPES",
    "ConversionPlan",
    "ConversionReport",
    "ConvertOptions",
    "TensorPlan",
    "TypeOverride",
    "check_disk_space",
    "check_output",
    "convert",
    "make_plan",
    "parse_type_override",
    "plan_conversion",
    "plan_tensor",
]
