"""Verification of an NNTR file against its source model.

- :mod:`~nntrtool.verify.metrics`: error metrics (RMSE, max abs error, relative error, cosine
  similarity, SNR) accumulated over row chunks in float64, and the per-type limits.
- :mod:`~nntrtool.verify.matching`: pairing file tensors with source tensors and the streamed
  comparison (:func:`verify`).
- :mod:`~nntrtool.verify.report`: per-tensor results, per-type summary, verdict and JSON.
- :mod:`~nntrtool.verify.logits`: running the model with and without the file's weights.
- :mod:`~nntrtool.verify.text`: perplexity and KL divergence over a text, in chunks.

Everything is re-exported here, so ``from nntrtool.verify import verify`` keeps working.
"""

from __future__ import annotations

from nntrtool.errors import NntrError, UsageError
from nntrtool.verify.logits import (
    DEFAULT_PROMPT_LENGTH,
    LogitsReport,
    compare_logits,
    default_tokens,
    import_torch,
    load_file_weights,
    load_model,
    logits_divergence,
    parse_tokens,
)
from nntrtool.verify.matching import CHUNK_ELEMENTS, tied_head, verify
from nntrtool.verify.metrics import (
    DEFAULT_MAX_REL_ERR,
    ErrorStats,
    base_type,
    compare_arrays,
    parse_thresholds,
)
from nntrtool.verify.report import (
    METRICS,
    PASSING,
    STATUS_CHECKSUM,
    STATUS_EXTRA,
    STATUS_MISSING,
    STATUS_NOT_EXACT,
    STATUS_OK,
    STATUS_OVER,
    STATUS_PLAN,
    STATUS_SHAPE,
    STATUS_TIED,
    TensorResult,
    TypeSummary,
    VerifyReport,
    summarize,
    worst_first,
)
from nntrtool.verify.text import (
    DEFAULT_CTX,
    TextChunks,
    TextReport,
    compare_text,
    compare_text_files,
    load_text_chunks,
    tokenize_chunks,
)

__all__ = [
    "CHUNK_ELEMENTS",
    "DEFAULT_CTX",
    "DEFAULT_MAX_REL_ERR",
    "DEFAULT_PROMPT_LENGTH",
    "METRICS",
    "PASSING",
    "STATUS_CHECKSUM",
    "STATUS_EXTRA",
    "STATUS_MISSING",
    "STATUS_NOT_EXACT",
    "STATUS_OK",
    "STATUS_OVER",
    "STATUS_PLAN",
    "STATUS_SHAPE",
    "STATUS_TIED",
    "ErrorStats",
    "LogitsReport",
    "NntrError",
    "TensorResult",
    "TextChunks",
    "TextReport",
    "TypeSummary",
    "UsageError",
    "VerifyReport",
    "import_torch",
    "load_model",
    "base_type",
    "compare_arrays",
    "compare_logits",
    "compare_text",
    "compare_text_files",
    "default_tokens",
    "load_file_weights",
    "load_text_chunks",
    "logits_divergence",
    "parse_thresholds",
    "parse_tokens",
    "summarize",
    "tied_head",
    "tokenize_chunks",
    "verify",
    "worst_first",
]
