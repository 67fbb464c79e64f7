"""Hub ids resolved from a local Hugging Face cache, offline. No test here touches the network."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from models import cache_model, write_safetensors

from nntrtool.errors import SourceError
from nntrtool.sources import open_source
from nntrtool.sources.hub import hub_cache_dir, hub_offline, weight_patterns

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def _model_files(folder: Path, fill: float) -> dict[str, Path]:
    folder.mkdir(parents=True)
    write_safetensors(folder / "model.safetensors", {"w": np.full((4, 32), fill, np.float32)})
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "fill": fill}))
    (folder / "tokenizer.json").write_text("{}")
    return {p.name: p for p in folder.iterdir()}


def test_cached_id_resolves_offline(offline_hub, tmp_path):
    snap = cache_model(offline_hub, "org/tiny", _model_files(tmp_path / "src", 1.5), COMMIT_A)
    with open_source("org/tiny") as src:
        assert src.origin == {
            "kind": "hub",
            "path": str(snap),
            "repo_id": "org/tiny",
            "revision": COMMIT_A,
            "ref": "main",
        }
        assert src.root == snap.resolve() and (src.root / "tokenizer.json").is_file()
        assert src.config["fill"] == 1.5
        np.testing.assert_array_equal(src.tensor("w").read_f32(), 1.5)


def test_revision_by_ref_name_and_by_commit(offline_hub, tmp_path):
    cache_model(offline_hub, "org/tiny", _model_files(tmp_path / "a", 1.0), COMMIT_A)
    cache_model(offline_hub, "org/tiny", _model_files(tmp_path / "b", 2.0), COMMIT_B, ref="v2")
    with open_source("org/tiny", revision="v2") as src:
        assert (src.origin["revision"], src.origin["ref"], src.config["fill"]) == (
            COMMIT_B,
            "v2",
            2.0,
        )
    with open_source("org/tiny", revision=COMMIT_A) as src:
        assert src.origin["revision"] == COMMIT_A and src.config["fill"] == 1.0
    with open_source("org/tiny") as src:
        assert src.config["fill"] == 1.0


def test_sharded_model_in_the_cache(offline_hub, hf_model):
    folder = hf_model("qwen2", dtype="bf16", shard_size="60KB")
    files = {p.name: p for p in folder.iterdir() if p.is_file()}
    cache_model(offline_hub, "Qwen/Tiny-Test", files, COMMIT_A)
    with open_source("Qwen/Tiny-Test") as cached, open_source(folder) as local:
        assert cached.names == local.names
        for a, b in zip(cached.tensors, local.tensors, strict=True):
            np.testing.assert_array_equal(a.read(), b.read())


def test_uncached_id_offline_fails_with_one_clear_line(offline_hub):
    with pytest.raises(SourceError) as exc:
        open_source("org/never-downloaded")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "org/never-downloaded" in msg and "not in the local Hugging Face cache" in msg
    assert "HF_HUB_OFFLINE" in msg and str(offline_hub) in msg


def test_uncached_revision_offline_fails(offline_hub, tmp_path):
    cache_model(offline_hub, "org/tiny", _model_files(tmp_path / "a", 1.0), COMMIT_A)
    with pytest.raises(SourceError, match=r"org/tiny \(revision v9\) is not in the local"):
        open_source("org/tiny", revision="v9")


def test_partly_cached_id_offline_says_what_is_missing(offline_hub, tmp_path):
    files = _model_files(tmp_path / "src", 1.0)
    del files["model.safetensors"]
    cache_model(offline_hub, "org/partial", files, COMMIT_A)
    with pytest.raises(SourceError) as exc:
        open_source("org/partial")
    msg = str(exc.value)
    assert "only partly in the local Hugging Face cache" in msg and "no weights" in msg


def test_hf_home_locates_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert hub_cache_dir() == tmp_path / "home" / "hub" and hub_offline()
    cache_model(
        tmp_path / "home" / "hub", "org/tiny", _model_files(tmp_path / "src", 3.0), COMMIT_A
    )
    with open_source("org/tiny") as src:
        assert src.config["fill"] == 3.0
    shutil.rmtree(tmp_path / "home")
    with pytest.raises(SourceError, match="not in the local"):
        open_source("org/tiny")


def test_weight_patterns_pick_one_set_of_weights():
    both = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "README.md"]
    pats = weight_patterns(both)
    assert "model.safetensors" in pats and not any("pytorch_model" in p for p in pats)
    assert "config.json" in pats and "tokenizer*" in pats
    sharded = weight_patterns(["model.safetensors.index.json", "model-00001-of-00002.safetensors"])
    assert "model.safetensors.index.json" in sharded and "model-*.safetensors" in sharded
    assert "pytorch_model.bin" in weight_patterns(["pytorch_model.bin", "config.json"])
    assert "pytorch_model-*.bin" in weight_patterns(["pytorch_model.bin.index.json"])
    with pytest.raises(SourceError, match="no weights nntrtool can read"):
        weight_patterns(["config.json", "model.gguf"])


def test_uncached_id_online_but_unreachable_fails_cleanly(tmp_path):
    """The download path, pointed at a closed port on this machine: one line, no traceback."""
    import subprocess
    import sys

    env = {
        **os.environ,
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "0",
    }
    code = (
        "from nntrtool.sources import open_source\n"
        "from nntrtool.errors import SourceError\n"
        "try:\n    open_source('org/nothing')\n"
        "except SourceError as e:\n    print(e)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    assert "\n" not in line
    assert line.startswith("cannot download org/nothing (revision main) from the Hugging Face hub")
