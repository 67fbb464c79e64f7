"""verify --logits --text: perplexity and KL divergence of a file against its source on a text."""

from __future__ import annotations

import importlib.resources
import json
import math
import shutil

import ggml_oracle
import numpy as np
import pytest
from models import add_tokenizer, make_hf_model
from test_verify_logits import write_from_source

from nntrtool import verify as v
from nntrtool.cli.app import main
from nntrtool.verify.text import summarize_positions

CTX = 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama with a byte-level BPE tokenizer of its 512 ids in its folder."""
    folder = tmp_path_factory.mktemp("llama-tok")
    make_hf_model(folder, "llama")
    add_tokenizer(folder, 512)
    return folder


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """English text the tokenizer was not trained on (the last Python reference topics)."""
    topics = importlib.resources.files("pydoc_data").joinpath("topics.py").read_text()
    path = tmp_path_factory.mktemp("text") / "eval.txt"
    path.write_text(topics[-40_000:], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def q4_file(model_dir, tmp_path_factory):
    return write_from_source(model_dir, tmp_path_factory.mktemp("q") / "q.nntr", quantize=True)


def reference_measurement(model_dir, chunks, weights):
    """PPL of both models, mean KL and top-1 agreement, computed directly with transformers:
    ``weights`` maps a parameter name to the array the second model gets."""
    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    test = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, value in weights.items():
            test.get_parameter(name).copy_(torch.from_numpy(value))
    first = CTX // 2
    nll_b, nll_t, kls, same = [], [], [], []
    for ids in chunks:
        x = torch.tensor([ids])
        with torch.no_grad():
            lb = torch.log_softmax(base(x).logits[0].double(), -1)[first : CTX - 1]
            lt = torch.log_softmax(test(x).logits[0].double(), -1)[first : CTX - 1]
        target = torch.tensor(ids[first + 1 :])
        nll_b += (-lb[torch.arange(len(target)), target]).tolist()
        nll_t += (-lt[torch.arange(len(target)), target]).tolist()
        kls += (lb.exp() * (lb - lt)).sum(-1).tolist()
        same += (lb.argmax(-1) == lt.argmax(-1)).tolist()
    return (
        math.exp(np.mean(nll_b)),
        math.exp(np.mean(nll_t)),
        float(np.mean(kls)),
        float(np.median(kls)),
        float(np.mean(same)),
    )


def test_chunks_follow_llama_perplexity(model_dir, text_file):
    chunks = v.load_text_chunks(model_dir, text_file, ctx=CTX, chunks=3)
    assert len(chunks.chunks) == 3 and all(len(c) == CTX for c in chunks.chunks)
    assert chunks.bos == 0 and all(c[0] == 0 for c in chunks.chunks)  # BOS starts every chunk
    assert chunks.text_tokens > 3 * CTX and chunks.scored_per_chunk == CTX - 1 - CTX // 2
    everything = v.load_text_chunks(model_dir, text_file, ctx=CTX)
    assert len(everything.chunks) == everything.text_tokens // CTX
    assert everything.chunks[:3] == chunks.chunks


def test_f32_file_is_identical_on_text(model_dir, text_file, tmp_path):
    nntr = write_from_source(model_dir, tmp_path / "f32.nntr", quantize=False)
    chunks = v.load_text_chunks(model_dir, text_file, ctx=CTX, chunks=2)
    t = v.compare_text(nntr, model_dir, chunks)
    assert t.kl_mean == 0.0 and t.kl_max == 0.0 and t.top1_agreement == 1.0
    assert t.ppl_ratio == 1.0 and t.ppl_base == t.ppl_test and t.rms_dp == 0.0
    assert t.scored == 2 * chunks.scored_per_chunk and t.not_replaced == []


def test_several_files_in_one_run(model_dir, text_file, q4_file, tmp_path):
    """The source weights are put back between files: f32 after q4_0 is still exact."""
    f32 = write_from_source(model_dir, tmp_path / "f32.nntr", quantize=False)
    chunks = v.load_text_chunks(model_dir, text_file, ctx=CTX, chunks=2)
    q4_report, f32_report = v.compare_text_files([q4_file, f32], model_dir, chunks)
    assert q4_report.kl_mean > 0 and f32_report.kl_mean == 0.0
    assert q4_report.ppl_base == f32_report.ppl_base
    assert q4_report.kl_mean == v.compare_text(q4_file, model_dir, chunks).kl_mean


def test_q4_0_figures_match_a_direct_computation(model_dir, text_file, q4_file):
    chunks = v.load_text_chunks(model_dir, text_file, ctx=CTX, chunks=3)
    t = v.compare_text(q4_file, model_dir, chunks)

    # the same numbers from transformers and ggml's own Q4_0 round trip, without nntrtool
    from nntrtool.sources import open_source

    weights = {}
    with open_source(model_dir) as src:
        for st in src.tensors:
            x = st.read_f32().reshape(st.shape)
            if x.ndim == 2 and x.shape[-1] % 32 == 0:
                q = ggml_oracle.ggml_quantize(x, "q4_0")
                weights[st.name] = ggml_oracle.ggml_dequantize(q, "q4_0", x.shape[-1]).reshape(
                    x.shape
                )
    ppl_b, ppl_t, kl_mean, kl_median, top1 = reference_measurement(
        model_dir, chunks.chunks, weights
    )
    assert t.ppl_base == pytest.approx(ppl_b, rel=1e-5)
    assert t.ppl_test == pytest.approx(ppl_t, rel=1e-5)
    assert t.ppl_ratio == pytest.approx(ppl_t / ppl_b, rel=1e-5)
    assert t.kl_mean == pytest.approx(kl_mean, rel=1e-4) and t.kl_mean > 0
    assert t.kl_median == pytest.approx(kl_median, rel=1e-4)
    assert t.top1_agreement == pytest.approx(top1)
    assert t.kl_min <= t.kl_percentiles["1"] <= t.kl_median <= t.kl_p99 <= t.kl_max
    assert t.kl_mean_err > 0 and t.ppl_base_err > 0


def test_cli_text_json_and_thresholds(model_dir, text_file, q4_file, capsys):
    base = ["verify", str(q4_file), str(model_dir), "--logits", "--text", str(text_file)]
    base += ["--ctx", str(CTX), "--chunks", "2", "-q"]
    with pytest.raises(SystemExit) as ex:
        main([*base, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert ex.value.code == 0 and doc["passed"] and doc["logits"] is None
    text = doc["text"]
    assert text["chunks"] == 2 and text["ctx"] == CTX and text["kl_mean"] > 0
    for key in ("ppl", "ppl_base", "ppl_ratio", "kl_median", "kl_p99", "top1_agreement", "rms_dp"):
        assert text[key] is not None, key
    assert set(text["kl_percentiles"]) == {"99.9", "99", "90", "50", "10", "5", "1", "0.1"}

    with pytest.raises(SystemExit) as ex:
        main(base)
    out = capsys.readouterr().out
    assert ex.value.code == 0 and "Mean KLD" in out and "Same top p" in out and "PASS" in out

    with pytest.raises(SystemExit) as ex:
        main([*base, "--max-kl", "1e-12"])
    out = capsys.readouterr().out
    assert ex.value.code == 1 and "exceeds --max-kl" in out and "FAIL" in out

    ratio = text["ppl_ratio"]
    with pytest.raises(SystemExit) as ex:
        main([*base, "--max-ppl-ratio", str(ratio * 0.999), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert ex.value.code == 1 and not doc["passed"]
    assert doc["thresholds"]["max_ppl_ratio"] == pytest.approx(ratio * 0.999)
    with pytest.raises(SystemExit) as ex:
        main([*base, "--max-ppl-ratio", str(ratio * 1.001)])
    capsys.readouterr()
    assert ex.value.code == 0


def _one_line_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as ex:
        main(argv)
    captured = capsys.readouterr()
    assert ex.value.code == 2, captured
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err


def test_bad_text_inputs(model_dir, text_file, q4_file, tmp_path, capsys):
    base = ["verify", str(q4_file), str(model_dir), "--logits", "-q"]
    err = _one_line_exit_2(capsys, [*base, "--text", str(tmp_path / "nope.txt")])
    assert "no such file" in err
    short = tmp_path / "short.txt"
    short.write_text("Just a few words.", encoding="utf-8")
    err = _one_line_exit_2(capsys, [*base, "--text", str(short)])
    assert "too short for one chunk" in err
    err = _one_line_exit_2(capsys, [*base, "--text", str(text_file), "--ctx", "4"])
    assert "--ctx" in err
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00abc" * 100)
    assert "UTF-8" in _one_line_exit_2(capsys, [*base, "--text", str(binary)])
    # options that need --text / --logits
    assert "--logits" in _one_line_exit_2(
        capsys, ["verify", str(q4_file), str(model_dir), "--text", str(text_file)]
    )
    assert "--text" in _one_line_exit_2(capsys, [*base, "--max-ppl-ratio", "1.1"])
    assert "not both" in _one_line_exit_2(
        capsys, [*base, "--text", str(text_file), "--tokens", "1,2"]
    )


def test_source_without_tokenizer(model_dir, text_file, q4_file, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, bare / name)
    err = _one_line_exit_2(
        capsys, ["verify", str(q4_file), str(bare), "--logits", "--text", str(text_file), "-q"]
    )
    assert "no tokenizer" in err


def test_summary_statistics_follow_their_definitions():
    rng = np.random.default_rng(1)
    n = 200
    nll_b = rng.gamma(2.0, 1.0, n)
    nll_t = nll_b + rng.normal(0.02, 0.05, n)
    kl = rng.gamma(0.5, 0.02, n)
    p_b, p_t = np.exp(-nll_b), np.exp(-nll_t)
    same = rng.random(n) < 0.9
    chunks = v.TextChunks("t.txt", CTX, [[0] * CTX], n, None)
    t = summarize_positions(nll_b, nll_t, kl, p_b, p_t, same, chunks)
    d = nll_t - nll_b
    assert t.ppl_base == pytest.approx(math.exp(nll_b.mean()))
    assert t.ppl_base_err == pytest.approx(t.ppl_base * nll_b.std() / math.sqrt(n - 1))
    assert t.ln_ratio == pytest.approx(d.mean())
    assert t.ln_ratio_err == pytest.approx(d.std() / math.sqrt(n - 1))
    assert t.ppl_ratio == pytest.approx(math.exp(d.mean()))
    assert t.kl_mean_err == pytest.approx(kl.std() / math.sqrt(n - 1))
    assert t.kl_percentiles["99"] == pytest.approx(np.percentile(kl, 99))
    assert t.kl_max == kl.max() and t.kl_min == kl.min()
    f = same.mean()
    assert t.top1_agreement == f
    assert t.top1_agreement_err == pytest.approx(math.sqrt(f * (1 - f) / (n - 1)))
    assert t.rms_dp == pytest.approx(math.sqrt(np.mean((p_t - p_b) ** 2)))
    assert t.ppl_corr == pytest.approx(np.corrcoef(nll_b, nll_t)[0, 1])
