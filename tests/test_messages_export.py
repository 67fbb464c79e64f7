"""The refusals of export, repack, inspect, bench, imatrix and the NNTR writer, as a user meets
them: exit code, one line on stderr, and what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from faults import one_line, run_cli

from nntrtool.errors import DiskFullError, FormatError, SourceError, UsageError
from nntrtool.export import RuntimeOptions
from nntrtool.format import NntrWriter, TensorSpec
from nntrtool.qtypes import F32

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny-llama"


def _convert(src: Path, out: Path, *args: str) -> Path:
    proc = run_cli("convert", src, out, "-q", *args)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("messages")
    noarch = root / "noarch"
    noarch.mkdir()
    shutil.copy(EXAMPLE / "model.safetensors", noarch)
    config = json.loads((EXAMPLE / "config.json").read_text())
    del config["architectures"]
    (noarch / "config.json").write_text(json.dumps(config))
    exportable = ("--quant-type", "q4_0", "--type", "embed_tokens=q6_k")
    return {
        "root": root,
        "ok": _convert(EXAMPLE, root / "ok.nntr", *exportable),
        "noarch": _convert(noarch, root / "noarch.nntr", *exportable),
        "q8": _convert(EXAMPLE, root / "q8.nntr", "--quant-type", "q8_0"),
    }


def _refused(argv: list[object], *words: str, code: int = 2) -> str:
    proc = run_cli(*argv)
    assert proc.returncode == code, (argv, proc.stderr)
    line = one_line(proc.stderr)
    assert line.startswith("error: ") and all(w in line for w in words), (argv, line)
    return line


def test_export_option_refusals_say_what_to_do(files, tmp_path):
    ok, out = files["ok"], tmp_path / "out"
    cases = [
        (["--max-seq-len", "10", "--init-seq-len", "20"], "raise --max-seq-len or lower"),
        (["--num-to-generate", "5000"], "lower --num-to-generate or raise --max-seq-len"),
        (["--bad-word-ids=-3"], "--bad-word-ids -3 is not a token id", "0,5"),
        (["--bad-word-ids", "a,b"], "got 'a'", "give e.g. --bad-word-ids 0,5"),
        (["--model-file-name", "a/b"], "give one such as model.bin"),
        (["--tokenizer", ok], f"--tokenizer {ok} is not a folder", "holds tokenizer.json"),
        (["--isa", "riscv"], "unknown --isa 'riscv'", "choose one of x86, arm"),
    ]
    for args, *words in cases:
        _refused(["export", ok, out, *args], *words)
    assert not out.exists()


def test_export_of_a_file_without_architecture_says_how_to_fix_it(files, tmp_path):
    _refused(
        ["export", files["noarch"], tmp_path / "out"],
        "'architectures' is missing",
        "add it to config.json and convert again",
        "LlamaForCausalLM",
    )


def test_repack_inspect_bench_imatrix_and_convert_refusals(files, tmp_path):
    _refused(
        ["repack", files["q8"], tmp_path / "r.nntr", "--format", "q4_0_8"],
        f"{files['q8']} has no Q4_0 tensors",
        "convert with --quant-type q4_0",
    )
    _refused(["bench", "--output", tmp_path / "no" / "b.json"], "give a file name in an existing")
    _refused(
        ["convert", EXAMPLE, tmp_path / "x.nntr", "--backend", "gpu"],
        "--backend 'gpu' is not known",
        "choose one of auto, numpy, numba, cupy",
    )
    _refused(
        ["imatrix", EXAMPLE, "--text", EXAMPLE / "config.json", "-o", files["ok"]],
        "already exists",
        "pass --force",
    )
    cut = tmp_path / "bad.nntr"
    data = bytearray(files["ok"].read_bytes())
    data[-1] ^= 0xFF  # the last tensor's last byte: its checksum no longer holds
    cut.write_bytes(bytes(data))
    _refused(
        ["inspect", cut, "--check"], str(cut), "fail their checksum", "convert it again", code=1
    )


def test_a_tensor_name_too_long_for_nntr_names_it_and_says_what_to_do(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    src = tmp_path / "long"
    src.mkdir()
    shutil.copy(EXAMPLE / "config.json", src)
    state = load_file(EXAMPLE / "model.safetensors")
    state["model.layers.0." + "x" * 66000 + ".weight"] = torch.zeros((4, 32))
    save_file(state, src / "model.safetensors")
    _refused(
        ["convert", src, tmp_path / "o.nntr"],
        "tensor name 'model.layers.0.xxx",
        "more than the 65535 an NNTR file holds",
        "give the tensor a shorter name in the source",
    )
    assert not (tmp_path / "o.nntr").exists()


def test_runtime_options_lines(tmp_path):
    cases = [
        (RuntimeOptions(init_seq_len=4096), "raise --max-seq-len or lower --init-seq-len"),
        (RuntimeOptions(num_to_generate=2048), "lower --num-to-generate or raise"),
        (RuntimeOptions(bad_word_ids=[3, -1]), "--bad-word-ids -1 is not a token id"),
    ]
    for runtime, words in cases:
        with pytest.raises(UsageError, match=words):
            runtime.validate()


def test_the_writer_says_what_to_do_when_the_disk_is_too_small(tmp_path):
    out = tmp_path / "huge.nntr"
    specs = [TensorSpec("a", F32, (1 << 20, 1 << 30))]  # 4 PiB
    with pytest.raises(DiskFullError, match="free some space or write elsewhere") as err:
        with NntrWriter(out, {}, specs):
            pass
    assert str(out) in str(err.value) and not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_source_layout_refusals_say_what_to_do():
    from nntrtool.architectures.base import GGUFMeta
    from nntrtool.tensors.base import ArrayTensor
    from nntrtool.tensors.transforms import TensorLookup, expert_matrix, llama_qk_order

    meta = GGUFMeta("llama", {}.get, "/models/m.gguf")
    with pytest.raises(SourceError, match=r"^m\.gguf: the GGUF lacks .*download or convert"):
        meta.count("block_count")
    with pytest.raises(SourceError, match="head count and the Q/K tensors disagree"):
        llama_qk_order(6, 4)
    with pytest.raises(SourceError, match="download them again"):
        TensorLookup([]).take("model.layers.0.mlp.experts.gate_up_proj_scales")
    flat = ArrayTensor("experts", np.zeros((4, 8), np.float32))
    with pytest.raises(SourceError, match="not a 3-D expert tensor.*use the original files"):
        expert_matrix(flat, "e0", 0)


@pytest.mark.parametrize(
    ("name", "action"),
    [
        ("n" * 70000, "give the tensor a shorter name in the source"),
        ("", "give the tensor a name in the source"),
        ("bad\ud800", "rename the tensor in the source"),
    ],
)
def test_tensor_names_an_nntr_file_cannot_hold(name, action):
    from nntrtool.format.binary import plan_file

    with pytest.raises(FormatError) as err:
        plan_file({}, [TensorSpec(name, F32, (1,))])
    assert len(str(err.value).splitlines()) == 1 and action in str(err.value)


def test_a_type_override_that_does_not_fit_says_what_to_do(hf_model, tmp_path):
    model = hf_model("llama")  # 128 intermediate features: not whole 256-value q6_k blocks
    _refused(
        ["convert", model, tmp_path / "o.nntr", "--type", "down_proj=q6_k"],
        "does not fit tensor 'model.layers.0.mlp.down_proj.weight'",
        "choose a type that fits (f16 fits any) or a pattern that leaves this tensor out",
    )
    assert list(tmp_path.iterdir()) == []
