"""Writing an importance matrix in llama.cpp's GGUF imatrix format.

The file holds ``general.type = "imatrix"``, ``imatrix.datasets`` (the texts it was computed
on), ``imatrix.chunk_count`` and ``imatrix.chunk_size``, and per weight (llama.cpp's tensor
name, e.g. ``blk.0.attn_q.weight``) two F32 tensors: ``<name>.in_sum2`` of ggml shape
``[columns, n_mat]`` (numpy ``(n_mat, columns)``: the sum over rows of the squared input per
column, one row per expert) and ``<name>.counts`` of ggml shape ``[1, n_mat]`` (rows seen per
expert). Tensors are written in name order, as llama.cpp does. The file is written next to
its destination and renamed into place, so a failure never leaves a half-written output.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nntrtool.errors import DiskFullError, NntrError, UsageError

KEY_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"


@dataclass
class ImatrixEntry:
    """Statistics of one weight: ``in_sum2`` (n_mat, columns) and ``counts`` (n_mat,)."""

    name: str
    in_sum2: np.ndarray
    counts: np.ndarray


def write_imatrix(
    path: str | Path,
    entries: list[ImatrixEntry],
    *,
    chunk_count: int,
    chunk_size: int,
    datasets: list[str],
) -> Path:
    """Write ``entries`` to ``path`` as a llama.cpp GGUF imatrix (atomically)."""
    import gguf

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch="imatrix")
    # An imatrix names no architecture; the writer adds one by default.
    for kv in writer.kv_data:
        kv.pop(gguf.Keys.General.ARCHITECTURE, None)
    writer.add_string(KEY_TYPE, "imatrix")
    writer.add_array(KEY_DATASETS, [str(d) for d in datasets])
    writer.add_uint32(KEY_CHUNK_COUNT, int(chunk_count))
    writer.add_uint32(KEY_CHUNK_SIZE, int(chunk_size))
    for e in sorted(entries, key=lambda e: e.name):
        sums = np.ascontiguousarray(e.in_sum2, dtype=np.float32)
        counts = np.ascontiguousarray(e.counts, dtype=np.float32).reshape(-1, 1)
        if sums.ndim != 2 or sums.shape[0] != counts.shape[0]:
            raise ValueError(f"{e.name}: in_sum2 {sums.shape} does not fit counts {counts.shape}")
        writer.add_tensor(f"{e.name}.in_sum2", sums)
        writer.add_tensor(f"{e.name}.counts", counts)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except OSError as err:
        writer.close()
        tmp.unlink(missing_ok=True)
        if err.errno == 28:
            raise DiskFullError(f"no space left writing {path}: free some disk space") from None
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not path.is_file():
        raise NntrError(f"{path} was not written")
    return path
