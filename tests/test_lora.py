"""``--lora``: PEFT adapters merged while converting, checked against PEFT's own merge_and_unload.

Adapters are made with PEFT itself (get_peft_model, random lora_B and embedding factors, which
PEFT initialises to zero, save_pretrained) on the small models tests/models.py builds, and every
merged tensor is compared with the float32 merge of the same base and adapter by PEFT.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from models import Q6K, cache_model, make_hf_model  # noqa: E402

from nntrtool.cli.app import main  # noqa: E402
from nntrtool.errors import SourceError, UsageError  # noqa: E402
from nntrtool.format import NntrFile  # noqa: E402
from nntrtool.quant import quantize  # noqa: E402
from nntrtool.sources import open_source  # noqa: E402
from nntrtool.sources.lora import AdapterSpec, adapter_specs  # noqa: E402
from nntrtool.tensors.transforms import DerivedTensor  # noqa: E402

# ---- helpers --------------------------------------------------------------------------------


def make_adapter(base: Path, out: Path, *, seed: int = 0, safe: bool = True, **config) -> Path:
    """A PEFT adapter of ``base`` with random weights everywhere, saved in ``out``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_type = config.pop("peft_config", None)
    pm = get_peft_model(model, peft_type or LoraConfig(**config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if any(k in name for k in ("lora_B", "lora_embedding", "modules_to_save", "ia3_")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    pm.save_pretrained(out, safe_serialization=safe)
    return out


def peft_merge(base: Path, adapters: list[tuple[Path, float]]) -> dict[str, np.ndarray]:
    """PEFT's float32 ``merge_and_unload`` of ``adapters`` (path, scale) on ``base``, in order."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    names = [f"a{i}" for i in range(len(adapters))]
    pm = PeftModel.from_pretrained(model, adapters[0][0], adapter_name=names[0])
    for name, (path, _) in zip(names[1:], adapters[1:], strict=True):
        pm.load_adapter(path, adapter_name=name)
    for name, (_, scale) in zip(names, adapters, strict=True):
        if scale != 1.0:
            for m in pm.modules():
                if isinstance(m, LoraLayer):
                    m.set_scale(name, scale)
    merged = pm.merge_and_unload(adapter_names=names)
    return {k: v.detach().numpy().copy() for k, v in merged.state_dict().items()}


def merged_source(base: Path, adapters: list[tuple[Path, float]]) -> dict[str, np.ndarray]:
    """Every tensor of ``base`` opened with ``adapters``, read whole as float32."""
    specs = [AdapterSpec(str(p), s) for p, s in adapters]
    with open_source(base, adapters=specs) as src:
        return {t.name: np.array(t.read_f32()).reshape(t.shape) for t in src.tensors}


def assert_matches_peft(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    for name, value in ours.items():
        np.testing.assert_allclose(value, ref[name], rtol=2e-6, atol=2e-6, err_msg=name)


def run(argv: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ex:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return (ex.value.code if isinstance(ex.value.code, int) else 1), out, err


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[nntrtool]")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_hf_model(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def adapter(llama, tmp_path_factory) -> Path:
    """q/v projections, the embeddings (lora_embedding_A/B) and a whole lm_head."""
    return make_adapter(
        llama,
        tmp_path_factory.mktemp("ad") / "ad",
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "embed_tokens"],
        modules_to_save=["lm_head"],
    )


# ---- the merge equals PEFT's ------------------------------------------------------------------

CONFIGS = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "rslora": dict(r=8, lora_alpha=16, use_rslora=True, target_modules="all-linear"),
    "patterns": dict(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "up_proj", "down_proj"],
        rank_pattern={"down_proj": 2, "layers.1.self_attn.q_proj": 6},
        alpha_pattern={"up_proj": 3},
    ),
    "embedding": dict(
        r=4, lora_alpha=4, target_modules=["embed_tokens", "o_proj"], modules_to_save=["lm_head"]
    ),
}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_merge_equals_peft(llama, tmp_path, kind):
    ad = make_adapter(llama, tmp_path / "ad", seed=3, **CONFIGS[kind])
    ours = merged_source(llama, [(ad, 1.0)])
    ref = peft_merge(llama, [(ad, 1.0)])
    assert_matches_peft(ours, ref)
    base = merged_source(llama, [])
    changed = {n for n in ours if not np.array_equal(ours[n], base[n])}
    assert changed == {n for n in ref if n in base and not np.array_equal(ref[n], base[n])}
    assert changed  # the adapter did something


def test_lora_bias_and_bin_adapter(hf_model, tmp_path):
    """lora_bias adds the lora_B bias to the layer's bias; adapter_model.bin loads weights-only."""
    qwen = hf_model("qwen2")  # q/k/v projections have biases
    ad = make_adapter(
        qwen,
        tmp_path / "ad",
        safe=False,
        r=4,
        lora_alpha=8,
        lora_bias=True,
        target_modules=["q_proj", "k_proj"],
    )
    assert (ad / "adapter_model.bin").is_file()
    ours = merged_source(qwen, [(ad, 1.0)])
    assert_matches_peft(ours, peft_merge(qwen, [(ad, 1.0)]))
    base = merged_source(qwen, [])
    assert not np.array_equal(
        ours["model.layers.0.self_attn.q_proj.bias"], base["model.layers.0.self_attn.q_proj.bias"]
    )


def test_fan_in_fan_out_gpt2(tmp_path):
    """GPT-2's Conv1D stores weights [in, out]: the update is (B @ A).T."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = tmp_path / "gpt2"
    cfg = GPT2Config(n_embd=64, n_layer=1, n_head=4, vocab_size=256, n_positions=64)
    GPT2LMHeadModel(cfg).save_pretrained(base)
    ad = make_adapter(
        base,
        tmp_path / "ad",
        r=4,
        lora_alpha=8,
        fan_in_fan_out=True,
        target_modules=["c_attn", "c_fc"],
    )
    ours = merged_source(base, [(ad, 1.0)])
    assert_matches_peft(ours, peft_merge(base, [(ad, 1.0)]))


def test_scales_and_several_adapters_add_up_in_order(llama, adapter, tmp_path):
    second = make_adapter(
        llama, tmp_path / "b", seed=5, r=2, lora_alpha=2, target_modules=["q_proj", "down_proj"]
    )
    ours = merged_source(llama, [(adapter, 0.5), (second, 2.0)])
    ref = peft_merge(llama, [(adapter, 0.5), (second, 2.0)])
    assert_matches_peft(ours, ref)


def test_tied_model_merges_into_the_shared_weight(hf_model, tmp_path):
    """A LoRA on the head of a tied model changes the one weight PEFT shares with the embeddings."""
    gemma = hf_model("gemma", tie=True)
    ad = make_adapter(
        gemma, tmp_path / "ad", r=4, lora_alpha=8, target_modules=["lm_head", "q_proj"]
    )
    ours = merged_source(gemma, [(ad, 1.0)])
    ref = peft_merge(gemma, [(ad, 1.0)])
    assert_matches_peft(ours, ref)
    base = merged_source(gemma, [])
    assert not np.array_equal(ours["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_rows_do_not_depend_on_the_chunk(llama, adapter):
    """convert and verify cut tensors differently: any row range reads the same bits."""
    with open_source(llama, adapters=[AdapterSpec(str(adapter))]) as src:
        for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"):
            t = src.tensor(name)
            assert isinstance(t, DerivedTensor) and t.dtype == "F32"
            whole = np.array(t.read())
            for start, stop in [(0, 1), (1, 7), (61, 69), (5, t.rows)]:
                stop = min(stop, t.rows)
                assert np.array_equal(t.read(start, stop), whole[start:stop]), (name, start)


def test_plan_counts_the_base_bytes_and_notes_the_adapter(hf_model, tmp_path):
    from nntrtool.convert import ConvertOptions, plan_conversion

    base = hf_model("llama", dtype="bf16")
    ad = make_adapter(base, tmp_path / "ad", r=4, lora_alpha=8, target_modules=["q_proj"])
    plain = plan_conversion(base, ConvertOptions())
    merged = plan_conversion(base, ConvertOptions(adapters=(AdapterSpec(str(ad), 2.0),)))
    assert merged.source_bytes == plain.source_bytes  # bf16 on disk, not the f32 it becomes
    q = merged.tensor("model.layers.0.self_attn.q_proj.weight")
    assert q.source_dtype == "F32" and q.note == f"lora {ad} (scale 4)"
    assert merged.tensor("model.layers.0.self_attn.k_proj.weight").note == ""
    assert merged.to_config()["tensors"][q.name]["note"] == q.note


# ---- convert, inspect, verify, export ---------------------------------------------------------


def test_convert_f32_is_the_merge_and_metadata_records_the_adapter(
    llama, adapter, tmp_path, capsys
):
    out = tmp_path / "m.nntr"
    code, stdout, _ = run(
        ["convert", llama, out, "--lora", adapter, "--lora-scale", "1.5", "--quant-type", "f32"],
        capsys,
    )
    assert code == 0
    assert f"lora {adapter} (scale 1.5, r 4, alpha 8): merged into 5 tensors, replaced 2" in stdout
    assert f"model.layers.*.self_attn.q_proj.weight (x2): lora {adapter} (scale 3)" in stdout
    ref = peft_merge(llama, [(adapter, 1.5)])
    ours = merged_source(llama, [(adapter, 1.5)])
    with NntrFile(out) as f:
        for e in f.tensors:
            got = np.array(f.array(e.name)).reshape(e.shape)
            assert np.array_equal(got, ours[e.name]), e.name  # bit for bit what verify reads
            np.testing.assert_allclose(got, ref[e.name], rtol=2e-6, atol=2e-6)
        rec = f.config["nntrtool"]["source"]["adapters"]
    sha = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert rec[0]["name"] == str(adapter) and rec[0]["sha256"] == sha and rec[0]["scale"] == 1.5

    code, stdout, _ = run(["inspect", out], capsys)
    assert code == 0 and f"lora: {adapter} (scale 1.5, sha256 {sha[:12]}" in stdout
    code, stdout, _ = run(["inspect", out, "--json"], capsys)
    assert json.loads(stdout)["summary"]["adapters"] == [
        f"{adapter} (scale 1.5, sha256 {sha[:12]}…)"
    ]

    code, stdout, _ = run(
        ["verify", out, llama, "--lora", adapter, "--lora-scale", "1.5", "--json"], capsys
    )
    assert code == 0, stdout
    code, _, err = run(["verify", out, llama, "--quiet"], capsys)
    assert code == 1  # the unmerged source differs, and the note says what to pass
    assert f"--lora {adapter} --lora-scale 1.5" in err


@pytest.mark.parametrize("qtype", ["q4_0", "q8_0"])
def test_quantized_output_is_the_quantized_merge(llama, adapter, tmp_path, capsys, qtype):
    out = tmp_path / "m.nntr"
    assert (
        run(["convert", llama, out, "--lora", adapter, "--quant-type", qtype, "--quiet"], capsys)[0]
        == 0
    )
    ours = merged_source(llama, [(adapter, 1.0)])
    ref = peft_merge(llama, [(adapter, 1.0)])
    same_floats = 0
    with NntrFile(out) as f:
        for e in f.tensors:
            if e.display_type != qtype:
                continue
            raw = np.array(f.raw(e.name)).tobytes()
            assert raw == quantize(ours[e.name], qtype).tobytes(), e.name
            # Where this arithmetic gave PEFT's floats bit for bit, the bytes are PEFT's quantized.
            if np.array_equal(ours[e.name], ref[e.name]):
                same_floats += 1
                assert raw == quantize(ref[e.name], qtype).tobytes(), e.name
    assert same_floats > 0


def test_verify_logits_runs_the_merged_model(llama, adapter, tmp_path, capsys):
    out = tmp_path / "m.nntr"
    assert (
        run(["convert", llama, out, "--lora", adapter, "--quant-type", "q8_0", "--quiet"], capsys)[
            0
        ]
        == 0
    )
    code, stdout, _ = run(["verify", out, llama, "--lora", adapter, "--logits", "--json"], capsys)
    assert code == 0
    logits = json.loads(stdout)["logits"]
    assert logits["kl_mean"] < 1e-2 and logits["top1_agreement"] > 0.9


def test_dry_run_shows_each_changed_tensor(llama, adapter, capsys):
    code, stdout, _ = run(
        ["convert", llama, "--dry-run", "--lora", adapter, "--lora-scale", "0.5"], capsys
    )
    assert code == 0
    assert "lora " in stdout and "(scale 1)" in stdout  # 0.5 * alpha 8 / r 4
    assert "modules_to_save" in stdout and "merged into 5 tensors" in stdout


def test_export_nntrainer_of_a_merged_model(tmp_path, capsys):
    from nntrainer_reader import read_folder

    base = make_hf_model(tmp_path / "qwen3", "qwen3", **Q6K)
    ad = make_adapter(
        base, tmp_path / "ad", r=8, lora_alpha=16, target_modules=["q_proj", "down_proj"]
    )
    folder = tmp_path / "out"
    code, _, err = run(
        ["convert", base, folder, "--lora", ad, "--target", "nntrainer", "--quiet"], capsys
    )
    assert code == 0, err
    got = read_folder(folder, "x86").state_dict
    ref = peft_merge(base, [(ad, 1.0)])
    plain = merged_source(base, [])
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        w = got[name].reshape(ref[name].shape)
        rel = np.linalg.norm(w - ref[name]) / np.linalg.norm(ref[name])
        far = np.linalg.norm(w - plain[name]) / np.linalg.norm(plain[name])
        assert rel < 0.18 < far, name


def test_adapter_from_the_offline_hub_cache(llama, adapter, offline_hub, capsys):
    files = {n: adapter / n for n in ("adapter_config.json", "adapter_model.safetensors")}
    cache_model(offline_hub, "someone/tiny-lora", files, "c" * 40)
    out = Path("m.nntr")
    assert run(["convert", llama, out, "--lora", "someone/tiny-lora", "--quiet"], capsys)[0] == 0
    with NntrFile(out) as f:
        rec = f.config["nntrtool"]["source"]["adapters"][0]
    assert rec["repo_id"] == "someone/tiny-lora" and rec["revision"] == "c" * 40
    cache_model(offline_hub, "someone/tiny-lora", files, "d" * 40, ref="v2")
    out2 = Path("v2.nntr")
    assert (
        run(["convert", llama, out2, "--lora", "someone/tiny-lora@v2", "--quiet"], capsys)[0] == 0
    )
    with NntrFile(out2) as f:
        assert f.config["nntrtool"]["source"]["adapters"][0]["revision"] == "d" * 40
    code, _, err = run(["convert", llama, "x.nntr", "--lora", "someone/not-cached"], capsys)
    assert code == 2 and "cache" in error_line(err) and not Path("x.nntr").exists()


# ---- bad input: one line, exit 2, no output ---------------------------------------------------


def _broken(kind: str, llama: Path, adapter: Path, tmp: Path) -> Path:
    from peft import IA3Config, LoraConfig

    bad = tmp / kind
    if kind == "missing":
        return bad
    if kind == "ia3":
        return make_adapter(
            llama,
            bad,
            peft_config=IA3Config(
                target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]
            ),
        )
    if kind == "dora":
        return make_adapter(
            llama, bad, peft_config=LoraConfig(r=4, use_dora=True, target_modules=["q_proj"])
        )
    if kind == "other-model":
        other = make_hf_model(tmp / "wide", "llama", hidden=128, heads=4, kv_heads=2)
        return make_adapter(other, bad, r=4, target_modules=["q_proj"])
    if kind == "more-layers":
        other = make_hf_model(tmp / "deep", "llama", layers=3)
        return make_adapter(other, bad, r=4, target_modules=["q_proj"])
    bad.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (bad / name).write_bytes((adapter / name).read_bytes())
    if kind == "no-config":
        (bad / "adapter_config.json").unlink()
    elif kind == "no-weights":
        (bad / "adapter_model.safetensors").unlink()
    elif kind == "truncated":
        data = (bad / "adapter_model.safetensors").read_bytes()
        (bad / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    elif kind in ("wrong-rank", "bad-pattern", "zero-rank"):
        cfg = json.loads((bad / "adapter_config.json").read_text())
        if kind == "wrong-rank":
            cfg["r"] = 8
        elif kind == "bad-pattern":
            cfg["rank_pattern"] = {"q_proj(": 4}
        else:
            cfg["rank_pattern"] = {"q_proj": 0}
        (bad / "adapter_config.json").write_text(json.dumps(cfg))
    return bad


@pytest.mark.parametrize(
    "kind,words",
    [
        ("missing", "no such folder"),
        ("no-config", "no adapter_config.json"),
        ("no-weights", "adapter_model.safetensors or adapter_model.bin"),
        ("truncated", "truncated"),
        ("ia3", "IA3"),
        ("dora", "DoRA (use_dora)"),
        ("other-model", "do not fit"),
        ("more-layers", "model.layers.2.self_attn.q_proj.weight, which the model does not have"),
        ("wrong-rank", "rank 4 in its weights but 8"),
        ("bad-pattern", "rank_pattern key 'q_proj(' is not a regular expression"),
        ("zero-rank", "rank 0 for model.layers.0.self_attn.q_proj"),
    ],
)
def test_bad_adapters_are_one_line_exit_2_no_output(llama, adapter, tmp_path, capsys, kind, words):
    bad = _broken(kind, llama, adapter, tmp_path)
    capsys.readouterr()  # transformers' own loading output while making the adapter
    out = tmp_path / "out.nntr"
    code, _, err = run(["convert", llama, out, "--lora", bad], capsys)
    assert code == 2 and words in error_line(err), err
    assert not out.exists()
    with pytest.raises(SourceError):
        open_source(llama, adapters=[AdapterSpec(str(bad))])


@pytest.fixture(scope="module")
def moe(tmp_path_factory) -> Path:
    from moe_models import save_qwen3_moe

    return save_qwen3_moe(tmp_path_factory.mktemp("moe") / "m", experts=4)


def _expert_adapter(folder: Path, experts: list[int], target: object, rows: int = 64) -> Path:
    """A LoRA adapter (PEFT's files) of layer 0's expert gate projections ``experts``."""
    from safetensors.numpy import save_file

    folder.mkdir()
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": target}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    tensors = {}
    for e in experts:
        key = f"base_model.model.model.layers.0.mlp.experts.{e}.gate_proj"
        tensors[f"{key}.lora_A.weight"] = rng.standard_normal((2, 64)).astype(np.float32)
        tensors[f"{key}.lora_B.weight"] = rng.standard_normal((rows, 2)).astype(np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize(
    "experts,target,words",
    [
        (list(range(8)), ["gate_proj"], "adapts 8 experts of model.layers.0.mlp.experts.*"),
        ([0, 1], ["gate_proj"], "adapts 2 experts of model.layers.0.mlp.experts.*.gate_proj"),
        ([0, 1, 2, 3], ["gate_proj"], None),
        ([0, 1], r".*experts\.[01]\.gate_proj", None),  # a pattern may pick some experts
    ],
)
def test_adapter_expert_count_must_match_the_model(moe, tmp_path, capsys, experts, target, words):
    ad = _expert_adapter(tmp_path / "ad", experts, target)
    out = tmp_path / "o.nntr"
    code, _, err = run(["convert", moe, out, "--lora", ad, "--quant-type", "f32"], capsys)
    if words is None:
        assert code == 0, err
        return
    line = error_line(err)
    assert code == 2 and words in line and "but the model has 4" in line, line
    assert str(ad) in line and "use it with the model it was trained on" in line
    assert not out.exists()


def test_adapter_shapes_that_do_not_fit_an_expert(moe, tmp_path, capsys):
    ad = _expert_adapter(tmp_path / "ad", [0, 1, 2, 3], ["gate_proj"], rows=96)
    code, _, err = run(["convert", moe, tmp_path / "o.nntr", "--lora", ad], capsys)
    line = error_line(err)
    assert code == 2 and str(ad) in line and "[96, 2]" in line and "[64, 64]" in line, line
    assert "model.layers.0.mlp.experts.0.gate_proj" in line
    assert "use it with the model it was trained on" in line
    assert not (tmp_path / "o.nntr").exists()


def test_lora_scale_needs_one_per_adapter(llama, adapter, tmp_path, capsys):
    code, _, err = run(
        [
            "convert",
            llama,
            tmp_path / "o.nntr",
            "--lora",
            adapter,
            "--lora",
            adapter,
            "--lora-scale",
            "2",
        ],
        capsys,
    )
    assert code == 2 and "one --lora-scale per --lora" in error_line(err)
    with pytest.raises(UsageError):
        adapter_specs([], [1.0])
    with pytest.raises(UsageError):
        AdapterSpec("x", math.inf)


def test_merge_out_of_range_is_stored_as_f32_or_refused(llama, adapter, tmp_path):
    """A huge --lora-scale gives finite merged values too large for q4_0's fp16 scales."""
    from faults import one_line, run_cli, snapshot

    from nntrtool.quant.api import dequantize

    base, ad = llama, adapter
    before = snapshot(base) | snapshot(ad)
    out = tmp_path / "o.nntr"
    argv = ["convert", base, out, "--lora", ad, "--lora-scale", "1e7", "--quant-type", "q4_0"]
    proc = run_cli(*argv)
    assert proc.returncode == 0, proc.stderr
    assert "model.layers.0.self_attn.q_proj.weight: values up to" in proc.stdout
    with NntrFile(out) as nf:
        assert nf.tensor("model.layers.0.self_attn.q_proj.weight").ttype.name == "f32"
        for e in nf.tensors:
            values = (
                dequantize(nf.array(e.name), e.ttype, e.shape, backend="numpy")
                if e.ttype.quantized
                else nf.array(e.name)
            )
            assert np.isfinite(values).all(), e.name
    proc = run_cli(*argv[:2], tmp_path / "s.nntr", *argv[3:], "--strict")
    assert proc.returncode == 2
    assert "too large for q4_0" in one_line(proc.stderr)
    assert not (tmp_path / "s.nntr").exists()
    assert snapshot(base) | snapshot(ad) == before
