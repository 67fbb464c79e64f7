"""Model sources: every way a model comes in (Hugging Face folder, safetensors file, PyTorch
checkpoint, hub id), read the same way, one tensor or row chunk at a time.

    with SourceRequest("path/or/org-name").open() as src:   # or open_source("path/or/org-name")
        for t in src.tensors:
            rows = t.read_f32(0, 64)

torch is imported only when a ``.bin``/``.pt`` checkpoint is opened, huggingface_hub only for hub
ids.
"""

from nntrtool.sources.base import (
    DTYPE_BITS,
    READABLE_DTYPES,
    ModelSource,
    SourceTensor,
    dtype_nbytes,
)
from nntrtool.sources.folder import find_weights, read_config
from nntrtool.sources.hub import looks_like_hub_id
from nntrtool.sources.request import SourceRequest
from nntrtool.sources.resolve import open_source

__all__ = [
    "DTYPE_BITS",
    "READABLE_DTYPES",
    "ModelSource",
    "SourceRequest",
    "SourceTensor",
    "dtype_nbytes",
    "find_weights",
    "looks_like_hub_id",
    "open_source",
    "read_config",
]
