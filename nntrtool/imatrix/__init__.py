"""Importance matrices: llama.cpp's imatrix files (GGUF and legacy ``.dat``) and how their
entries map onto a model's tensors.

- ``format``  :func:`read_imatrix`, :func:`write_imatrix` (GGUF), :func:`write_imatrix_dat`
- ``match``   :func:`match_imatrix`: the column weights of each source tensor
- ``collect`` :func:`~nntrtool.imatrix.collect.compute_imatrix`: run the source model over a
  text and accumulate the statistics (``nntrtool imatrix``; needs torch, imported on use)
"""

from nntrtool.imatrix.format import (
    Imatrix,
    ImatrixEntry,
    ImatrixError,
    file_sha256,
    read_imatrix,
    write_imatrix,
    write_imatrix_dat,
)
from nntrtool.imatrix.match import TensorImportance, match_imatrix

__all__ = [
    "Imatrix",
    "ImatrixEntry",
    "ImatrixError",
    "TensorImportance",
    "file_sha256",
    "match_imatrix",
    "read_imatrix",
    "write_imatrix",
    "write_imatrix_dat",
]
