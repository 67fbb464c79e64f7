"""verify --logits: the model run with the file's weights against the model as it is."""

from __future__ import annotations

import json
import sys

import ggml_oracle
import numpy as np
import pytest

from nntrtool import verify as v
from nntrtool.cli.app import main
from nntrtool.format import NntrWriter, TensorSpec
from nntrtool.qtypes import F32, Q4_0
from nntrtool.sources import open_source


def write_from_source(src_dir, path, quantize: bool, skip: tuple[str, ...] = (), config=None):
    """An NNTR file of the source's tensors: all F32, or 2-D ones as Q4_0 (ggml's bytes)."""
    specs, datas = [], []
    with open_source(src_dir) as src:
        for t in src.tensors:
            if t.name in skip:
                continue
            x = t.read_f32().reshape(t.shape)
            if quantize and x.ndim == 2 and x.shape[-1] % 32 == 0:
                specs.append(TensorSpec(t.name, Q4_0, x.shape))
                datas.append(ggml_oracle.ggml_quantize(x, "q4_0"))
            else:
                specs.append(TensorSpec(t.name, F32, x.shape))
                datas.append(np.ascontiguousarray(x))
    with NntrWriter(path, config or {}, specs) as w:
        for spec, data in zip(specs, datas, strict=True):
            w.write(spec.name, data)
    return path


def test_logits_divergence_matches_definition():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 50))
    b = a + 0.1 * rng.standard_normal((5, 50))
    kl, top1, diff = v.logits_divergence(a, b)
    p = np.exp(a) / np.exp(a).sum(-1, keepdims=True)
    q = np.exp(b) / np.exp(b).sum(-1, keepdims=True)
    assert kl == pytest.approx((p * np.log(p / q)).sum(-1), rel=1e-10)
    assert top1 == np.mean(a.argmax(-1) == b.argmax(-1))
    assert diff == np.max(np.abs(a - b))
    kl0, top0, diff0 = v.logits_divergence(a, a)
    assert np.all(kl0 == 0) and top0 == 1.0 and diff0 == 0.0


def test_tokens_parse_and_default():
    assert v.parse_tokens("1, 2,3") == [1, 2, 3]
    for bad in ("", "a,b", "1,-2"):
        with pytest.raises(v.UsageError):
            v.parse_tokens(bad)
    toks = v.default_tokens(512)
    assert toks == v.default_tokens(512) and len(toks) == v.DEFAULT_PROMPT_LENGTH
    assert all(0 <= t < 512 for t in toks) and len(set(toks)) > 32


def test_f32_file_gives_identical_logits(hf_model, tmp_path):
    src = hf_model("llama")
    nntr = write_from_source(src, tmp_path / "f32.nntr", quantize=False)
    report = v.compare_logits(nntr, src)
    assert report.kl_mean == 0.0 and report.kl_max == 0.0
    assert report.top1_agreement == 1.0 and report.max_logit_diff == 0.0
    assert report.not_replaced == [] and report.unused == []
    assert report.replaced == len(open_source(src).tensors)


def test_q4_0_file_moves_the_distribution_a_little(hf_model, tmp_path, capsys):
    src = hf_model("llama")
    nntr = write_from_source(src, tmp_path / "q.nntr", quantize=True)
    report = v.compare_logits(nntr, src, tokens=[1, 5, 9, 200, 3])
    assert report.tokens == [1, 5, 9, 200, 3]
    assert 0.0 < report.kl_mean <= report.kl_max < 0.1
    assert report.max_logit_diff > 0

    with pytest.raises(SystemExit) as ex:
        main(["verify", str(nntr), str(src), "--logits", "--json", "-q", "--tokens", "1,5,9"])
    doc = json.loads(capsys.readouterr().out)
    assert ex.value.code == 0
    assert doc["logits"]["positions"] == 3 and doc["logits"]["kl_mean"] > 0
    assert doc["thresholds"]["max_kl"] is None
    # --max-kl below the measured divergence fails the run
    with pytest.raises(SystemExit) as ex:
        main(["verify", str(nntr), str(src), "--logits", "-q", "--max-kl", "1e-12"])
    out = capsys.readouterr().out
    assert ex.value.code == 1 and "exceeds --max-kl" in out


def test_tied_head_is_replaced_through_the_embedding(hf_model, tmp_path):
    src = hf_model("llama", tie=True)
    with open_source(src) as s:
        names = [t.name for t in s.tensors]
    assert "lm_head.weight" not in names  # transformers stores a tied head once
    config = {
        "nntrtool": {
            "tied": True,
            "tied_head": "lm_head.weight",
            "tied_embedding": "model.embed_tokens.weight",
        }
    }
    nntr = write_from_source(src, tmp_path / "t.nntr", quantize=False, config=config)
    report = v.compare_logits(nntr, src)
    assert report.kl_max == 0.0 and report.top1_agreement == 1.0
    assert report.not_replaced == []


def test_weights_missing_from_the_file_are_reported(hf_model, tmp_path):
    src = hf_model("llama")
    nntr = write_from_source(src, tmp_path / "m.nntr", quantize=False, skip=("model.norm.weight",))
    report = v.compare_logits(nntr, src)
    assert report.not_replaced == ["model.norm.weight"]


def test_bad_token_id_and_missing_torch(hf_model, tmp_path, monkeypatch, capsys):
    src = hf_model("llama")
    nntr = write_from_source(src, tmp_path / "f.nntr", quantize=False)
    with pytest.raises(v.UsageError, match="outside the vocabulary"):
        v.compare_logits(nntr, src, tokens=[1, 10**6])
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the extra were not installed
    with pytest.raises(SystemExit) as ex:
        main(["verify", str(nntr), str(src), "--logits"])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "nntrtool[torch]" in err and len(err.strip().splitlines()) == 1


def test_repacked_file_gives_the_same_logits_as_plain(hf_model, tmp_path):
    from nntrtool.repack_file import repack_file

    src = hf_model("llama")
    plain = write_from_source(src, tmp_path / "q.nntr", quantize=True)
    repacked = tmp_path / "q8.nntr"
    repack_file(plain, repacked, "q4_0_8")
    a = v.compare_logits(plain, src)
    b = v.compare_logits(repacked, src)
    assert a.kl_mean == b.kl_mean > 0 and a.max_logit_diff == b.max_logit_diff
