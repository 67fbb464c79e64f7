"""What a conversion did: the plan it carried out, the file, time, throughput and every
fallback (:class:`ConversionReport`, what ``convert`` prints as its summary)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nntrtool.plan.tensors import ConversionPlan


@dataclass
class ConversionReport:
    """What a conversion did: the plan, where it went, how long it took and what it fell back on."""

    plan: ConversionPlan
    out_path: Path | None
    dry_run: bool
    seconds: float = 0.0
    write_seconds: float = 0.0
    backend: str = ""
    threads: int = 0
    file_size: int = 0
    nonfinite: list[tuple[str, str]] = field(default_factory=list)
    #: Seconds spent per stage, summed over chunks (quantize and prefetch_wait on the worker).
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def params(self) -> int:
        return self.plan.params

    @property
    def source_bytes(self) -> int:
        return self.plan.source_bytes

    @property
    def params_per_s(self) -> float:
        return self.params / self.seconds if self.seconds > 0 else 0.0

    @property
    def compression(self) -> float:
        """Source bytes over output bytes (predicted size for a dry run)."""
        size = self.file_size or self.plan.predicted_size
        return self.source_bytes / size if size else 0.0

    @property
    def by_type(self) -> dict[str, tuple[int, int, int]]:
        """``{display type: (tensors, params, bytes)}``."""
        return self.plan.bytes_by_type()

    @property
    def fallbacks(self) -> list[tuple[str, str]]:
        return self.plan.fallbacks

    @property
    def unrepacked(self) -> list[tuple[str, str]]:
        return self.plan.unrepacked
