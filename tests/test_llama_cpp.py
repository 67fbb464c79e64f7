"""nntrtool against llama.cpp itself: GGUFs written by llama.cpp's ``convert_hf_to_gguf.py`` and
``llama-quantize``, importance matrices written by ``llama-imatrix``.

- A GGUF converted with ``--quant-type keep`` holds every block of llama.cpp's file, byte for
  byte, under the Hugging Face name and in the checkpoint's row order (llama's Q/K rows put back).
- The Hugging Face checkpoint converted with the matching ``--quant-type`` gives, tensor for
  tensor, the type ``llama-quantize`` chose and the same bytes.
- An imatrix from ``llama-imatrix`` is read by ``convert --imatrix``, and the importance-weighted
  blocks equal ``llama-quantize --imatrix``'s.

The tools come from ``tools/llama_cpp/build.sh`` (the ``llama_cpp`` fixture skips without them).
"""

from __future__ import annotations

import importlib.resources
import json

import llama_cpp_converter
import numpy as np
import pytest
from models import make_hf_model
from moe_models import save_qwen3_moe

from nntrtool.cli.app import main
from nntrtool.convert import ConvertOptions, convert, plan_conversion
from nntrtool.format import NntrFile
from nntrtool.imatrix import read_imatrix
from nntrtool.names import hf_to_gguf
from nntrtool.plan.options import QUANT_TYPE_CHOICES
from nntrtool.qtypes import TYPES_BY_NAME

#: Test models: every matrix's columns a multiple of 256 (llama: 8 layers, so that the K-quant
#: mixtures' "first eighth, last eighth, every third" layers all occur; qwen3: tied head), and
#: one whose columns (384, 640) fit 32-value blocks but not 256-value ones, for the fallbacks;
#: a Qwen3-MoE with 8 experts (fused expert tensors in the GGUF, llama.cpp's 8-expert rules).
MODELS = {
    "llama": dict(arch="llama", hidden=256, layers=8, vocab=512, intermediate=512, heads=4,
                  kv_heads=2),
    "qwen3": dict(arch="qwen3", hidden=256, layers=4, vocab=512, intermediate=512, heads=4,
                  kv_heads=2, tie=True),
    "llama-384": dict(arch="llama", hidden=384, layers=2, vocab=512, intermediate=640, heads=6,
                      kv_heads=2),
    "qwen3moe": dict(arch="qwen3_moe", hidden_size=256, vocab_size=512, intermediate_size=512,
                     moe_intermediate_size=256, head_dim=64, experts=8),
}  # fmt: skip

#: llama-quantize stores the key and value projections of a model with exactly 8 experts as
#: Q8_0 in every quantized file type; nntrtool's plain types ask for it with --type.
EIGHT_EXPERTS_KV = r"self_attn\.[kv]_proj\.=q8_0"

#: llama-quantize's file type (and flags) -> nntrtool's options that ask for the same file.
#: llama-quantize keeps the output head at Q6_K in a Q4_0 or Q5_0 file (Q8_0 where its rows do
#: not fit 256-value blocks), which nntrtool's --head-type q6_k does; with --pure it gives every
#: matrix the file's base type (Q4_K for Q4_K_M), as nntrtool's plain --quant-type does.
FILE_TYPES = {
    "Q4_0": dict(quant_type="q4_0", head_type="q6_k"),
    "Q4_0 --pure": dict(quant_type="q4_0"),
    "Q5_0": dict(quant_type="q5_0", head_type="q6_k"),
    "Q5_0 --pure": dict(quant_type="q5_0"),
    "Q4_K_M --pure": dict(quant_type="q4_k"),
    "Q8_0": dict(quant_type="q8_0"),
    "Q6_K": dict(quant_type="q6_k"),
    "Q4_K_M": dict(quant_type="q4_k_m"),
    "Q5_K_M": dict(quant_type="q5_k_m"),
    "F16": dict(quant_type="f16"),
}

#: Text for llama-imatrix: CPython's pydoc topics, as the other imatrix tests use.
IMATRIX_CTX, IMATRIX_CHUNKS = 128, 8


def _skip_unless_offered(options: dict) -> None:
    quant_type = options["quant_type"]
    if quant_type not in QUANT_TYPE_CHOICES:
        pytest.skip(f"nntrtool offers no --quant-type {quant_type} yet")


def _skip_unless_storable(types: set[str]) -> None:
    missing = sorted(t for t in types if t not in TYPES_BY_NAME)
    if missing:
        pytest.skip(f"nntrtool cannot store {', '.join(missing)} yet")


@pytest.fixture(scope="session")
def llama_cpp_files(llama_cpp, tmp_path_factory):
    """``files(model) -> (hf_folder, f32_gguf)``, ``files(model, ftype, imatrix=None) -> gguf``:
    each made once per session by llama.cpp's converter and llama-quantize."""
    root = tmp_path_factory.mktemp("llama-cpp")
    made: dict[tuple, object] = {}

    def files(model: str, ftype: str | None = None, imatrix=None):
        key = (model, ftype, str(imatrix))
        if key in made:
            return made[key]
        if ftype is None:
            dims = dict(MODELS[model])
            arch = dims.pop("arch")
            f32 = root / f"{model}-F32.gguf"
            if arch == "qwen3_moe":  # no imatrix for it: the converter's stand-in vocabulary
                folder = save_qwen3_moe(root / model, **dims)
                llama_cpp_converter.convert_hf(llama_cpp.llama_cpp_dir, folder, f32)
            else:
                folder = make_hf_model(root / model, arch, **dims)
                llama_cpp.add_tokenizer(folder, dims["vocab"])
                llama_cpp.convert_hf(folder, f32)
            made[key] = (folder, f32)
        else:
            _, f32 = files(model)
            name, *flags = ftype.split()
            tag = "".join(flags) + ("-imatrix" if imatrix is not None else "")
            out = root / f"{model}-{name}{tag}.gguf"
            llama_cpp.quantize(f32, out, name, imatrix=imatrix, flags=flags)
            made[key] = out
        return made[key]

    return files


@pytest.fixture(scope="session")
def llama_imatrix(llama_cpp, llama_cpp_files, tmp_path_factory):
    """llama-imatrix's importance matrix of the llama test model (GGUF format, its default)."""
    _, f32 = llama_cpp_files("llama")
    d = tmp_path_factory.mktemp("llama-imatrix")
    text = d / "topics.txt"
    text.write_text(importlib.resources.files("pydoc_data").joinpath("topics.py").read_text())
    out = d / "imatrix.gguf"
    llama_cpp.imatrix(f32, text, out, ctx=IMATRIX_CTX, chunks=IMATRIX_CHUNKS)
    return out


def _nntr(path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    with NntrFile(path) as f:
        return {
            t.name: (t.display_type, tuple(t.shape), f.raw(t.name).tobytes()) for t in f.tensors
        }


def _gguf(path) -> dict[str, tuple[str, bytes]]:
    """Every tensor of a GGUF as (type name, bytes), read with the gguf package."""
    from gguf import GGUFReader

    out = {}
    for t in GGUFReader(path).tensors:
        rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
        data = np.asarray(t.data).view(np.uint8).reshape(rows, -1)
        out[t.name] = (t.tensor_type.name.lower(), data.tobytes())
    return out


def _as_gguf(nntr_path, folder, arch: str) -> dict[str, tuple[str, bytes]]:
    """An NNTR file's tensors under llama.cpp's names and in its row order (llama's Q/K rows
    permuted back as llama.cpp's converter permutes them): (type name, bytes)."""
    config = json.loads((folder / "config.json").read_text())
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    out: dict[str, tuple[str, bytes]] = {}
    experts: dict[str, dict[int, tuple[str, bytes]]] = {}
    for name, (ttype, shape, data) in _nntr(nntr_path).items():
        found = hf_to_gguf(name, config)
        assert found is not None, f"{name}: no llama.cpp name"
        gguf_name, expert = found
        part = gguf_name.split(".")[-2]
        if arch == "llama" and part in heads:
            rows = np.frombuffer(data, np.uint8).reshape(shape[0], -1)
            data = _permute(rows, heads[part]).tobytes()
        if expert is None:
            out[gguf_name] = (ttype, data)
        else:  # llama.cpp stacks the experts' matrices into one tensor, expert by expert
            experts.setdefault(gguf_name, {})[expert] = (ttype, data)
    for gguf_name, parts in experts.items():
        assert sorted(parts) == list(range(len(parts))), (gguf_name, sorted(parts))
        types = {t for t, _ in parts.values()}
        assert len(types) == 1, f"{gguf_name}: experts stored as {types}"
        out[gguf_name] = (types.pop(), b"".join(parts[e][1] for e in sorted(parts)))
    return out


def _permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter's Q/K permutation of llama models (it interleaves the two rotary
    halves of each head's rows); whole rows move, so it applies to quantized rows too."""
    n = rows.shape[0]
    return rows.reshape(n_head, 2, n // n_head // 2, -1).swapaxes(1, 2).reshape(rows.shape)


def _compare(ours: dict, theirs: dict, what: str, known: dict | None = None) -> None:
    """Same names; then every type and every byte, each mismatch named. ``known`` maps the
    tensors where llama.cpp is known to choose another type to (our type, llama.cpp's type):
    exactly those must differ, and only in that way; their bytes are not compared."""
    known = known or {}
    assert sorted(ours) == sorted(theirs), f"{what}: names differ"
    types = {n: (ours[n][0], theirs[n][0]) for n in sorted(ours) if ours[n][0] != theirs[n][0]}
    unexpected = [f"{n}: {a} here, {b} in llama.cpp's file" for n, (a, b) in types.items()
                  if known.get(n) != (a, b)]  # fmt: skip
    assert not unexpected, f"{what}: types differ:\n" + "\n".join(unexpected)
    assert types == known, f"{what}: llama.cpp's known choices did not occur: {known}"
    blocks = [n for n in sorted(ours) if n not in known and ours[n][1] != theirs[n][1]]
    assert not blocks, f"{what}: bytes differ in {len(blocks)} of {len(ours)} tensors: {blocks}"


@pytest.mark.parametrize("ftype", ["F32", *FILE_TYPES])
@pytest.mark.parametrize("model", MODELS)
def test_keep_copies_every_block_of_llama_cpps_file(llama_cpp_files, tmp_path, model, ftype):
    folder, f32 = llama_cpp_files(model)
    gguf_path = f32 if ftype == "F32" else llama_cpp_files(model, ftype)
    theirs = _gguf(gguf_path)
    _skip_unless_storable({t for t, _ in theirs.values()})
    out = tmp_path / "keep.nntr"
    report = convert(gguf_path, out, ConvertOptions(quant_type="keep"))
    assert not [t.name for t in report.plan.tensors if t.requantized]
    _compare(_as_gguf(out, folder, MODELS[model]["arch"]), theirs, f"{model} {ftype} kept")


@pytest.mark.parametrize("ftype", FILE_TYPES)
@pytest.mark.parametrize("model", MODELS)
def test_checkpoint_converts_to_llama_quantizes_bytes(llama_cpp_files, tmp_path, model, ftype):
    """nntrtool on the checkpoint against llama-quantize on llama.cpp's F32 GGUF of it: the same
    tensors, each with the type llama-quantize chose and its bytes."""
    options = dict(FILE_TYPES[ftype])
    _skip_unless_offered(options)
    quantized_plain = options["quant_type"] in ("q4_0", "q5_0", "q6_k", "q4_k")
    if MODELS[model].get("experts") == 8 and quantized_plain and "--pure" not in ftype:
        options["type_overrides"] = (EIGHT_EXPERTS_KV,)
    folder, _ = llama_cpp_files(model)
    theirs = _gguf(llama_cpp_files(model, ftype))
    out = tmp_path / "h.nntr"
    convert(folder, out, ConvertOptions(**options))
    ours = _as_gguf(out, folder, MODELS[model]["arch"])
    _compare(ours, theirs, f"{model} {ftype}")
    assert len({t for t, _ in ours.values()}) >= 2  # matrices and vectors at least


def test_llama_imatrix_file_is_read_by_convert(llama_cpp_files, llama_imatrix, tmp_path):
    folder, _ = llama_cpp_files("llama")
    imx = read_imatrix(llama_imatrix)
    assert imx.format == "gguf" and imx.chunk_count == IMATRIX_CHUNKS
    assert imx.chunk_size == IMATRIX_CTX
    layers = MODELS["llama"]["layers"]
    assert len(imx.entries) == 7 * layers  # q, k, v, o, gate, up, down of every layer
    out = tmp_path / "m.nntr"
    argv = ["convert", str(folder), str(out), "--quant-type", "q4_0", "--imatrix",
            str(llama_imatrix), "--quiet"]  # fmt: skip
    with pytest.raises(SystemExit) as ex:
        main(argv)
    assert ex.value.code == 0
    with NntrFile(out) as f:
        assert f.config["nntrtool"]["imatrix"]["file"] == llama_imatrix.name
    plan = plan_conversion(folder, ConvertOptions(quant_type="q4_0", imatrix=llama_imatrix))
    weighted = [t.name for t in plan.tensors if t.importance]
    assert len(weighted) == 7 * layers, weighted


def known_imatrix_choices(ftype: str, layers: int) -> dict[str, tuple[str, str]]:
    """Where llama-quantize given an imatrix picks a type nntrtool does not: in a Q4_0 (Q5_0)
    file, the MLP down projections of the first eighth of the layers become Q4_1 (Q5_1), "to
    guard against craziness", llama.cpp says; only with an imatrix, and not with --pure.
    nntrtool has no such rule (and no Q4_1 quantizer) and keeps the file's type."""
    instead = {"Q4_0": ("q4_0", "q4_1"), "Q5_0": ("q5_0", "q5_1")}.get(ftype)
    if instead is None:
        return {}
    return {f"blk.{i}.ffn_down.weight": instead for i in range(layers // 8)}


@pytest.mark.parametrize(
    "ftype", ["Q4_0", "Q4_0 --pure", "Q5_0", "Q6_K", "Q4_K_M --pure", "Q4_K_M", "Q5_K_M"]
)
def test_imatrix_blocks_equal_llama_quantize_imatrix(
    llama_cpp_files, llama_imatrix, tmp_path, ftype
):
    options = FILE_TYPES[ftype]
    _skip_unless_offered(options)
    folder, _ = llama_cpp_files("llama")
    theirs = _gguf(llama_cpp_files("llama", ftype, imatrix=llama_imatrix))
    out = tmp_path / "h.nntr"
    convert(folder, out, ConvertOptions(**options, imatrix=llama_imatrix))
    layers = MODELS["llama"]["layers"]
    known = known_imatrix_choices(ftype, layers)
    _compare(_as_gguf(out, folder, "llama"), theirs, f"llama {ftype} with llama-imatrix's", known)
    # The matrix changed llama.cpp's blocks, so equal bytes say the weighting is the same.
    plain = _gguf(llama_cpp_files("llama", ftype))
    changed = [n for n in theirs if n not in known and theirs[n] != plain[n]]
    assert len(changed) >= 7 * layers // 2, changed
