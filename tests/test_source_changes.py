"""A source file that changes while it is being read is refused, and nothing is written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nntrtool.convert import ConvertOptions, convert
from nntrtool.errors import SourceError
from nntrtool.sources import open_source
from nntrtool.sources.gguf_file import GGUFFile
from nntrtool.sources.safetensors_file import SafetensorsFile

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny-llama"


@pytest.fixture
def model(tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(EXAMPLE, folder)
    return folder


def test_an_unchanged_file_passes_the_check(model):
    with SafetensorsFile(model / "model.safetensors") as f:
        f.check_unchanged()


@pytest.mark.parametrize("change", ["grow", "truncate", "replace", "remove"])
def test_a_changed_file_is_named_in_one_line(model, change):
    path = model / "model.safetensors"
    with SafetensorsFile(path) as f:
        if change == "grow":
            with open(path, "ab") as fh:
                fh.write(b"\0" * 64)
        elif change == "truncate":
            os.truncate(path, f.size // 2)
        elif change == "replace":
            tmp = path.with_suffix(".new")
            shutil.copyfile(path, tmp)
            os.replace(tmp, path)
        else:
            path.unlink()
        with pytest.raises(SourceError) as err:
            f.check_unchanged()
    message = str(err.value)
    assert str(path) in message and "changed while being read" in message
    assert "\n" not in message


def test_gguf_files_are_checked_the_same_way(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("token_embd.weight", np.ones((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with GGUFFile(path) as f:
        f.check_unchanged()
        with open(path, "ab") as fh:
            fh.write(b"\0" * 32)
        with pytest.raises(SourceError, match="changed while being read"):
            f.check_unchanged()


class _ChangeSourceOnFirstAdvance:
    """A progress display that appends to the source file when the first chunk is written."""

    def __init__(self, path: Path):
        self.path, self.done = path, False

    def __call__(self, total, description, **_):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n, **_):
        if not self.done:
            self.done = True
            with open(self.path, "ab") as fh:
                fh.write(b"\0" * 64)


def test_convert_refuses_a_source_that_changed_and_leaves_nothing(model, tmp_path):
    out = tmp_path / "out.nntr"
    progress = _ChangeSourceOnFirstAdvance(model / "model.safetensors")
    with pytest.raises(SourceError, match="changed while being read"):
        convert(model, out, ConvertOptions(quant_type="q4_0", backend="numpy"), progress=progress)
    assert progress.done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_open_source_checks_every_file(model):
    with open_source(model) as src:
        src.check_unchanged()
        os.truncate(model / "model.safetensors", 100)
        with pytest.raises(SourceError, match="changed while being read"):
            src.check_unchanged()
