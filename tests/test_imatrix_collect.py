"""nntrtool imatrix: importance statistics computed on a text, written as llama.cpp's GGUF
imatrix and read back both by gguf's reader and by nntrtool's own (nntrtool.imatrix)."""

from __future__ import annotations

import importlib.resources
import json
import signal

import gguf
import numpy as np
import pytest
from models import add_tokenizer, make_hf_model

from nntrtool.cli.app import main
from nntrtool.imatrix import read_imatrix
from nntrtool.imatrix.collect import compute_imatrix, llama_cpp_name

CTX = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-tok")
    make_hf_model(folder, "llama")
    add_tokenizer(folder, 512)
    return folder


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    topics = importlib.resources.files("pydoc_data").joinpath("topics.py").read_text()
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(topics[:30_000], encoding="utf-8")
    return path


def read_gguf(path):
    """``(fields, {tensor name: numpy array})`` through gguf's own reader."""
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    return fields, tensors


def reference_sums(model_dir, chunks):
    """Sum of squared inputs per column and rows seen, from plain torch hooks on every Linear."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sums, rows = {}, {}

    def hook_for(name):
        def hook(module, args):
            x = args[0].reshape(-1, module.in_features).double()
            sums[name] = sums.get(name, 0) + (x**2).sum(0).numpy()
            rows[name] = rows.get(name, 0) + x.shape[0]

        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            module.register_forward_pre_hook(hook_for(name))
    with torch.no_grad():
        for ids in chunks:
            model(torch.tensor([ids]))
    return sums, rows


def test_names_follow_llama_cpp():
    assert llama_cpp_name("model.layers.3.self_attn.q_proj") == ("blk.3.attn_q.weight", None)
    assert llama_cpp_name("model.layers.0.self_attn.o_proj") == ("blk.0.attn_output.weight", None)
    assert llama_cpp_name("model.layers.12.mlp.down_proj") == ("blk.12.ffn_down.weight", None)
    assert llama_cpp_name("model.layers.1.mlp.experts.5.up_proj") == (
        "blk.1.ffn_up_exps.weight",
        5,
    )
    assert llama_cpp_name("lm_head") is None and llama_cpp_name("model.embed_tokens") is None


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma"])
def test_llama_cpp_tables_and_the_fixed_table_agree(arch):
    """With the model's config, gguf's tables name every collected Linear as the table does."""
    from models import hf_config

    config = hf_config(arch).to_dict()
    for block in (0, 1):
        for hf in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                   "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):  # fmt: skip
            module = f"model.layers.{block}.{hf}"
            assert llama_cpp_name(module, config) == llama_cpp_name(module), module


def test_file_round_trips_with_the_right_sums(model_dir, text_file, tmp_path):
    from nntrtool.sources.text_chunks import load_text_chunks

    out = tmp_path / "imatrix.gguf"
    report = compute_imatrix(model_dir, text_file, out, ctx=CTX, chunks=5)
    assert report.chunks == 5 and report.tokens == 5 * CTX and report.never_activated == []

    fields, tensors = read_gguf(out)
    assert fields["general.type"] == "imatrix"
    assert fields["imatrix.chunk_count"] == 5 and fields["imatrix.chunk_size"] == CTX
    assert fields["imatrix.datasets"] == [str(text_file)]
    assert "general.architecture" not in fields

    imx = read_imatrix(out)  # nntrtool's reader: the file is what convert --imatrix takes
    assert imx.format == "gguf" and imx.chunk_count == 5 and imx.chunk_size == CTX
    assert imx.datasets == [str(text_file)] and len(imx.entries) == 14
    for name, entry in imx.entries.items():
        np.testing.assert_array_equal(entry.in_sum2, tensors[f"{name}.in_sum2"])
        np.testing.assert_allclose(entry.importance()[0], entry.in_sum2[0] / (5 * CTX), rtol=1e-6)

    chunks = load_text_chunks(model_dir, text_file, ctx=CTX, chunks=5).chunks
    sums, rows = reference_sums(model_dir, chunks)
    assert len(sums) == 2 * 7 and report.tensors == 14
    names = sorted(t for t in tensors if t.endswith(".in_sum2"))
    assert names == sorted(t for t in tensors if not t.endswith(".counts")) and len(names) == 14
    for hf_name, expected in sums.items():
        name, _ = llama_cpp_name(hf_name)
        in_sum2, counts = tensors[f"{name}.in_sum2"], tensors[f"{name}.counts"]
        assert in_sum2.dtype == np.float32 and in_sum2.shape == (1, expected.size)
        assert counts.shape == (1, 1) and counts[0, 0] == rows[hf_name] == 5 * CTX
        np.testing.assert_allclose(in_sum2[0], expected, rtol=2e-6)


def test_moe_experts_are_collected_one_by_one(tmp_path, text_file):
    """Qwen3-MoE: every expert's rows are the tokens the router sent to it."""
    import torch
    import transformers

    config = transformers.Qwen3MoeConfig(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512,
        num_experts=8, num_experts_per_tok=2, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path / "moe")
    add_tokenizer(tmp_path / "moe", 512)

    # the oracle: the router's choices and the experts' inputs, taken straight from the model
    from nntrtool.sources.text_chunks import load_text_chunks

    chunks = load_text_chunks(tmp_path / "moe", text_file, ctx=CTX, chunks=3).chunks
    seen = {}

    def capture(layer):
        def hook(module, args, kwargs):
            x = args[0].reshape(-1, 64).double()
            sel = args[1].reshape(x.shape[0], -1)
            counts, s_in, s_down = seen.setdefault(
                layer, (np.zeros(8), np.zeros((8, 64)), np.zeros((8, 32)))
            )
            for e in range(8):
                rows = (sel == e).any(-1)
                xe = x[rows]
                counts[e] += int(rows.sum())
                s_in[e] += (xe**2).sum(0).numpy()
                gate, up = (xe @ module.gate_up_proj[e].double().T).chunk(2, -1)
                h = torch.nn.functional.silu(gate) * up
                s_down[e] += (h**2).sum(0).numpy()

        return hook

    for i, layer in enumerate(model.model.layers):
        layer.mlp.experts.register_forward_pre_hook(capture(i), with_kwargs=True)
    with torch.no_grad():
        for ids in chunks:
            model(torch.tensor([ids]))

    out = tmp_path / "moe.gguf"
    report = compute_imatrix(tmp_path / "moe", text_file, out, ctx=CTX, chunks=3)
    _, tensors = read_gguf(out)
    for layer, (counts, s_in, s_down) in seen.items():
        assert counts.sum() == 3 * CTX * 2  # every token goes to two experts
        for kind, expected in (("gate", s_in), ("up", s_in), ("down", s_down)):
            name = f"blk.{layer}.ffn_{kind}_exps.weight"
            assert tensors[f"{name}.counts"].shape == (8, 1)
            np.testing.assert_array_equal(tensors[f"{name}.counts"][:, 0], counts)
            # the model computes in float32, the oracle in float64
            np.testing.assert_allclose(
                tensors[f"{name}.in_sum2"], expected, rtol=1e-5, atol=1e-6 * expected.max()
            )
        # attention and the router are dense: one matrix, every token
        assert tensors[f"blk.{layer}.attn_q.weight.counts"].shape == (1, 1)
        assert tensors[f"blk.{layer}.ffn_gate_inp.weight.counts"][0, 0] == 3 * CTX
    assert report.matrices == 2 * (4 + 1 + 3 * 8)


def test_cli_summary_and_json(model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "i.gguf"
    argv = ["imatrix", str(model_dir), "--text", str(text_file), "-o", str(out)]
    argv += ["--ctx", str(CTX), "--chunks", "2", "-q"]
    with pytest.raises(SystemExit) as ex:
        main(argv)
    printed = capsys.readouterr().out
    assert (
        ex.value.code == 0 and "14 tensors" in printed and "every tensor was activated" in printed
    )
    with pytest.raises(SystemExit) as ex:
        main([*argv, "--force", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert ex.value.code == 0 and doc["chunks"] == 2 and doc["tokens"] == 2 * CTX


def _one_line_exit_2(capsys, argv, out):
    with pytest.raises(SystemExit) as ex:
        main(argv)
    captured = capsys.readouterr()
    assert ex.value.code == 2, captured
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert not out.exists() or out.stat().st_size == 7  # untouched
    assert not list(out.parent.glob(".*.tmp"))
    return captured.err


def test_bad_inputs(model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "o.gguf"
    base = ["imatrix", str(model_dir), "-o", str(out), "--ctx", str(CTX), "-q"]
    assert "no such file" in _one_line_exit_2(capsys, [*base, "--text", "missing.txt"], out)
    short = tmp_path / "short.txt"
    short.write_text("Too short.", encoding="utf-8")
    assert "too short" in _one_line_exit_2(capsys, [*base, "--text", str(short)], out)
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((model_dir / name).read_bytes())
    argv = ["imatrix", str(bare), "--text", str(text_file), "-o", str(out), "-q"]
    assert "no tokenizer" in _one_line_exit_2(capsys, argv, out)
    out.write_text("keep me")  # 7 bytes: an existing output is left alone without --force
    assert "--force" in _one_line_exit_2(capsys, [*base, "--text", str(text_file)], out)
    nowhere = tmp_path / "no" / "such" / "i.gguf"
    argv = ["imatrix", str(model_dir), "--text", str(text_file), "-o", str(nowhere), "-q"]
    assert "does not exist" in _one_line_exit_2(capsys, argv, nowhere)


def test_per_expert_linear_modules_become_rows_of_one_entry():
    """Checkpoints with one nn.Linear per expert (mlp.experts.E.up_proj): expert E is row E."""
    import torch

    from nntrtool.imatrix.collect import ImatrixCollector

    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = torch.nn.ModuleList(
                torch.nn.ModuleDict({"up_proj": torch.nn.Linear(8, 4, bias=False)})
                for _ in range(3)
            )

    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList([torch.nn.Module()])
    model.model.layers[0].mlp = Experts()
    collector = ImatrixCollector(model)
    x0, x2 = torch.randn(5, 8), torch.randn(2, 7, 8)
    with torch.no_grad():
        model.model.layers[0].mlp.experts[0]["up_proj"](x0)
        model.model.layers[0].mlp.experts[2]["up_proj"](x2)
    collector.remove()
    (entry,) = collector.entries()
    assert entry.name == "blk.0.ffn_up_exps.weight" and entry.in_sum2.shape == (3, 8)
    np.testing.assert_array_equal(entry.counts, [5, 0, 14])
    np.testing.assert_allclose(entry.in_sum2[0], (x0.double() ** 2).sum(0), rtol=1e-6)
    np.testing.assert_allclose(entry.in_sum2[2], (x2.double() ** 2).sum((0, 1)), rtol=1e-6)
    assert not entry.in_sum2[1].any()
    from nntrtool.imatrix.collect import _never_activated

    assert _never_activated([entry]) == ["blk.0.ffn_up_exps.weight (experts 1)"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_leaves_no_matrix(model_dir, text_file, tmp_path, sig):
    from faults import INTERRUPTED, cli, expected_status, interrupt_when, one_line

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = cli("imatrix", model_dir, "--text", text_file, "-o", out_dir / "i.gguf")
    argv += ["--ctx", str(CTX)]
    proc, stderr, sent = interrupt_when(argv, lambda: True, sig, 2.0)
    if not sent:  # it finished first: the matrix and nothing else
        assert proc.returncode == 0 and sorted(p.name for p in out_dir.iterdir()) == ["i.gguf"]
        return
    assert proc.returncode == expected_status(sig), stderr
    assert one_line(stderr) == INTERRUPTED
    assert list(out_dir.iterdir()) == []
