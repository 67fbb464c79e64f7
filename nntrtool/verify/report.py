"""The verdict of ``verify``: per-tensor results, per-type summary, the whole report and JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol

STATUS_OK = "ok"
STATUS_TIED = "tied"
STATUS_OVER = "over_threshold"
STATUS_NOT_EXACT = "not_exact"
STATUS_CHECKSUM = "bad_checksum"
STATUS_MISSING = "missing"
STATUS_EXTRA = "extra"
STATUS_SHAPE = "shape_mismatch"
STATUS_PLAN = "plan_mismatch"
#: Statuses that do not fail verification.
PASSING = frozenset({STATUS_OK, STATUS_TIED})


@dataclass
class TensorResult:
    """The verdict on one tensor (one row of the table, one object of ``--json``)."""

    name: str
    type: str | None  # as users see it: q4_0, q4_0_8, q6_k, q8_0, f32 (None when not in the file)
    shape: tuple[int, ...] | None
    status: str
    params: int = 0
    rmse: float | None = None
    max_abs_err: float | None = None
    rel_err: float | None = None
    cosine: float | None = None
    snr_db: float | None = None
    checksum_ok: bool | None = None
    max_rel_err: float | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in PASSING

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "shape": list(self.shape) if self.shape is not None else None,
            "params": self.params,
            "rmse": json_float(self.rmse),
            "max_abs_err": json_float(self.max_abs_err),
            "rel_err": json_float(self.rel_err),
            "cosine": json_float(self.cosine),
            "snr_db": json_float(self.snr_db),
            "checksum_ok": self.checksum_ok,
            "max_rel_err": self.max_rel_err,
            "status": self.status,
            "message": self.message,
        }


def json_float(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass
class TypeSummary:
    """Mean and worst of each metric over the tensors of one type that were compared."""

    type: str
    tensors: int
    params: int
    failed: int
    mean: dict[str, float | None]
    worst: dict[str, float | None]

    def to_json(self) -> dict[str, Any]:
        """The fields in order, non-finite figures as null."""
        return {
            **asdict(self),
            "mean": {k: json_float(v) for k, v in self.mean.items()},
            "worst": {k: json_float(v) for k, v in self.worst.items()},
        }


#: Metric -> whether larger is worse (for the summary's "worst" and the table's order).
METRICS: dict[str, bool] = {
    "rmse": True,
    "max_abs_err": True,
    "rel_err": True,
    "cosine": False,
    "snr_db": False,
}


def summarize(results: list[TensorResult]) -> list[TypeSummary]:
    """Per-type mean and worst of every metric, over tensors that were compared."""
    by_type: dict[str, list[TensorResult]] = {}
    for r in results:
        if r.type is not None and r.rmse is not None:
            by_type.setdefault(r.type, []).append(r)
    out = []
    for tname in sorted(by_type):
        rows = by_type[tname]
        mean: dict[str, float | None] = {}
        worst: dict[str, float | None] = {}
        for metric, larger_is_worse in METRICS.items():
            values = [getattr(r, metric) for r in rows]
            if any(v != v for v in values):  # NaN anywhere: the type's figures are NaN
                mean[metric] = worst[metric] = math.nan
                continue
            finite = [v for v in values if math.isfinite(v)]
            mean[metric] = sum(finite) / len(finite) if finite else None
            worst[metric] = max(values) if larger_is_worse else min(values)
        out.append(
            TypeSummary(
                type=tname,
                tensors=len(rows),
                params=sum(r.params for r in rows),
                failed=sum(not r.ok for r in rows),
                mean=mean,
                worst=worst,
            )
        )
    return out


def worst_first(results: list[TensorResult]) -> list[TensorResult]:
    """Failures first, then by relative error, largest first (file order breaks ties)."""

    def key(item: tuple[int, TensorResult]) -> tuple[int, float, int]:
        i, r = item
        rel = r.rel_err if r.rel_err is not None else -1.0
        if rel != rel:
            rel = math.inf
        return (0 if not r.ok else 1, -rel, i)

    return [r for _, r in sorted(enumerate(results), key=key)]


class LogitsMeasure(Protocol):
    """What the verdict needs of a logits comparison (``--logits``; ``--text`` adds ``ppl_ratio``)."""

    kl_mean: float

    def to_json(self) -> dict[str, Any]: ...


class TextMeasure(LogitsMeasure, Protocol):
    ppl_ratio: float


@dataclass
class VerifyReport:
    """Everything ``verify`` found: per-tensor results, per-type summary and the verdict."""

    file: str
    source: str
    tensors: list[TensorResult]
    thresholds: dict[str, float]
    seconds: float = 0.0
    logits: LogitsMeasure | None = None
    max_kl: float | None = None
    text: TextMeasure | None = None
    max_ppl_ratio: float | None = None

    @property
    def failures(self) -> list[TensorResult]:
        return [r for r in self.tensors if not r.ok]

    @property
    def logits_ok(self) -> bool:
        return self.kl_ok and self.ppl_ratio_ok

    @property
    def kl_ok(self) -> bool:
        """Mean KL divergence (over the text with ``--text``, else the prompt) within --max-kl."""
        measured = self.text if self.text is not None else self.logits
        if measured is None or self.max_kl is None:
            return True
        return measured.kl_mean <= self.max_kl

    @property
    def ppl_ratio_ok(self) -> bool:
        """PPL(file) / PPL(source) on the text within --max-ppl-ratio."""
        if self.text is None or self.max_ppl_ratio is None:
            return True
        return self.text.ppl_ratio <= self.max_ppl_ratio

    @property
    def passed(self) -> bool:
        return not self.failures and self.logits_ok

    @property
    def summary(self) -> list[TypeSummary]:
        return summarize(self.tensors)

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in self.tensors:
            counts[r.status] = counts.get(r.status, 0) + 1
        return {
            "file": self.file,
            "source": self.source,
            "passed": self.passed,
            "thresholds": {
                "max_rel_err": dict(self.thresholds),
                "max_kl": self.max_kl,
                "max_ppl_ratio": self.max_ppl_ratio,
            },
            "counts": counts,
            "params": sum(r.params for r in self.tensors if r.rmse is not None),
            "seconds": round(self.seconds, 3),
            "summary": [s.to_json() for s in self.summary],
            "tensors": [r.to_json() for r in worst_first(self.tensors)],
            "logits": self.logits.to_json() if self.logits is not None else None,
            "text": self.text.to_json() if self.text is not None else None,
        }
