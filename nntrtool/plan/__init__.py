"""The conversion plan: which type and layout each source tensor is stored in, and why.

:mod:`.options` holds the request (:class:`ConvertOptions`) that travels from the command line
through the plan to the pipeline; :mod:`.tensors` decides each tensor. ``convert --dry-run``,
``convert``, ``verify``, ``repack`` and ``export`` all go through this one plan.
"""

from nntrtool.plan.options import ConvertOptions, TypeOverride, parse_type_override
from nntrtool.plan.tensors import (
    SUPPORTED_DTYPES,
    ConversionPlan,
    TensorPlan,
    default_quant_type,
    make_plan,
    plan_tensor,
)

__all__ = [
    "SUPPORTED_DTYPES",
    "ConversionPlan",
    "ConvertOptions",
    "TensorPlan",
    "TypeOverride",
    "default_quant_type",
    "make_plan",
    "parse_type_override",
    "plan_tensor",
]
