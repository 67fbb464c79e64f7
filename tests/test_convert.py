"""The conversion pipeline end to end: stored bytes equal the quantizer's, for real model layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from models import (
    ODD,
    Q6K,
    cache_model,
    f32_to_bf16_bits,
    reference_tensors,
    write_safetensors,
)
from test_plan import SHAPES, write_model

from nntrtool.convert import ConvertOptions, convert
from nntrtool.format import NntrFile
from nntrtool.qtypes import F32, Q4_0, Q4_0_REPACKED, Q6_K, Q8_0
from nntrtool.quant import quantize, repack
from nntrtool.sources import open_source
from nntrtool.synthetic import make_synthetic_model


def expected_bytes(src_tensor, planned) -> np.ndarray:
    """What the file must hold for one tensor, computed independently with the numpy kernels."""
    x = src_tensor.read()
    if not planned.quantized:
        values = src_tensor.read_f32().reshape(-1)
        if planned.ttype.block_bytes == 2:  # F16
            values = values.astype(np.float16)
        return values.view(np.uint8)
    q = quantize(x, planned.quant_name, backend="numpy", source_dtype=src_tensor.dtype)
    if planned.layout is not None:
        q = repack(q, planned.layout.name)
    return q.reshape(-1)


def check_file_matches_source(src_path: Path, out: Path, report) -> None:
    """Every stored tensor equals the quantizer's output for its source tensor, byte for byte."""
    plan = report.plan
    with open_source(src_path) as src, NntrFile(out) as nf:
        assert nf.file_size == plan.predicted_size == out.stat().st_size
        stored = [e.name for e in nf.tensors]
        skipped = {name for name, _ in plan.skipped}
        assert stored == [t.name for t in src.tensors if t.name not in skipped]
        assert nf.config["nntrtool"]["tensors"].keys() == set(stored)
        for entry in nf.tensors:
            st = src.tensor(entry.name)
            planned = plan.tensor(entry.name)
            assert tuple(entry.shape) == tuple(st.shape)
            assert entry.ttype is planned.ttype and entry.layout == planned.layout
            assert nf.check(entry.name)
            want = expected_bytes(st, planned)
            got = nf.raw(entry.name)
            assert got.nbytes == want.nbytes, entry.name
            assert np.array_equal(got, want), f"{entry.name} differs from the quantizer's bytes"


CASES = [
    # (arch, build kwargs, quant type, repack)
    ("llama", dict(dtype="bf16"), "q4_0", None),
    ("qwen2", dict(dtype="f16"), "q4_0", "q4_0_8"),
    ("qwen3", dict(dtype="f32", tie=True), "q8_0", None),
    ("gemma", dict(dtype="bf16"), "q4_0", "q4_0_4"),
    ("llama", dict(dtype="bf16", **Q6K), "q6_k", None),
    ("qwen3", dict(dtype="f16", **Q6K), "q6_k", "q4_0_8"),
    ("llama", dict(dtype="f16", shard_size="100KB"), "q4_0", "q4_0_4x4"),
    ("llama", dict(dtype="bf16", **ODD), "q6_k", None),
]


@pytest.mark.parametrize(("arch", "kw", "qtype", "repack_format"), CASES)
def test_real_layouts_match_the_quantizer(hf_model, tmp_path, arch, kw, qtype, repack_format):
    src_path = hf_model(arch, **kw)
    out = tmp_path / "out.nntr"
    opts = ConvertOptions(quant_type=qtype, repack_format=repack_format)
    report = convert(src_path, out, opts)
    check_file_matches_source(src_path, out, report)
    plan = report.plan
    assert report.params == plan.params > 0
    assert report.file_size == out.stat().st_size
    section = NntrFile(out).config["nntrtool"]
    assert section["quant_type"] == qtype and section["repack_format"] == repack_format
    assert section["source"]["path"] == str(Path(src_path).resolve())
    # f32 tensors hold exactly the source values (checked with an independent reader)
    ref = reference_tensors(src_path)
    with NntrFile(out) as nf:
        for entry in nf.tensors:
            if entry.ttype is F32:
                want = ref[entry.name].astype(np.float32).reshape(entry.shape)
                assert np.array_equal(nf.array(entry.name).reshape(entry.shape), want)
    matrices = [t for t in plan.tensors if len(t.shape) == 2]
    assert matrices and all(t.quantized or t.fallback for t in matrices)
    assert all(len(t.shape) == 2 for t in plan.tensors if t.quantized)
    assert all(t.ttype is F32 for t in plan.tensors if len(t.shape) == 1)


def test_tied_models_store_the_head_once(hf_model, tmp_path):
    src = hf_model("gemma", dtype="bf16")  # Gemma ties by default
    with open_source(src) as s:
        names = [t.name for t in s.tensors]
    report = convert(src, tmp_path / "g.nntr", ConvertOptions())
    stored = [e.name for e in NntrFile(tmp_path / "g.nntr").tensors]
    assert report.plan.tied.tied
    assert "lm_head.weight" not in stored
    assert stored.count("model.embed_tokens.weight") == 1
    assert set(stored) <= set(names)
    cfg = NntrFile(tmp_path / "g.nntr").config
    assert cfg["nntrtool"]["tied"] is True
    assert cfg["nntrtool"]["tied_embedding"] == "model.embed_tokens.weight"


def test_untied_model_keeps_its_head(hf_model, tmp_path):
    src = hf_model("llama", dtype="bf16")
    convert(src, tmp_path / "l.nntr", ConvertOptions())
    nf = NntrFile(tmp_path / "l.nntr")
    assert "lm_head.weight" in nf and nf.config["nntrtool"]["tied"] is False


def test_pickle_checkpoint(hf_model, tmp_path):
    src = hf_model("llama", dtype="bf16", checkpoint=True)
    out = tmp_path / "ckpt.nntr"
    report = convert(src, out, ConvertOptions(repack_format="q4_0_8"))
    check_file_matches_source(src, out, report)
    assert NntrFile(out).config["nntrtool"]["source"]["kind"] in ("checkpoint", "folder")


def test_single_safetensors_file_with_config(hf_model, tmp_path):
    folder = hf_model("qwen2", dtype="bf16")
    out = tmp_path / "one.nntr"
    report = convert(
        folder / "model.safetensors", out, ConvertOptions(config=folder / "config.json")
    )
    check_file_matches_source(folder, out, report)
    assert NntrFile(out).config["model_type"] == "qwen2"


def test_fallbacks_and_overrides_in_the_file(tmp_path):
    src = write_model(tmp_path / "m")
    out = tmp_path / "o.nntr"
    opts = ConvertOptions(
        quant_type="q6_k",
        repack_format="q4_0_8",
        type_overrides=("q_proj=q4_0", "embed=q8_0"),
        keep_f32=("lm_head",),
    )
    report = convert(src, out, opts)
    check_file_matches_source(src, out, report)
    nf = NntrFile(out)
    types = {e.name: e.ttype for e in nf.tensors}
    assert types["model.layers.0.self_attn.q_proj.weight"] is Q4_0_REPACKED
    assert types["model.embed_tokens.weight"] is Q8_0
    assert types["lm_head.weight"] is F32
    assert types["model.layers.0.mlp.down_proj.weight"] is Q8_0
    assert types["model.layers.0.mlp.up_proj.weight"] is Q6_K
    assert types["model.layers.0.mlp.odd.weight"] is F32
    assert {n for n, _ in report.fallbacks} == {
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.mlp.odd.weight",
    }
    records = nf.config["nntrtool"]["tensors"]
    assert records["model.layers.0.mlp.down_proj.weight"]["type"] == "q8_0"
    assert "not a multiple of 256" in records["model.layers.0.mlp.down_proj.weight"]["reason"]
    assert records["model.layers.0.self_attn.q_proj.weight"]["type"] == "q4_0_8"


def test_unrepacked_q4_0_is_reported(tmp_path):
    src = write_model(tmp_path / "m")
    out = tmp_path / "o.nntr"
    report = convert(src, out, ConvertOptions(repack_format="q4_0_8"))
    check_file_matches_source(src, out, report)
    assert report.unrepacked == [
        (
            "model.layers.0.mlp.up_proj.weight",
            report.plan.tensor("model.layers.0.mlp.up_proj.weight").reason,
        )
    ]
    assert NntrFile(out).tensor("model.layers.0.mlp.up_proj.weight").ttype is Q4_0


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("qtype", ["q4_0", "q6_k", "q8_0"])
def test_tiny_chunks_and_backends_give_the_same_bytes(tmp_path, backend, qtype):
    """Chunk boundaries (multiples of 8 rows) and backends never change a byte."""
    shapes = [("a.weight", (72, 512)), ("b.weight", (40, 256)), ("c.weight", (5, 256))]
    src = write_model(tmp_path / "m", shapes, dtype="F16")
    big = tmp_path / "big.nntr"
    small = tmp_path / "small.nntr"
    repack_format = "q4_0_8" if qtype == "q4_0" else None
    convert(src, big, ConvertOptions(quant_type=qtype, repack_format=repack_format))
    report = convert(
        src,
        small,
        ConvertOptions(
            quant_type=qtype,
            repack_format=repack_format,
            backend=backend,
            threads=1,
            chunk_bytes=3000,
        ),
    )
    assert big.read_bytes() == small.read_bytes()
    check_file_matches_source(src, small, report)
    assert report.backend == backend and report.threads == 1


def test_dry_run_writes_nothing(tmp_path):
    src = write_model(tmp_path / "m")
    out = tmp_path / "never.nntr"
    report = convert(src, out, ConvertOptions(dry_run=True, quant_type="q6_k"))
    assert report.dry_run and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert report.plan.predicted_size > 0
    real = convert(src, out, ConvertOptions(quant_type="q6_k"))
    assert out.stat().st_size == report.plan.predicted_size
    assert real.plan.to_config() == report.plan.to_config()


def test_report_figures(tmp_path):
    src = write_model(tmp_path / "m")
    report = convert(src, tmp_path / "o.nntr", ConvertOptions())
    by_type = report.by_type
    assert set(by_type) == {"q4_0", "f32"}
    assert sum(n for n, _, _ in by_type.values()) == len(SHAPES)
    assert sum(p for _, p, _ in by_type.values()) == report.params
    assert report.source_bytes == 2 * report.params
    assert report.seconds > 0 and report.params_per_s > 0
    assert report.compression > 1


NAN_SHAPES = [
    ("model.embed_tokens.weight", (64, 64)),
    ("model.layers.0.self_attn.q_proj.weight", (64, 64)),
    ("model.layers.0.input_layernorm.weight", (64,)),
    ("model.layers.0.mlp.down_proj.weight", (64, 64)),
    ("lm_head.weight", (64, 64)),
]


def _nan_model(folder: Path, where: str, value: float) -> Path:
    """A bf16 model whose tensor ``where`` holds ``value`` at flat index size // 2 + 3."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    data = {}
    for name, shape in NAN_SHAPES:
        x = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if name == where:
            x.reshape(-1)[x.size // 2 + 3] = value
        data[name] = ("BF16", f32_to_bf16_bits(x))
    write_safetensors(folder / "model.safetensors", data)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


@pytest.mark.parametrize("qtype", ["q4_0", "q6_k"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_weight_is_refused(tmp_path, qtype, value):
    from nntrtool.errors import NonFiniteError

    where = "model.layers.0.mlp.down_proj.weight"
    src = _nan_model(tmp_path / "m", where, value)
    out = tmp_path / "o.nntr"
    with pytest.raises(NonFiniteError) as err:
        convert(src, out, ConvertOptions(quant_type=qtype))
    msg = str(err.value)
    pos = 64 * 64 // 2 + 3
    assert where in msg and f"row {pos // 64}, column {pos % 64}" in msg
    assert "--allow-nonfinite" in msg
    assert (err.value.row, err.value.col) == (pos // 64, pos % 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_allow_nonfinite_stores_f32(tmp_path):
    where = "model.layers.0.mlp.down_proj.weight"
    src = _nan_model(tmp_path / "m", where, float("nan"))
    out = tmp_path / "o.nntr"
    report = convert(src, out, ConvertOptions(allow_nonfinite=True, repack_format="q4_0_8"))
    nf = NntrFile(out)
    assert nf.tensor(where).ttype is F32
    assert np.isnan(nf.array(where)).sum() == 1
    assert [n for n, _ in report.nonfinite] == [where]
    assert "NaN" in report.nonfinite[0][1]
    assert nf.config["nntrtool"]["tensors"][where]["type"] == "f32"
    assert nf.tensor("model.layers.0.self_attn.q_proj.weight").ttype is Q4_0_REPACKED
    assert out.stat().st_size == report.plan.predicted_size
    check_file_matches_source(src, out, report)


def test_nonfinite_norm_is_refused_then_kept(tmp_path):
    from nntrtool.errors import NonFiniteError

    where = "model.layers.0.input_layernorm.weight"
    src = _nan_model(tmp_path / "m", where, float("inf"))
    with pytest.raises(NonFiniteError, match="input_layernorm"):
        convert(src, tmp_path / "o.nntr", ConvertOptions())
    assert not (tmp_path / "o.nntr").exists()
    report = convert(src, tmp_path / "o.nntr", ConvertOptions(allow_nonfinite=True))
    assert [n for n, _ in report.nonfinite] == [where]
    assert np.isinf(NntrFile(tmp_path / "o.nntr").array(where)).sum() == 1


def test_existing_output_needs_force(tmp_path):
    from nntrtool.errors import OutputExistsError, UsageError

    src = write_model(tmp_path / "m")
    out = tmp_path / "o.nntr"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--force"):
        convert(src, out, ConvertOptions())
    assert out.read_bytes() == b"keep me"
    with pytest.raises(UsageError, match="not an NNTR file"):
        convert(src, out, ConvertOptions(force=True))
    assert out.read_bytes() == b"keep me"
    out.write_bytes(b"NNTR an earlier output")
    convert(src, out, ConvertOptions(force=True))
    assert NntrFile(out).tensors


def test_not_enough_disk_space(tmp_path, monkeypatch):
    import shutil

    from nntrtool.errors import DiskFullError

    src = write_model(tmp_path / "m")
    real = shutil.disk_usage

    def tiny(path):
        u = real(path)
        return type(u)(u.total, u.used, 1000)

    monkeypatch.setattr(shutil, "disk_usage", tiny)
    with pytest.raises(DiskFullError, match="disk space"):
        convert(src, tmp_path / "o.nntr", ConvertOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_empty_and_scalar_tensors(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    write_safetensors(
        folder / "model.safetensors",
        {
            "s": np.array(3.5, np.float32),
            "e.weight": np.zeros((0, 64), np.float32),
            "w.weight": np.ones((8, 64), np.float16),
        },
    )
    (folder / "config.json").write_text(json.dumps({"model_type": "x"}))
    out = tmp_path / "o.nntr"
    report = convert(folder, out, ConvertOptions())
    nf = NntrFile(out)
    assert nf.tensor("s").shape == () and float(nf.array("s").reshape(-1)[0]) == 3.5
    assert "e.weight" not in nf  # the format has no empty tensors
    assert report.plan.skipped == [("e.weight", "empty tensor (shape [0, 64]): nothing to store")]
    assert nf.tensor("w.weight").ttype is Q4_0
    assert report.params == 1 + 0 + 8 * 64 and math.isfinite(report.params_per_s)


def test_hub_id_from_the_local_cache(hf_model, tmp_path, offline_hub):
    from nntrtool.errors import SourceError

    folder = hf_model("qwen3", dtype="bf16")
    commit = "c" * 40
    cache_model(offline_hub, "acme/tiny-qwen3", {f.name: f for f in folder.iterdir()}, commit)
    out = tmp_path / "hub.nntr"
    report = convert("acme/tiny-qwen3", out, ConvertOptions(quant_type="q8_0"))
    check_file_matches_source(folder, out, report)
    source = NntrFile(out).config["nntrtool"]["source"]
    assert source["kind"] == "hub" and source["repo_id"] == "acme/tiny-qwen3"
    assert source["revision"] == commit
    with pytest.raises(SourceError) as err:
        convert("acme/not-cached", tmp_path / "x.nntr", ConvertOptions())
    assert "acme/not-cached" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "x.nntr").exists()


MEMORY_CHILD = """
import json, sys
import numpy as np
from nntrtool.convert import ConvertOptions, convert
from nntrtool.quant import quantize

def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

quantize(np.zeros((8, 256), np.uint16), sys.argv[3], source_dtype="BF16")  # load the kernels
base = hwm()
report = convert(sys.argv[1], sys.argv[2], ConvertOptions(quant_type=sys.argv[3]))
print(json.dumps({"base": base, "peak": hwm(), "source": report.source_bytes}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("qtype", ["q4_0", "q6_k"])
def test_memory_does_not_grow_with_the_model(tmp_path, qtype):
    """Peak memory over the process's start-up stays far below the model's size: source pages
    are dropped after each chunk and nothing holds a whole tensor."""
    import subprocess
    import sys

    src = make_synthetic_model(
        tmp_path / "m", dtype="bf16", hidden=1024, intermediate=4096, vocab=8192, layers=8,
        kv_heads=16,
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(src), str(tmp_path / "o.nntr"), qtype],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    grown = figures["peak"] - figures["base"]
    assert figures["source"] > 250 << 20
    assert grown < min(figures["source"] // 3, 160 << 20), figures


def test_workqueue_threading_layer_does_not_abort(tmp_path):
    """numba's fallback threading layer cannot take overlapping parallel calls: one worker."""
    import os
    import subprocess
    import sys

    src = write_model(tmp_path / "m", [(f"w{i}.weight", (64, 256)) for i in range(12)])
    code = (
        "import sys\n"
        "from nntrtool.convert import ConvertOptions, convert\n"
        "from nntrtool.convert.pipeline import _pool_shape\n"
        "print(_pool_shape('numba', 2))\n"
        "convert(sys.argv[1], sys.argv[2], ConvertOptions(quant_type='q6_k', chunk_bytes=4096))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(src), str(tmp_path / "o.nntr")],
        capture_output=True,
        text=True,
        env={**os.environ, "NUMBA_THREADING_LAYER": "workqueue"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(1, 2)"
    assert NntrFile(tmp_path / "o.nntr").tensor("w11.weight").ttype is Q6_K


class _Recorder:
    """A progress display that remembers what it was told, in order."""

    def __init__(self, total: int, description: str):
        self.total, self.description, self.events = total, description, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def advance(self, n: int, current: str | None = None) -> None:
        self.events.append((n, current))

    def log(self, message: str) -> None:
        self.events.append((0, message))


def test_progress_names_kernel_preparation_before_the_first_tensor(tmp_path):
    """A first run's JIT compile shows up as such, once per kernel, before any data moves."""
    src = write_model(tmp_path / "m")
    bars: list[_Recorder] = []

    def factory(total: int, description: str) -> _Recorder:
        bars.append(_Recorder(total, description))
        return bars[-1]

    # numba named: auto takes numpy for a model this small, which has nothing to prepare
    options = ConvertOptions(repack_format="q4_0_8", backend="numba")
    report = convert(src, tmp_path / "o.nntr", options, factory)
    (bar,) = bars
    preparing = [c for n, c in bar.events if c and c.startswith(("compiling", "loading"))]
    first_data = next(i for i, (n, _) in enumerate(bar.events) if n > 0)
    assert preparing and all(n == 0 for n, _ in bar.events[: len(preparing)])
    assert first_data == len(preparing)
    assert sum(n for n, _ in bar.events) == report.plan.params == bar.total
