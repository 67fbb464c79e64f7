"""Verification of an NNTR file against its source model.

- :mod:`~nntrtool.verify.metrics`: the per-type error limits (the float64 error sums are
  :mod:`nntrtool.quant.error_stats`).
- :mod:`~nntrtool.verify.matching`: pairing file tensors with source tensors and the streamed
  comparison (:func:`verify`).
- :mod:`~nntrtool.verify.report`: per-tensor results, per-type summary, verdict and JSON.
- :mod:`~nntrtool.verify.logits`: running the model with and without the file's weights.
- :mod:`~nntrtool.verify.text`: perplexity and KL divergence over a text, in chunks.

The source model as transformers runs it and the text cut into token chunks come from
:mod:`nntrtool.sources.torch_model` and :mod:`nntrtool.sources.text_chunks`, which ``imatrix``
shares.

Everything is re-exported here, so ``from nntrtool.verify import verify`` keeps working.
"""

from __future__ import annotations

from nntrtool.errors import NntrError, UsageError
from nntrtool.sources.text_chunks import DEFAULT_CTX, TextChunks, load_text_chunks, tokenize_chunks
from nntrtool.sources.torch_model import import_torch, load_model
from nntrtool.verify.logits import (
    DEFAULT_PROMPT_LENGTH,
    LogitsReport,
    compare_logits,
    default_tokens,
    load_file_weights,
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
from nntrtool.verify.text import TextReport, compare_text, compare_text_files

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
