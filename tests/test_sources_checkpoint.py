"""PyTorch pickle checkpoints as model sources: safe loading, dtypes, layouts, and no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nntrtool.errors import SourceError
from nntrtool.sources import open_source

torch = pytest.importorskip("torch")

CONFIG = {"model_type": "llama"}


def _save(tmp_path: Path, obj, name: str = "pytorch_model.bin", **kwargs) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.save(obj, tmp_path / name, **kwargs)
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    return tmp_path / name


def test_dtypes_values_and_layouts(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(48, 32, generator=g)
    state = {
        "f32": base,
        "f16": base.half(),
        "bf16": base.bfloat16(),
        "transposed": base.t(),  # a non-contiguous view, saved as such
        "conv": torch.randn(8, 4, 3, 3, generator=g),
        "norm": torch.ones(32),
        "i8": torch.zeros(4, 32, dtype=torch.int8),
        "fp8": torch.zeros(4, 32).to(torch.float8_e4m3fn),
        "steps": torch.tensor(7, dtype=torch.int64),
    }
    path = _save(tmp_path / "m", state)
    with open_source(tmp_path / "m") as src:
        assert src.names == list(state)
        dtypes = {t.name: t.dtype for t in src.tensors}
        assert dtypes == {"f32": "F32", "f16": "F16", "bf16": "BF16", "transposed": "F32", "conv": "F32",
                          "norm": "F32", "i8": "I8", "fp8": "F8_E4M3", "steps": "I64"}  # fmt: skip
        np.testing.assert_array_equal(src.tensor("f32").read_f32(), base.numpy())
        np.testing.assert_array_equal(src.tensor("f16").read(3, 9), base.half().numpy()[3:9])
        bits = src.tensor("bf16").read(10, 20)
        assert bits.dtype == np.uint16 and not bits.flags.writeable
        np.testing.assert_array_equal(
            src.tensor("bf16").read_f32(), base.bfloat16().float().numpy()
        )
        t = src.tensor("transposed")
        assert (t.shape, t.rows, t.cols) == ((32, 48), 32, 48)
        np.testing.assert_array_equal(t.read_f32(5, 7), base.t().numpy()[5:7])
        conv = src.tensor("conv")
        assert (conv.rows, conv.cols) == (8 * 4 * 3, 3)
        np.testing.assert_array_equal(conv.read(), state["conv"].numpy().reshape(96, 3))
        assert src.tensor("i8").nbytes == 128 and not src.tensor("i8").supported
        with pytest.raises(SourceError, match="'fp8' in pytorch_model.bin has dtype F8_E4M3"):
            src.tensor("fp8").read()
    # a single file, config found beside it, and named as such in origin
    with open_source(path) as src:
        assert src.origin["kind"] == "checkpoint" and len(src) == len(state)


def test_wrapped_and_legacy_checkpoints(tmp_path):
    w = torch.arange(64, dtype=torch.float32).reshape(2, 32)
    _save(tmp_path / "wrapped", {"state_dict": {"w": w}, "epoch": 3})
    with open_source(tmp_path / "wrapped") as src:
        assert src.names == ["w"]
    # the pre-zip format cannot be memory-mapped; it still loads
    _save(tmp_path / "legacy", {"w": w}, _use_new_zipfile_serialization=False)
    with open_source(tmp_path / "legacy") as src:
        np.testing.assert_array_equal(src.tensor("w").read(), w.numpy())


def test_pickles_that_would_run_code_are_refused(tmp_path):
    import argparse

    _save(tmp_path / "m", {"w": torch.zeros(2, 32), "args": argparse.Namespace(lr=1)})
    with pytest.raises(SourceError) as exc:
        open_source(tmp_path / "m")
    msg = str(exc.value)
    assert "\n" not in msg and "refusing to load" in msg and "(argparse.Namespace)" in msg


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"not a checkpoint at all", "cannot read as a PyTorch checkpoint"),
        (None, "holds no state dict"),
    ],
)
def test_unreadable_checkpoints(tmp_path, content, expect):
    folder = tmp_path / "m"
    if content is None:
        _save(folder, torch.zeros(3))
    else:
        folder.mkdir()
        (folder / "pytorch_model.bin").write_bytes(content)
        (folder / "config.json").write_text("{}")
    with pytest.raises(SourceError) as exc:
        open_source(folder)
    assert expect in str(exc.value) and "\n" not in str(exc.value)


def test_sharded_bin_index_naming_a_missing_shard(tmp_path, hf_model):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(hf_model("llama", checkpoint=True, shard_size="60KB"), folder)
    shards = sorted(folder.glob("pytorch_model-*.bin"))
    shards[-1].unlink()
    with pytest.raises(SourceError, match=f"names shard {shards[-1].name}"):
        open_source(folder)


def test_without_torch_names_the_extra_to_install(tmp_path):
    _save(tmp_path / "m", {"w": torch.zeros(2, 32)})
    code = (
        "import sys; sys.modules['torch'] = None\n"  # makes `import torch` fail as if absent
        "from nntrtool.sources import open_source\n"
        "from nntrtool.errors import SourceError\n"
        f"try:\n    open_source({str(tmp_path / 'm')!r})\n"
        "except SourceError as e:\n    print(e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == (
        "pytorch_model.bin is a PyTorch checkpoint, which needs the torch extra: "
        "pip install 'nntrtool[torch]'"
    )
