"""Measuring a file on real text: perplexity and KL divergence against the source model.

The text is tokenized with the source's tokenizer and cut into chunks of ``ctx`` tokens, each run
as one sequence, the way ``llama-perplexity`` does: the first token of a chunk becomes BOS when
the tokenizer adds one, and only the second half of each chunk is scored (positions
``ctx/2 .. ctx-2`` predicting the next token), so every scored token has at least ``ctx/2``
tokens of context.

Memory stays bounded by one model and one chunk: the source run spills each chunk's scored
logits to a temporary file (float32 as the model gives them, ``positions x vocab``; about
``chunks x ctx/2 x vocab x 4`` bytes, in ``TMPDIR``), then the file's weights
are dequantized tensor by tensor into the same model and the second run compares chunk by chunk.
Only per-position scalars (NLL, probability of the right token, KL, agreement) are kept.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.errors import DiskFullError, NntrError, UsageError
from nntrtool.progress import ProgressFactory, token_progress
from nntrtool.sources.request import SourceRequest
from nntrtool.sources.text_chunks import TextChunks
from nntrtool.verify.report import json_float

#: Percentiles of the per-token KL divergence that the report shows (llama-perplexity's set).
KL_PERCENTILES = (99.9, 99.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1)
#: Positions turned into log-probabilities at once: bounds the float64 temporaries.
_ROWS = 64


# ----------------------------------------------------------------------------------------------
# the report


@dataclass
class TextReport:
    """Perplexity of both models and how far the file's next-token distributions moved."""

    text: str
    ctx: int
    chunks: int
    text_tokens: int
    scored: int
    ppl_base: float
    ppl_base_err: float
    ppl_test: float
    ppl_test_err: float
    ln_ratio: float
    ln_ratio_err: float
    ppl_ratio: float
    ppl_ratio_err: float
    ppl_corr: float
    kl_mean: float
    kl_mean_err: float
    kl_max: float
    kl_min: float
    kl_percentiles: dict[str, float]
    top1_agreement: float
    top1_agreement_err: float
    dp_mean: float
    dp_mean_err: float
    rms_dp: float
    rms_dp_err: float
    replaced: int = 0
    not_replaced: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    @property
    def kl_median(self) -> float:
        return self.kl_percentiles["50"]

    @property
    def kl_p99(self) -> float:
        return self.kl_percentiles["99"]

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "ctx": self.ctx,
            "chunks": self.chunks,
            "text_tokens": self.text_tokens,
            "scored_tokens": self.scored,
            "ppl_base": json_float(self.ppl_base),
            "ppl_base_err": json_float(self.ppl_base_err),
            "ppl": json_float(self.ppl_test),
            "ppl_err": json_float(self.ppl_test_err),
            "ppl_ratio": json_float(self.ppl_ratio),
            "ppl_ratio_err": json_float(self.ppl_ratio_err),
            "ln_ppl_ratio": json_float(self.ln_ratio),
            "ln_ppl_ratio_err": json_float(self.ln_ratio_err),
            "ln_ppl_correlation": json_float(self.ppl_corr),
            "kl_mean": json_float(self.kl_mean),
            "kl_mean_err": json_float(self.kl_mean_err),
            "kl_median": json_float(self.kl_median),
            "kl_p99": json_float(self.kl_p99),
            "kl_max": json_float(self.kl_max),
            "kl_min": json_float(self.kl_min),
            "kl_percentiles": {k: json_float(v) for k, v in self.kl_percentiles.items()},
            "top1_agreement": json_float(self.top1_agreement),
            "top1_agreement_err": json_float(self.top1_agreement_err),
            "dp_mean": json_float(self.dp_mean),
            "dp_mean_err": json_float(self.dp_mean_err),
            "rms_dp": json_float(self.rms_dp),
            "rms_dp_err": json_float(self.rms_dp_err),
            "replaced": self.replaced,
            "not_replaced": list(self.not_replaced),
            "unused": list(self.unused),
        }


def _mean_err(x: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error ``sqrt(var / (n - 1))`` (0 for a single value)."""
    n = x.size
    mean = float(x.mean())
    if n < 2:
        return mean, 0.0
    var = float(np.mean(x * x)) - mean * mean
    return mean, math.sqrt(max(var, 0.0) / (n - 1))


def summarize_positions(
    nll_base: np.ndarray,
    nll_test: np.ndarray,
    kl: np.ndarray,
    p_base: np.ndarray,
    p_test: np.ndarray,
    same_top: np.ndarray,
    chunks: TextChunks,
) -> TextReport:
    """The report's figures from the per-position values (all float64 arrays of one length)."""
    n = int(kl.size)
    ln_b, ln_b_err = _mean_err(nll_base)
    ln_t, ln_t_err = _mean_err(nll_test)
    ln_r, ln_r_err = _mean_err(nll_test - nll_base)
    if n > 1 and np.std(nll_base) > 0 and np.std(nll_test) > 0:
        corr = float(np.corrcoef(nll_base, nll_test)[0, 1])
    else:
        corr = 1.0
    kl_mean, kl_err = _mean_err(kl)
    top1 = float(np.mean(same_top))
    top1_err = math.sqrt(top1 * (1.0 - top1) / (n - 1)) if n > 1 else 0.0
    dp = p_test - p_base
    dp_mean, dp_err = _mean_err(dp)
    dp2_mean, dp2_err = _mean_err(dp * dp)
    rms = math.sqrt(dp2_mean)
    rms_err = 0.5 * dp2_err / rms if rms > 0 else 0.0
    pct = np.percentile(kl, KL_PERCENTILES)
    ratio = math.exp(ln_r)
    return TextReport(
        text=chunks.path,
        ctx=chunks.ctx,
        chunks=len(chunks.chunks),
        text_tokens=chunks.text_tokens,
        scored=n,
        ppl_base=math.exp(ln_b),
        ppl_base_err=math.exp(ln_b) * ln_b_err,
        ppl_test=math.exp(ln_t),
        ppl_test_err=math.exp(ln_t) * ln_t_err,
        ln_ratio=ln_r,
        ln_ratio_err=ln_r_err,
        ppl_ratio=ratio,
        ppl_ratio_err=ratio * ln_r_err,
        ppl_corr=corr,
        kl_mean=kl_mean,
        kl_mean_err=kl_err,
        kl_max=float(kl.max()),
        kl_min=float(kl.min()),
        kl_percentiles={f"{p:g}": float(v) for p, v in zip(KL_PERCENTILES, pct, strict=True)},
        top1_agreement=top1,
        top1_agreement_err=top1_err,
        dp_mean=dp_mean,
        dp_mean_err=dp_err,
        rms_dp=rms,
        rms_dp_err=rms_err,
    )


# ----------------------------------------------------------------------------------------------
# running the models


def compare_text(
    file_path: str | Path,
    source: SourceRequest | str | Path,
    chunks: TextChunks,
    *,
    backend: str = "auto",
    progress: ProgressFactory | None = None,
) -> TextReport:
    """Run the source model over the text's chunks, then again with the file's weights, and
    report both perplexities and the KL divergence between their next-token distributions."""
    return compare_text_files([file_path], source, chunks, backend=backend, progress=progress)[0]


def compare_text_files(
    file_paths: list[str | Path],
    source: SourceRequest | str | Path,
    chunks: TextChunks,
    *,
    backend: str = "auto",
    progress: ProgressFactory | None = None,
) -> list[TextReport]:
    """:func:`compare_text` for several files of one source: the source runs over the text
    once, then each file's weights in turn (the source's weights are put back in between)."""
    from nntrtool.verify.logits import import_torch, load_file_weights, load_source_model

    torch, _ = import_torch()
    source = SourceRequest.of(source)
    model, source_names = load_source_model(source)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    _check_ids(chunks, vocab)
    n_chunks, per_chunk = len(chunks.chunks), chunks.scored_per_chunk
    total = n_chunks * per_chunk
    nll_b, p_b = np.empty(total), np.empty(total)
    top_b = np.empty(total, dtype=np.int64)
    rows = np.arange(per_chunk)
    reports = []

    with _scratch_dir() as tmp:
        try:
            spill_path = Path(tmp) / "source_logits.npy"
            spill = np.lib.format.open_memmap(
                spill_path, mode="w+", dtype=np.float32, shape=(n_chunks, per_chunk, vocab)
            )
            _reserve(spill_path)
        except OSError as err:
            kind = DiskFullError if err.errno == errno.ENOSPC else UsageError
            raise kind(
                f"--text: cannot make the {_gib(total * vocab * 4)} temporary file for the "
                f"source's logits in {tmp}: {err.strerror or err}; "
                "set TMPDIR to a folder with room, or use fewer --chunks"
            ) from None
        with token_progress(progress, total, "source on text") as bar:
            for c, logits in enumerate(_chunk_logits(model, chunks, torch)):
                lo, hi = c * per_chunk, (c + 1) * per_chunk
                target = np.asarray(chunks.chunks[c][chunks.first_scored + 1 :])
                try:
                    spill[c] = logits
                except OSError as err:
                    raise NntrError(
                        f"--text: writing the source's logits to a temporary file failed: "
                        f"{err.strerror or err}; set TMPDIR to a folder with room"
                    ) from None
                logp = _log_softmax(logits)
                nll_b[lo:hi] = -logp[rows, target]
                p_b[lo:hi] = np.exp(logp[rows, target])
                top_b[lo:hi] = logits.argmax(axis=-1)
                if bar is not None:
                    bar.advance(per_chunk, current=f"chunk {c + 1}/{n_chunks}")

        # A GGUF read with its own names holds the GGUF's values, not the model's: put back
        # the model's own instead.
        kept = (
            {k: v.detach().clone() for k, v in model.state_dict().items()}
            if source.gguf_raw_names and len(file_paths) > 1
            else None
        )
        for i, file_path in enumerate(file_paths):
            if i > 0 and kept is not None:
                with torch.no_grad():
                    for k, v in model.state_dict().items():
                        v.copy_(kept[k])
            elif i > 0:
                _restore_source_weights(model, source, torch)
            replaced, not_replaced, unused = load_file_weights(
                model, file_path, source_names, backend=backend, progress=progress
            )
            nll_t, p_t, kl = np.empty(total), np.empty(total), np.empty(total)
            same = np.empty(total, dtype=bool)
            with token_progress(progress, total, f"{Path(file_path).name} on text") as bar:
                for c, logits in enumerate(_chunk_logits(model, chunks, torch)):
                    lo, hi = c * per_chunk, (c + 1) * per_chunk
                    target = np.asarray(chunks.chunks[c][chunks.first_scored + 1 :])
                    logq = _log_softmax(logits)
                    nll_t[lo:hi] = -logq[rows, target]
                    p_t[lo:hi] = np.exp(logq[rows, target])
                    same[lo:hi] = logits.argmax(axis=-1) == top_b[lo:hi]
                    for r in range(0, per_chunk, _ROWS):
                        lp = _log_softmax(spill[c, r : r + _ROWS])
                        k = (np.exp(lp) * (lp - logq[r : r + _ROWS])).sum(axis=-1)
                        kl[lo + r : lo + r + lp.shape[0]] = np.maximum(k, 0.0)
                    if bar is not None:
                        bar.advance(per_chunk, current=f"chunk {c + 1}/{n_chunks}")
            report = summarize_positions(nll_b, nll_t, kl, p_b, p_t, same, chunks)
            report.replaced, report.not_replaced, report.unused = replaced, not_replaced, unused
            reports.append(report)
        del spill
    return reports


@contextlib.contextmanager
def _scratch_dir() -> Iterator[Path]:
    """A new folder in TMPDIR, removed afterwards. Its name is registered with the run's
    temporary outputs before it is made, so a signal at any moment leaves nothing behind."""
    from nntrtool import outputs

    path = Path(tempfile.gettempdir()) / f"nntrtool-text-{os.getpid()}-{secrets.token_hex(4)}"
    outputs.register(path)
    try:
        try:
            path.mkdir()
        except OSError as err:
            raise UsageError(
                f"--text: cannot make a temporary folder in {path.parent}: "
                f"{err.strerror or err}; set TMPDIR to a folder you can write to"
            ) from None
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        outputs.forget(path)


def _reserve(path: Path) -> None:
    """Give the (sparse) spill file its blocks now: a full disk is then an OSError here, not a
    SIGBUS when a page of the map is first written."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate here: go on
                raise
    finally:
        os.close(fd)


def _restore_source_weights(model: Any, source: SourceRequest, torch: Any) -> None:
    """Put the source's weights back into the model, tensor by tensor (experts into their
    fused parameters, as :func:`~nntrtool.verify.logits.load_file_weights` puts the file's)."""
    from nntrtool.architectures import placements_for
    from nntrtool.verify.logits import state_slot

    state = model.state_dict()
    with (
        source.open() as src,
        torch.no_grad(),
    ):
        placements = placements_for(src.config)
        for t in src.tensors:
            slot = state_slot(t.name, state, placements)
            if slot is None:
                continue
            key, index, transpose = slot
            target = state[key][index] if index else state[key]
            value = np.array(t.read_f32(), dtype=np.float32)  # a copy
            value = np.ascontiguousarray(value.T) if transpose else value
            target.copy_(torch.from_numpy(value).reshape(target.shape))


def _chunk_logits(model: Any, chunks: TextChunks, torch: Any):
    """Yield, per chunk, the model's float32 logits at the scored positions ``(n, vocab)``."""
    import inspect

    first, ctx = chunks.first_scored, chunks.ctx
    keep = ctx - first  # positions first .. ctx-1; the last one predicts past the chunk
    takes_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    for ids in chunks.chunks:
        input_ids = torch.tensor([ids], dtype=torch.long)
        with torch.no_grad():
            if takes_keep:
                logits = model(input_ids=input_ids, use_cache=False, logits_to_keep=keep).logits
            else:
                logits = model(input_ids=input_ids, use_cache=False).logits[:, first:]
        yield np.ascontiguousarray(logits[0, :-1].float().numpy())


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-probabilities of float32 logits, a few rows at a time (bounded temporaries).

    Both runs' log-probabilities come from their float32 logits the same way, so identical
    weights give exactly zero divergence."""
    out = np.empty(logits.shape, dtype=np.float64)
    for r in range(0, logits.shape[0], _ROWS):
        x = logits[r : r + _ROWS].astype(np.float64)
        x -= x.max(axis=-1, keepdims=True)
        x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
        out[r : r + x.shape[0]] = x
    return out


def _check_ids(chunks: TextChunks, vocab: int) -> None:
    high = max(max(c) for c in chunks.chunks)
    if high >= vocab:
        raise UsageError(
            f"--text: the tokenizer gives id {high}, outside the model's vocabulary ({vocab}); "
            "the tokenizer does not belong to this model: give the model folder with its own"
        )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
