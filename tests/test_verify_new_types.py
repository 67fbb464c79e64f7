"""verify reads every stored type back: tensors and the model run with the file's weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from nntrtool.convert import ConvertOptions, convert
from nntrtool.verify import compare_logits, verify

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny-llama"


@pytest.mark.parametrize("qtype", ["f16", "q4_k", "q5_k", "q5_0", "q5_1", "q4_k_m"])
def test_verify_reads_every_type(tmp_path, qtype):
    out = tmp_path / f"{qtype}.nntr"
    convert(EXAMPLE, out, ConvertOptions(quant_type=qtype, backend="numpy"))
    report = verify(out, EXAMPLE, backend="numpy")
    assert report.passed, [(r.name, r.status, r.message) for r in report.failures]
    types = {r.type for r in report.tensors}
    assert types - {"f32"}, types  # something was stored in a non-float32 type


@pytest.mark.parametrize("qtype", ["f16", "q4_k"])
def test_logits_run_with_every_type(tmp_path, qtype):
    pytest.importorskip("torch")
    out = tmp_path / f"{qtype}.nntr"
    convert(EXAMPLE, out, ConvertOptions(quant_type=qtype, backend="numpy"))
    report = compare_logits(out, EXAMPLE, backend="numpy")
    assert report.replaced > 0 and not report.not_replaced
    assert report.kl_mean < (1e-9 if qtype == "f16" else 0.01)
