"""`export --target nntrainer` with Q4_K and F16 linear layers (and Q4_0 from other types):
the folder read back by ``tests/nntrainer_reader.py`` and run in transformers against the
weights the folder should hold, computed here from ggml's own quantizer and the gguf package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ggml_oracle as oracle
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from nntrainer_reader import deinterleave_q4_k, read_folder
from safetensors.numpy import load_file
from test_export import _save_model, check_export, write_nntr
from test_q4_k_x8 import ggml_q4_k, ggml_repack_q4_k_8

from nntrtool.errors import UsageError
from nntrtool.export import export_nntr
from nntrtool.export.nntrainer import Q4_K_OFFER


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {
        "qwen3_tied": _save_model(root / "qwen3_tied", "qwen3", True),
        "llama_untied": _save_model(root / "llama_untied", "llama", False, seed=2),
    }


def _fc(name: str) -> bool:
    return name.endswith("_proj.weight") or name == "lm_head.weight"


def _q4_k_values(w: np.ndarray) -> np.ndarray:
    return gguf_dequantize(ggml_q4_k(w), GGMLQuantizationType.Q4_K).reshape(w.shape)


def _nntr(tmp: Path, src: Path, types: dict[str, str]) -> tuple[Path, dict, dict]:
    config = json.loads((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    path = tmp / "model.nntr"
    return path, write_nntr(path, config, state, types, source=src), config


def test_reader_undoes_ggml_q4_k_repack():
    """The reader itself, against ggml: its de-interleave of ggml's C repack is the plain rows."""
    x = np.random.default_rng(5).standard_normal((24, 512)).astype(np.float32)
    plain = ggml_q4_k(x)
    packed = ggml_repack_q4_k_8(plain)
    assert not np.array_equal(packed, plain)
    np.testing.assert_array_equal(deinterleave_q4_k(packed.reshape(-1), 24, 512), plain)


@pytest.mark.parametrize("model", ["llama_untied", "qwen3_tied"])
def test_q4_k_from_f32(sources, tmp_path, model):
    src = sources[model]
    nntr, stored, config = _nntr(tmp_path, src, {})
    out = tmp_path / "out"
    result = export_nntr(nntr, out, linear_type="q4_k")
    ref = {k: (_q4_k_values(v) if _fc(k) else v) for k, v in stored.items()}
    check_export(out, "x86", src, ref, exact=False)

    cfg = json.loads((out / "nntr_config.json").read_text())
    assert cfg["model_tensor_type"] == "Q4_K-FP32" and cfg["embedding_dtype"] == "FP32"
    assert cfg.get("lmhead_dtype") == (None if config["tie_word_embeddings"] else "Q4_K")
    # every Q4_K tensor starts with the qscheme value 3 (Q4_Kx8), little-endian
    blob = (out / cfg["model_file_name"]).read_bytes()
    offset = 0
    for t in result.plan.tensors:
        if t.out_type == "q4_k_x8":
            assert blob[offset : offset + 2] == b"\x03\x00"
            assert t.nbytes == 2 + t.numel // 256 * 144
        offset += t.nbytes
    assert any(n.startswith("requantized to q4_k from f32 (lossy)") for n in result.plan.notes)


def test_q4_k_from_q6_k_layers_keeps_the_q6_k_embedding(sources, tmp_path):
    src = sources["llama_untied"]
    nntr, stored, _ = _nntr(
        tmp_path, src, {"linear": "q6_k", "lm_head": "q6_k", "embedding": "q6_k"}
    )
    out = tmp_path / "out"
    result = export_nntr(nntr, out, linear_type="q4_k")
    ref = {k: (_q4_k_values(v) if _fc(k) else v) for k, v in stored.items()}
    check_export(out, "x86", src, ref, exact=False)
    cfg = json.loads((out / "nntr_config.json").read_text())
    assert (cfg["model_tensor_type"], cfg["embedding_dtype"]) == ("Q4_K-FP32", "Q6_K")
    (note,) = result.plan.notes
    assert note.startswith("requantized to q4_k from q6_k (lossy): 15 tensor(s)")


@pytest.mark.parametrize(("emb", "emb_dtype"), [("q6_k", "Q6_K"), ("q4_k", "FP32")])
def test_a_q4_k_m_file_keeps_its_q4_k_blocks_and_requantizes_the_rest(
    sources, tmp_path, emb, emb_dtype
):
    """Q4_K layers are carried over block for block; Q6_K ones (as in a Q4_K_M file) become
    Q4_K from their values, named as lossy; a Q6_K embedding stays, a Q4_K one (which the
    runtime cannot read) is dequantized to F32 without loss."""
    src = sources["llama_untied"]
    types = {"linear": "q4_k", "down_proj": "q6_k", "lm_head": "q6_k", "embedding": emb}
    nntr, stored, _ = _nntr(tmp_path, src, types)
    out = tmp_path / "out"
    result = export_nntr(nntr, out)  # no --linear-type: the Q4_K layers decide
    ref = {
        k: (_q4_k_values(v) if k.endswith("down_proj.weight") or k == "lm_head.weight" else v)
        for k, v in stored.items()
    }
    check_export(out, "x86", src, ref, exact=False)
    cfg = json.loads((out / "nntr_config.json").read_text())
    assert (cfg["model_tensor_type"], cfg["embedding_dtype"], cfg["lmhead_dtype"]) == (
        "Q4_K-FP32",
        emb_dtype,
        "Q4_K",
    )
    notes = result.plan.notes
    assert notes[-1].startswith("requantized to q4_k from q6_k (lossy): 3 tensor(s)")
    widened = "dequantized to f32 from q4_k (lossless): 1 tensor(s), model.embed_tokens.weight"
    assert notes[:-1] == ([widened] if emb == "q4_k" else [])
    kept = [t for t in result.plan.tensors if t.slot.name.endswith("q_proj.weight")]
    assert kept and all(t.requant_from is None for t in kept)
    # the kept blocks are the file's own bytes, interleaved
    from nntrtool.format import NntrFile

    blob = (out / cfg["model_file_name"]).read_bytes()
    offset = 0
    with NntrFile(nntr) as nf:
        for t in result.plan.tensors:
            if t in kept:
                rows, cols = t.slot.shape
                packed = np.frombuffer(blob[offset + 2 : offset + t.nbytes], dtype=np.uint8)
                plain = deinterleave_q4_k(packed, rows, cols)
                assert plain.tobytes() == np.asarray(nf.raw(t.slot.name)).tobytes()
            offset += t.nbytes


def test_f16_from_f32_keeps_the_embedding_f32(sources, tmp_path):
    src = sources["llama_untied"]
    nntr, stored, _ = _nntr(tmp_path, src, {})
    out = tmp_path / "out"
    result = export_nntr(nntr, out, linear_type="f16")
    ref = {k: (v.astype(np.float16).astype(np.float32) if _fc(k) else v) for k, v in stored.items()}
    check_export(out, "x86", src, ref, exact=False)
    cfg = json.loads((out / "nntr_config.json").read_text())
    assert (cfg["model_tensor_type"], cfg["embedding_dtype"], cfg["lmhead_dtype"]) == (
        "FP16-FP32",
        "FP32",
        "FP16",
    )
    assert any(
        "-Denable-fp16=true" in n and "on x86" in n and "stays FP32" in n for n in result.plan.notes
    )
    # the half values are written transposed, [in, out], with no prefix
    q = next(t for t in result.plan.tensors if t.slot.name.endswith("q_proj.weight"))
    assert (q.out_type, q.transposed, q.prefix) == ("f16", True, 0)


def test_q4_0_from_q8_0_layers(sources, tmp_path):
    src = sources["qwen3_tied"]
    nntr, stored, _ = _nntr(tmp_path, src, {"linear": "q8_0"})
    out = tmp_path / "out"
    result = export_nntr(nntr, out, linear_type="q4_0")

    def q4_0(w):
        return oracle.ggml_dequantize(oracle.ggml_quantize(w, "q4_0"), "q4_0", w.shape[1])

    ref = {k: (q4_0(v).reshape(v.shape) if _fc(k) else v) for k, v in stored.items()}
    check_export(out, "x86", src, ref, exact=False)
    assert json.loads((out / "nntr_config.json").read_text())["model_tensor_type"] == "Q4_0-FP32"
    assert result.plan.notes[0].startswith("requantized to q4_0 from q8_0 (lossy)")


def _small_model(tmp: Path, intermediate: int) -> Path:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 512,
        "hidden_size": 256,
        "intermediate_size": intermediate,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
    }
    rng = np.random.default_rng(0)
    shapes = {
        "model.embed_tokens.weight": (512, 256),
        "model.layers.0.input_layernorm.weight": (256,),
        "model.layers.0.self_attn.q_proj.weight": (256, 256),
        "model.layers.0.self_attn.k_proj.weight": (128, 256),
        "model.layers.0.self_attn.v_proj.weight": (128, 256),
        "model.layers.0.self_attn.o_proj.weight": (256, 256),
        "model.layers.0.post_attention_layernorm.weight": (256,),
        "model.layers.0.mlp.up_proj.weight": (intermediate, 256),
        "model.layers.0.mlp.gate_proj.weight": (intermediate, 256),
        "model.layers.0.mlp.down_proj.weight": (256, intermediate),
        "model.norm.weight": (256,),
    }
    state = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    path = tmp / "model.nntr"
    write_nntr(path, config, state, {})
    return path


@pytest.mark.parametrize(
    ("intermediate", "first", "offer"),
    [
        (320, "mlp.down_proj.weight (256x320)", "q4_0 or f16 or f32"),  # in % 256
        (324, "mlp.up_proj.weight (324x256) and 2 more", "f16 or f32"),  # out % 8, Q4_0 too
    ],
)
def test_a_model_q4_k_cannot_hold_is_refused_with_what_fits(tmp_path, intermediate, first, offer):
    nntr = _small_model(tmp_path, intermediate)
    out = tmp_path / "out"
    with pytest.raises(UsageError) as info:
        export_nntr(nntr, out, linear_type="q4_k")
    message = str(info.value)
    assert "\n" not in message and "does not fit nntrainer's Q4_K" in message
    assert message.startswith(f"model.layers.0.{first} does not fit")
    assert message.endswith(f"--linear-type {offer} fits this model")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model.nntr"]


def test_f16_refuses_values_beyond_its_range(tmp_path):
    nntr = _small_model(tmp_path, 512)
    nf_state = {}  # rewrite with one huge weight
    from nntrtool.format import NntrFile

    with NntrFile(nntr) as nf:
        config = dict(nf.config)
        for t in nf.tensors:
            nf_state[t.name] = np.array(nf.raw(t.name)).view(np.float32).reshape(t.shape)
    config.pop("nntrtool", None)
    nf_state["model.layers.0.self_attn.q_proj.weight"][3, 5] = 1e6
    nntr.unlink()
    write_nntr(nntr, config, nf_state, {})
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=r"q_proj.weight holds values beyond float16's range"):
        export_nntr(nntr, out, linear_type="f16")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model.nntr"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nntrtool", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_linear_type(sources, tmp_path):
    nntr, _, _ = _nntr(tmp_path, sources["qwen3_tied"], {"linear": "q6_k", "embedding": "q6_k"})
    done = _cli("export", str(nntr), str(tmp_path / "out"), "--linear-type", "q4_k")
    assert done.returncode == 0, done.stderr
    assert "note: requantized to q4_k from q6_k (lossy)" in done.stdout
    assert "linear Q4_K" in done.stdout
    bad = _cli("export", str(nntr), str(tmp_path / "bad"), "--linear-type", "q5_k")
    assert bad.returncode == 2 and "unknown --linear-type 'q5_k'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("qtype", ["q4_k", "f16"])
def test_convert_target_nntrainer_q4_k_and_f16(sources, tmp_path, capsys, qtype):
    """`convert --quant-type q4_k|f16 --target nntrainer` is convert then export in that type."""
    from test_export import _run_cli

    src = sources["llama_untied"]
    short = tmp_path / "short"
    args = ["convert", str(src), str(short), "--target", "nntrainer", "--quant-type", qtype]
    assert _run_cli(args) == 0
    out = capsys.readouterr().out
    assert f"linear {'Q4_K' if qtype == 'q4_k' else 'FP16'}" in out and "embedding Q6_K" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short"]

    nntr = tmp_path / "long.nntr"
    conv = ["convert", str(src), str(nntr), "--quant-type", "f32", "--type", "embed_tokens=q6_k"]
    assert _run_cli([*conv, "--quiet"]) == 0
    long = tmp_path / "long"
    assert _run_cli(["export", str(nntr), str(long), "--linear-type", qtype, "--quiet"]) == 0
    a, b = (json.loads((d / "nntr_config.json").read_text()) for d in (short, long))
    assert (short / a["model_file_name"]).read_bytes() == (long / b["model_file_name"]).read_bytes()
    assert a["model_file_name"] == f"short-{qtype}-x86.bin"
    got = read_folder(short, "x86").state_dict
    w = load_file(str(src / "model.safetensors"))["model.layers.1.mlp.down_proj.weight"]
    want = _q4_k_values(w) if qtype == "q4_k" else w.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got["model.layers.1.mlp.down_proj.weight"], want)


def test_convert_target_nntrainer_makes_q4_k_by_default_where_it_fits(sources, tmp_path):
    """Without --quant-type, `convert --target nntrainer` writes what --quant-type q4_k writes."""
    from test_export import _run_cli

    src = sources["llama_untied"]
    default, explicit = tmp_path / "default", tmp_path / "explicit"
    assert _run_cli(["convert", str(src), str(default), "--target", "nntrainer", "-q"]) == 0
    args = ["convert", str(src), str(explicit), "--target", "nntrainer", "--quant-type", "q4_k"]
    assert _run_cli([*args, "-q"]) == 0
    a, b = (json.loads((d / "nntr_config.json").read_text()) for d in (default, explicit))
    assert a["model_tensor_type"] == "Q4_K-FP32" and a["embedding_dtype"] == "Q6_K"
    assert (default / a["model_file_name"]).read_bytes() == (
        explicit / b["model_file_name"]
    ).read_bytes()


@pytest.mark.parametrize(("isa", "linear"), [("x86", "q4_k"), ("arm", "q4_0")])
def test_convert_target_nntrainer_dry_run_shows_the_folder_s_types(sources, capsys, isa, linear):
    from test_export import _run_cli

    src = str(sources["llama_untied"])
    assert _run_cli(["convert", src, "--target", "nntrainer", "--isa", isa, "--dry-run"]) == 0
    cells = [[c.strip() for c in line.split("│")] for line in capsys.readouterr().out.splitlines()]
    types = {c[1]: c[4] for c in cells if len(c) == 8}  # tensor -> type column of the plan
    assert types["model.embed_tokens.weight"] == "q6_k"
    assert types["lm_head.weight"] == types["model.layers.1.mlp.down_proj.weight"] == linear


def test_convert_target_nntrainer_keeps_q4_0_where_q4_k_does_not_fit(tmp_path):
    from models import Q6K, make_hf_model
    from test_export import _run_cli

    src = make_hf_model(tmp_path / "hf", "llama", **dict(Q6K, intermediate=320))
    out = tmp_path / "out"
    assert _run_cli(["convert", str(src), str(out), "--target", "nntrainer", "-q"]) == 0
    cfg = json.loads((out / "nntr_config.json").read_text())
    assert cfg["model_tensor_type"] == "Q4_0-FP32" and cfg["embedding_dtype"] == "Q6_K"


@pytest.mark.parametrize(
    ("change", "isa", "want"),
    [
        ({}, "x86", "q4_k"),
        ({}, "arm", "q4_0"),  # Q4_K not run on ARM
        ({"intermediate_size": 320}, "x86", "q4_0"),  # down_proj: 320 input features
        ({"vocab_size": 500, "tie_word_embeddings": False}, "x86", "q4_0"),  # head: 500 rows
        ({"vocab_size": 500, "tie_word_embeddings": True}, "x86", "q4_k"),  # no head of its own
        ({"num_experts": 8}, "x86", "q4_0"),  # MoE experts in Q4_K not run
        ({"architectures": ["GemmaForCausalLM"], "model_type": "gemma"}, "x86", "q4_0"),
    ],
)
def test_default_linear_type(sources, change, isa, want):
    from nntrtool.export.nntrainer import default_linear_type

    config = json.loads((sources["llama_untied"] / "config.json").read_text())
    assert default_linear_type({**config, **change}, isa) == want


def test_a_q4_0_folder_that_fits_q4_k_says_so(sources, tmp_path):
    nntr, _, _ = _nntr(tmp_path, sources["qwen3_tied"], {"linear": "q4_0"})
    result = export_nntr(nntr, tmp_path / "out")
    assert result.plan.notes == [Q4_K_OFFER]


def test_a_q4_0_folder_that_does_not_fit_q4_k_says_nothing(tmp_path):
    nntr = _small_model(tmp_path, 320)  # down_proj has 320 input features
    nf_types = {"linear": "q4_0"}
    from nntrtool.format import NntrFile

    with NntrFile(nntr) as nf:
        config = {k: v for k, v in nf.config.items() if k != "nntrtool"}
        state = {
            t.name: np.array(nf.raw(t.name)).view(np.float32).reshape(t.shape) for t in nf.tensors
        }
    nntr.unlink()
    write_nntr(nntr, config, state, nf_types)
    result = export_nntr(nntr, tmp_path / "out")
    assert result.plan.fc_dtype == "Q4_0" and result.plan.notes == []


def test_q4_k_from_repacked_q4_0_layers(sources, tmp_path):
    """Values of interleaved Q4_0 layers are read through their layout before requantizing."""
    src = sources["qwen3_tied"]
    config = json.loads((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    nntr = tmp_path / "model.nntr"
    stored = write_nntr(nntr, config, state, {"linear": "q4_0"}, repack="q4_0_8", source=src)
    out = tmp_path / "out"
    result = export_nntr(nntr, out, linear_type="q4_k")
    ref = {k: (_q4_k_values(v) if _fc(k) else v) for k, v in stored.items()}
    check_export(out, "x86", src, ref, exact=False)
    assert result.plan.notes[0].startswith("requantized to q4_k from q4_0 (lossy)")
