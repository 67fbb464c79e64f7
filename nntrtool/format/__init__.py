"""The NNTR v1 file format: a streaming atomic writer and a validating, memory-mapped reader.

Layout (``docs/FORMAT.md`` has the full specification): ``NNTR``, version, a JSON config, a
binary tensor directory (name, type id, shape, repack layout, offset, length, CRC32), then each
tensor's data aligned to :data:`ALIGNMENT` bytes.
"""

from nntrtool.format.binary import (
    ALIGNMENT,
    MAGIC,
    MAX_DIMS,
    VERSION,
    Stored,
    TensorEntry,
    TensorSpec,
    encode_config,
    plan_file,
    predict_file_size,
    tensor_problem,
)
from nntrtool.format.describe import config_summary, describe, tensor_record, totals_by_type
from nntrtool.format.reader import Directory, NntrFile, read_directory
from nntrtool.format.writer import NntrWriter

__all__ = [
    "ALIGNMENT",
    "MAGIC",
    "MAX_DIMS",
    "VERSION",
    "Directory",
    "NntrFile",
    "NntrWriter",
    "Stored",
    "TensorEntry",
    "TensorSpec",
    "config_summary",
    "describe",
    "encode_config",
    "plan_file",
    "predict_file_size",
    "read_directory",
    "tensor_problem",
    "tensor_record",
    "totals_by_type",
]
