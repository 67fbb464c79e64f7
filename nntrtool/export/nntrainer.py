"""Export of an NNTR file to the model folder nntrainer's CausalLM application loads.

The folder holds a raw weight file (tensor bytes back to back, in the order of the layout table
in :mod:`nntrtool.export.layouts`), ``config.json``, ``generation_config.json``,
``nntr_config.json`` and the tokenizer files of the source. Everything is checked first
(:func:`plan_export`), then written into a temporary folder beside the target that is renamed
into place at the end (:func:`write_export`), so a failed or interrupted export leaves nothing.

Nothing is requantized: F32 is copied (linear weights transposed to ``[in, out]``), Q6_K is
copied, and Q4_0 is re-laid losslessly into the CPU layout of the chosen ISA.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.errors import DiskFullError, OutputExistsError, UsageError
from nntrtool.export.layouts import ArchitectureLayout, Role, Slot, layout_for_config
from nntrtool.progress import ProgressFactory, ProgressLike
from nntrtool.qtypes import F32, Q4_0, Q4_0_REPACKED, Q6_K, RepackLayout, TensorType, get_layout

#: The Q4_0 layout nntrainer's CPU kernels expect, per instruction set.
ISA_LAYOUTS: dict[str, str] = {"x86": "q4_0_8", "arm": "q4_0_4"}
TARGETS: tuple[str, ...] = ("nntrainer",)

#: Files of a Hugging Face folder that the runtime's tokenizer (or a user) may need.
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)

#: What to tell a user whose file cannot be exported.
CONVERT_HINT = (
    "re-convert with --quant-type q4_0 --type 'embed_tokens=q6_k' (Q4_0 layers, Q6_K "
    "embedding), or add --keep-f32 'embed_tokens' for an F32 embedding, or --quant-type f32 "
    "for an all-F32 model"
)

_RUNTIME_DTYPE = {F32.name: "FP32", Q4_0.name: "Q4_0", Q6_K.name: "Q6_K"}
#: Working-set budget per write: bounds memory whatever the tensor size.
DEFAULT_CHUNK_BYTES = 64 << 20
_CHATML_PROMPT = (
    "<|im_start|>user\nGive me a short introduction to large language models.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
_PLAIN_PROMPT = "Give me a short introduction to large language models."


@dataclass
class RuntimeOptions:
    """Run settings written to ``nntr_config.json`` and ``generation_config.json``.

    ``None`` means: the default (or, for tokens and sampling, what the source says).
    """

    num_to_generate: int = 512
    init_seq_len: int = 1024
    max_seq_len: int = 2048
    batch_size: int = 1
    bad_word_ids: list[int] = field(default_factory=list)
    sample_input: str | None = None
    tokenizer_file: str | None = None
    model_file_name: str | None = None
    do_sample: bool | None = None
    bos_token_id: int | None = None
    eos_token_ids: list[int] | None = None

    def validate(self) -> None:
        """Raise ``UsageError`` for settings the runtime would reject or misread."""
        for name in ("num_to_generate", "init_seq_len", "max_seq_len", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_seq_len < self.init_seq_len:
            raise UsageError(
                f"--max-seq-len {self.max_seq_len} is below --init-seq-len {self.init_seq_len}; "
                "the runtime needs max_seq_len >= init_seq_len"
            )
        if self.num_to_generate >= self.max_seq_len:
            raise UsageError(
                f"--num-to-generate {self.num_to_generate} leaves no room for the prompt in "
                f"--max-seq-len {self.max_seq_len}"
            )
        if any(int(i) < 0 for i in self.bad_word_ids):
            raise UsageError("--bad-word-ids takes token ids (non-negative integers)")
        if self.model_file_name is not None and (
            not self.model_file_name
            or os.sep in self.model_file_name
            or self.model_file_name in (".", "..")
            or self.model_file_name in TOKENIZER_FILES
            or self.model_file_name.endswith(".json")
        ):
            raise UsageError(
                f"--model-file-name {self.model_file_name!r} must be a plain file name "
                "(no folder, not a .json or tokenizer file)"
            )


@dataclass(frozen=True)
class TensorExport:
    """One tensor of the weight file: where it comes from and how it is stored."""

    slot: Slot
    source_type: TensorType
    source_layout: RepackLayout | None
    out_type: str  # "f32", "q6_k", or the Q4_0 layout name ("q4_0_8", "q4_0_4")
    out_shape: tuple[int, ...]
    nbytes: int
    transposed: bool

    @property
    def params(self) -> int:
        return math.prod(self.slot.shape)


@dataclass
class ExportPlan:
    """Everything an export will write, decided and checked before any byte is written."""

    source: Path | None  # the NNTR file
    architecture: str
    isa: str
    tied: bool
    tensors: list[TensorExport]
    fc_dtype: str
    embedding_dtype: str
    lmhead_dtype: str | None
    config: dict[str, Any]
    generation_config: dict[str, Any]
    nntr_config: dict[str, Any]
    tokenizer_sources: list[Path]
    warnings: list[str]

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def params(self) -> int:
        return sum(t.params for t in self.tensors)

    @property
    def model_file_name(self) -> str:
        return str(self.nntr_config["model_file_name"])

    def bytes_by_type(self) -> dict[str, int]:
        """Weight-file bytes per stored type."""
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.out_type] = out.get(t.out_type, 0) + t.nbytes
        return out


@dataclass
class ExportResult:
    """What an export wrote (or, with ``dry_run``, would write)."""

    out_dir: Path
    plan: ExportPlan
    files: list[str]
    seconds: float
    dry_run: bool = False

    @property
    def weight_file(self) -> Path:
        return self.out_dir / self.plan.model_file_name


# --------------------------------------------------------------------------------------------
# planning


def _entries(nf: Any) -> dict[str, Any]:
    tensors = nf.tensors
    if isinstance(tensors, dict):
        return dict(tensors)
    return {t.name: t for t in tensors}


def _metadata(config: dict[str, Any]) -> dict[str, Any]:
    meta = config.get("nntrtool")
    return meta if isinstance(meta, dict) else {}


def _is_tied(config: dict[str, Any], names: set[str]) -> bool:
    meta = _metadata(config)
    if isinstance(meta.get("tied"), bool):
        return meta["tied"]
    if isinstance(config.get("tie_word_embeddings"), bool):
        return config["tie_word_embeddings"]
    return "lm_head.weight" not in names


def _role_error(slot: Slot, found: str, wanted: str) -> UsageError:
    return UsageError(f"{slot.name} is {found}, but nntrainer reads {wanted} there; {CONVERT_HINT}")


def _check_types(slots: list[tuple[Slot, Any]]) -> None:
    """Refuse any combination of types the runtime cannot load (its types are global)."""
    linear_types: dict[str, list[str]] = {}
    for slot, entry in slots:
        base = Q4_0 if entry.ttype is Q4_0_REPACKED else entry.ttype
        if slot.role is Role.NORM and base is not F32:
            raise _role_error(slot, base.name, "f32 (norms are never quantized)")
        if slot.role is Role.EMBEDDING and base not in (F32, Q6_K):
            raise _role_error(slot, base.name, "an f32 or q6_k embedding")
        if slot.role is Role.LM_HEAD and base not in (F32, Q4_0):
            raise _role_error(slot, base.name, "an f32 or q4_0 output head")
        if slot.role is Role.LINEAR:
            if base not in (F32, Q4_0):
                raise _role_error(slot, base.name, "f32 or q4_0 linear layers")
            linear_types.setdefault(base.name, []).append(slot.name)
    if len(linear_types) > 1:
        minority = min(linear_types, key=lambda k: len(linear_types[k]))
        majority = max(linear_types, key=lambda k: len(linear_types[k]))
        example = linear_types[minority][0]
        raise UsageError(
            f"linear layers mix {majority} and {minority} ({len(linear_types[minority])} "
            f"tensor(s), e.g. {example}, likely a fallback); nntrainer uses one type for all "
            f"linear layers: re-convert so that they share one, e.g. --type 'proj={majority}' "
            f"if the shapes allow it, or --keep-f32 'proj' for f32 layers"
        )


def _plan_tensor(slot: Slot, entry: Any, isa: str) -> TensorExport:
    shape = tuple(int(s) for s in slot.shape)
    base = Q4_0 if entry.ttype is Q4_0_REPACKED else entry.ttype
    source_layout = entry.layout if entry.ttype is Q4_0_REPACKED else None
    if slot.role in (Role.LINEAR, Role.LM_HEAD) and base is F32:
        out_shape = (shape[1], shape[0])
        return TensorExport(
            slot, entry.ttype, None, F32.name, out_shape, F32.nbytes(out_shape), True
        )
    if base is Q4_0:
        layout = get_layout(ISA_LAYOUTS[isa])
        rows, cols = shape
        if rows % layout.rows:
            raise UsageError(
                f"{slot.name}: {rows} output features do not divide by {layout.rows}, which "
                f"nntrainer's {isa} Q4_0 kernels need; "
                + ("try --isa arm (groups of 4), or " if isa == "x86" and rows % 4 == 0 else "")
                + f"keep it in f32 (--keep-f32 '{slot.short}' if all linear layers agree)"
            )
        if cols % Q4_0.block_size:
            raise UsageError(
                f"{slot.name}: {cols} input features do not divide by {Q4_0.block_size}"
            )
        return TensorExport(
            slot, entry.ttype, source_layout, layout.name, shape, Q4_0.nbytes(shape), False
        )
    return TensorExport(slot, entry.ttype, None, base.name, shape, base.nbytes(shape), False)


def _rope_theta(config: dict[str, Any], warnings: list[str]) -> int:
    theta: Any = config.get("rope_theta")
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    candidates = [params] + [v for v in params.values() if isinstance(v, dict)]
    if theta is None:
        for p in candidates:
            if isinstance(p, dict) and p.get("rope_theta") is not None:
                theta = p["rope_theta"]
                break
    kinds = {
        str(p.get("rope_type") or p.get("type"))
        for p in candidates + [scaling]
        if isinstance(p, dict) and (p.get("rope_type") or p.get("type"))
    } - {"default"}
    if kinds:
        warnings.append(
            f"the model uses '{', '.join(sorted(kinds))}' RoPE scaling, which nntrainer's "
            "runtime does not apply, so its outputs will differ from the source model's"
        )
    if theta is None:
        warnings.append("the config gives no rope_theta; wrote the usual 10000")
        return 10000
    value = float(theta)
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"the config's rope_theta {theta!r} is not a positive number")
    if value != round(value):
        warnings.append(
            f"rope_theta {theta} rounded to {round(value)} (the runtime reads an integer)"
        )
    return int(round(value))


def _runtime_config(
    config: dict[str, Any], arch: str, tied: bool, warnings: list[str]
) -> dict[str, Any]:
    out = {k: v for k, v in config.items() if k != "nntrtool"}
    out["architectures"] = [arch]
    out["rope_theta"] = _rope_theta(config, warnings)
    out["tie_word_embeddings"] = tied
    if out.get("use_sliding_window") is False:
        # the runtime applies any non-null window; Hugging Face ignores it when disabled
        out["sliding_window"] = None
    for key in ("max_position_embeddings", "rms_norm_eps"):
        if out.get(key) is None:
            raise UsageError(
                f"the file's config lacks {key}, which the runtime needs; re-convert from a "
                "complete config.json"
            )
    return out


def _fit_positions(
    runtime: RuntimeOptions, config: dict[str, Any], layout: ArchitectureLayout, warnings: list[str]
) -> tuple[int, int, int]:
    """``(num_to_generate, init_seq_len, max_seq_len)``, lowered with a warning when the run
    could pass the last position of a RoPE table sized by ``max_position_embeddings``."""
    n, init, total = (
        int(runtime.num_to_generate),
        int(runtime.init_seq_len),
        int(runtime.max_seq_len),
    )
    limit = config.get("max_position_embeddings")
    # The runtime cuts the prompt to max_seq_len - num_to_generate tokens and its input layer
    # holds init_seq_len, so the last position it computes is min(init + n, max_seq_len) - 1;
    # past the table the Qwen3 class aborts (or reads out of bounds).
    if not layout.rope_table_from_config or limit is None or min(init + n, total) <= int(limit):
        return n, init, total
    limit = int(limit)
    if limit < 2:
        raise UsageError(
            f"max_position_embeddings {limit} leaves no room for a prompt and a generated token"
        )
    lowered = [f"max_seq_len {total} to {limit}"]
    total = limit
    if init > limit:
        lowered.append(f"init_seq_len {init} to {limit}")
        init = limit
    if n >= limit:
        lowered.append(f"num_to_generate {n} to {limit // 2}")
        n = limit // 2
    warnings.append(
        f"the model's max_position_embeddings is {limit} and nntrainer's {layout.architecture} "
        f"builds RoPE for that many positions only: lowered {', '.join(lowered)}"
    )
    return n, init, total


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if v is not None]
    return [int(value)]


def _generation_config(
    config: dict[str, Any], source_dir: Path | None, runtime: RuntimeOptions, warnings: list[str]
) -> dict[str, Any]:
    gen: dict[str, Any] = {}
    if source_dir is not None and (source_dir / "generation_config.json").is_file():
        try:
            gen = json.loads((source_dir / "generation_config.json").read_text("utf-8"))
        except (OSError, ValueError) as err:
            warnings.append(
                f"could not read the source's generation_config.json ({err}); "
                "rebuilt it from config.json"
            )
            gen = {}
    if runtime.eos_token_ids is not None:
        eos = [int(i) for i in runtime.eos_token_ids]
    else:
        eos = _as_id_list(gen.get("eos_token_id", config.get("eos_token_id")))
        if not eos:
            eos = _as_id_list(config.get("eos_token_id"))
    if not eos:
        warnings.append(
            "no eos_token_id in the source; generation stops only at "
            "num_to_generate (set one with --eos-token-id)"
        )
    bos = runtime.bos_token_id
    if bos is None:
        bos_value = gen.get("bos_token_id", config.get("bos_token_id"))
        if bos_value is None:
            bos_value = config.get("bos_token_id")
        if bos_value is None:
            bos_value = eos[0] if eos else 0
            warnings.append(
                f"no bos_token_id in the source; wrote {bos_value} (set one with --bos-token-id)"
            )
        bos = int(bos_value[0] if isinstance(bos_value, list) else bos_value)
    gen["eos_token_id"] = eos
    gen["bos_token_id"] = bos
    do_sample = runtime.do_sample
    gen["do_sample"] = bool(gen.get("do_sample", False)) if do_sample is None else do_sample
    return gen


def _sample_input(tokenizer_sources: list[Path]) -> str:
    for path in tokenizer_sources:
        if path.name in ("tokenizer_config.json", "chat_template.jinja", "chat_template.json"):
            try:
                if "<|im_start|>" in path.read_text("utf-8", errors="replace"):
                    return _CHATML_PROMPT
            except OSError:
                continue
    return _PLAIN_PROMPT


def _gguf_source(config: dict[str, Any]) -> Path | None:
    """The GGUF file the NNTR file was converted from, when it was one and is still there."""
    src: Any = _metadata(config).get("source")
    path = src.get("path") if isinstance(src, dict) else None
    if isinstance(path, str) and path.lower().endswith(".gguf") and Path(path).is_file():
        return Path(path)
    return None


def _source_from_metadata(config: dict[str, Any]) -> Path | None:
    """The folder holding the source's tokenizer files, from the file's recorded source."""
    meta = _metadata(config)
    src: Any = meta.get("source")
    paths: list[str] = []
    repo_id: Any = None
    revision: Any = meta.get("revision")
    if isinstance(src, dict):
        paths = [v for v in (src.get("path"), src.get("root")) if isinstance(v, str) and v]
        repo_id = src.get("repo_id") or src.get("id")
        revision = src.get("revision", revision)
    elif isinstance(src, str) and src:
        paths = [src]
        if src.count("/") == 1 and not src.startswith((".", "/", "~")):
            repo_id = src
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            return path
        if path.is_file():
            return path.parent
    if isinstance(repo_id, str) and repo_id:
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(
                repo_id,
                revision=revision if isinstance(revision, str) else None,
                local_files_only=True,
                allow_patterns=list(TOKENIZER_FILES) + ["generation_config.json"],
            )
            return Path(folder)
        except Exception:  # not in the local cache: nothing to copy, and no network needed
            return None
    return None


def _dtype(name: str) -> str:
    return _RUNTIME_DTYPE[name]


def nntrainer_type_overrides(quant_type: str, config: dict[str, Any]) -> tuple[str, ...]:
    """``convert --type`` overrides that make a conversion exportable to nntrainer.

    Q4_0 layers need an F32 or Q6_K embedding (Q6_K when its rows fit 256-value blocks).
    Raises ``UsageError`` for quant types whose linear layers the runtime cannot run.
    """
    qt = quant_type.lower()
    if qt == F32.name:
        return ()
    if qt != Q4_0.name:
        raise UsageError(
            f"nntrainer runs f32 or q4_0 linear layers, not {qt}; use --quant-type q4_0 "
            "(or f32) with --target nntrainer"
        )
    hidden = config.get("hidden_size")
    emb = Q6_K.name if isinstance(hidden, int) and Q6_K.fits(hidden) else F32.name
    return (f"embed_tokens={emb}",)


def plan_export(
    nf: Any,
    out_dir: str | os.PathLike[str],
    *,
    isa: str = "x86",
    runtime: RuntimeOptions | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    source: str | os.PathLike[str] | None = None,
) -> ExportPlan:
    """Check that ``nf`` (an open NNTR file) can run in nntrainer and decide every byte.

    Raises a one-line :class:`NntrError` for anything the runtime could not load.
    """
    runtime = runtime or RuntimeOptions()
    runtime.validate()
    isa = isa.lower()
    if isa not in ISA_LAYOUTS:
        raise UsageError(f"unknown --isa {isa!r}; choose one of {', '.join(ISA_LAYOUTS)}")
    config: dict[str, Any] = dict(nf.config)
    layout: ArchitectureLayout = layout_for_config(config)
    entries = _entries(nf)
    tied = _is_tied(config, set(entries))
    slots = layout.slots(config, tied)

    wanted = {s.name for s in slots}
    missing = [s.name for s in slots if s.name not in entries]
    extra = sorted(n for n in entries if n not in wanted)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UsageError(
            f"{layout.architecture} needs tensor {missing[0]}{more}, which the file lacks"
            + ("; the model is untied but has no lm_head" if missing[0] == "lm_head.weight" else "")
        )
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise UsageError(
            f"the file has tensor {extra[0]}{more} that nntrainer's {layout.architecture} "
            "does not load (biases, tied heads stored twice, or another architecture)"
        )
    pairs = [(s, entries[s.name]) for s in slots]
    for slot, entry in pairs:
        shape = tuple(int(x) for x in entry.shape)
        if shape != slot.shape:
            raise UsageError(
                f"{slot.name} has shape {list(shape)}, but the config implies "
                f"{list(slot.shape)}; the runtime builds its layers from config.json"
            )
    _check_types(pairs)
    tensors = [_plan_tensor(slot, entry, isa) for slot, entry in pairs]

    def role_type(role: Role) -> str | None:
        for t in tensors:
            if t.slot.role is role:
                return Q4_0.name if t.out_type in ISA_LAYOUTS.values() else t.out_type
        return None

    fc = role_type(Role.LINEAR) or F32.name
    emb = role_type(Role.EMBEDDING) or F32.name
    head = None if tied else (role_type(Role.LM_HEAD) or F32.name)

    warnings: list[str] = []
    runtime_cfg = _runtime_config(config, layout.architecture, tied, warnings)
    num_to_generate, init_seq_len, max_seq_len = _fit_positions(
        runtime, runtime_cfg, layout, warnings
    )

    source_path = Path(source_dir).expanduser() if source_dir is not None else None
    if source_path is not None and not source_path.is_dir():
        raise UsageError(f"--tokenizer {source_path} is not a folder")
    if source_path is None:
        source_path = _source_from_metadata(config)
    tokenizer_sources = (
        [source_path / n for n in TOKENIZER_FILES if (source_path / n).is_file()]
        if source_path is not None
        else []
    )
    gguf = _gguf_source(config) if source_dir is None else None
    if gguf is not None and not any(p.name == "tokenizer.json" for p in tokenizer_sources):
        from nntrtool.export.gguf_tokenizer import gguf_tokenizer_files

        made, problem = gguf_tokenizer_files(gguf)
        tokenizer_sources = made or tokenizer_sources
        if problem is not None:
            warnings.append(problem)
    elif not any(p.name == "tokenizer.json" for p in tokenizer_sources):
        warnings.append(
            "no tokenizer.json found in the source; the runtime needs one: copy it into the "
            "folder or pass --tokenizer DIR"
        )

    gen = _generation_config(config, source_path, runtime, warnings)

    out_abs = Path(os.path.abspath(os.fspath(out_dir)))
    stem = Path(os.fspath(source)).stem if source is not None else "model"
    file_name = runtime.model_file_name or f"{stem}-{fc}-{isa}.bin"
    nntr_cfg: dict[str, Any] = {
        "model_tensor_type": f"{_dtype(fc)}-FP32",
        "model_file_name": file_name,
        "fc_layer_dtype": _dtype(fc),
        "embedding_dtype": _dtype(emb),
    }
    if head is not None:
        nntr_cfg["lmhead_dtype"] = _dtype(head)
    nntr_cfg.update(
        {
            "bad_word_ids": [int(i) for i in runtime.bad_word_ids],
            "fsu": False,
            "num_to_generate": num_to_generate,
            "init_seq_len": init_seq_len,
            "max_seq_len": max_seq_len,
            "batch_size": int(runtime.batch_size),
            "tokenizer_file": runtime.tokenizer_file or str(out_abs / "tokenizer.json"),
            "sample_input": runtime.sample_input
            if runtime.sample_input is not None
            else _sample_input(tokenizer_sources),
        }
    )
    return ExportPlan(
        source=Path(os.fspath(source)) if source is not None else None,
        architecture=layout.architecture,
        isa=isa,
        tied=tied,
        tensors=tensors,
        fc_dtype=_dtype(fc),
        embedding_dtype=_dtype(emb),
        lmhead_dtype=_dtype(head) if head is not None else None,
        config=runtime_cfg,
        generation_config=gen,
        nntr_config=nntr_cfg,
        tokenizer_sources=tokenizer_sources,
        warnings=warnings,
    )


# --------------------------------------------------------------------------------------------
# writing


def _write_all(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(data)).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class _BackgroundWriter:
    """Writes on one thread while the caller prepares the next chunk (both release the GIL).

    At most ``depth`` writes are in flight, so memory stays a few chunks whatever the model.
    """

    def __init__(self, fd: int, depth: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self.fd = fd
        self.depth = depth
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="nntrtool-export-write")
        self._pending: list[Any] = []

    def write(
        self, data: np.ndarray, offset: int, after: Any = None, stride: int | None = None
    ) -> None:
        """Queue ``data`` for ``offset``; ``after()`` runs once it is written."""
        while len(self._pending) >= self.depth:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._job, data, offset, after, stride))

    def write_rows(self, block: np.ndarray, offset: int, stride: int) -> None:
        """Queue each row ``i`` of ``block`` for ``offset + i * stride``, as one job."""
        self.write(block, offset, stride=stride)

    def _job(self, data: np.ndarray, offset: int, after: Any, stride: int | None) -> None:
        if stride is None:
            _write_all(self.fd, data, offset)
        else:
            for i in range(data.shape[0]):
                _write_all(self.fd, data[i], offset + i * stride)
        if after is not None:
            after()

    def close(self) -> None:
        """Wait for every queued write; re-raises the first failure."""
        try:
            for future in self._pending:
                future.result()
        finally:
            self._pending.clear()
            self._pool.shutdown(wait=True)


def _transpose(a: np.ndarray) -> np.ndarray:
    """``a.T`` made contiguous, in strips of 16 rows: about 8x numpy's one-shot copy, whose
    scattered writes miss the cache (measured 1.1-1.4 GB/s against 0.17 GB/s)."""
    rows, cols = a.shape
    out = np.empty((cols, rows), dtype=a.dtype)
    for r0 in range(0, rows, 16):
        out[:, r0 : r0 + 16] = a[r0 : r0 + 16].T
    return out


def _relayout_backend(plan: ExportPlan) -> str:
    """numpy or numba for the Q4_0 re-layouts: a small model skips numba's compile."""
    from nntrtool.quant.kernel_cost import choose_backend, repack_use

    uses = []
    for t in plan.tensors:
        if t.out_type in ISA_LAYOUTS.values() and not _same_layout(t):
            uses.append(repack_use(t.params))
            if t.source_layout is not None:
                uses.append(repack_use(t.params, unpack=True))
    return choose_backend("auto", uses)


def _same_layout(t: TensorExport) -> bool:
    return t.source_layout is not None and t.source_layout.name == t.out_type


def _write_tensor(
    w: _BackgroundWriter,
    offset: int,
    nf: Any,
    t: TensorExport,
    progress: ProgressLike | None,
    budget: int,
    backend: str = "auto",
) -> None:
    """Queue one tensor for ``offset``; source pages are dropped as soon as they are used."""
    from nntrtool.convert.memory import release_pages

    raw = np.asarray(nf.raw(t.slot.name))
    name = t.slot.name
    if t.transposed:
        rows, cols = t.slot.shape  # source [out, in]; written [in, out]
        src = raw.view(np.float32).reshape(rows, cols)
        # a band of whole source rows at a time: contiguous to read, and its transpose lands
        # as one segment in each output row, so memory stays at a few bands whatever the size
        band = max(1, budget // (cols * 4))
        for r0 in range(0, rows, band):
            part = src[r0 : r0 + band]
            block = _transpose(part)  # [cols, band]
            release_pages(part)
            if part.shape[0] == rows:
                w.write(block, offset)
            else:
                # row c of the block belongs at row c of the output, columns r0 onwards
                w.write_rows(block, offset + r0 * 4, rows * 4)
            if progress is not None:
                progress.advance(part.size, name)
        return
    if t.out_type in ISA_LAYOUTS.values():
        from nntrtool.quant import repack, unpack

        rows, cols = t.slot.shape
        row_bytes = Q4_0.row_bytes(cols)
        src = raw.reshape(rows, row_bytes)
        group = 8  # a multiple of every layout's row group, so chunks never split a group
        step = max(group, budget // row_bytes // group * group)
        same = _same_layout(t)
        for r0 in range(0, rows, step):
            chunk = src[r0 : r0 + step]
            if same:
                w.write(chunk, offset + r0 * row_bytes, after=lambda c=chunk: release_pages(c))
            else:
                plain = (
                    unpack(chunk, t.source_layout, backend=backend) if t.source_layout else chunk
                )
                w.write(repack(plain, t.out_type, backend=backend), offset + r0 * row_bytes)
                release_pages(chunk)
            if progress is not None:
                progress.advance(chunk.shape[0] * cols, name)
        return
    flat = raw.reshape(-1)
    per_byte = t.params / max(1, t.nbytes)
    for b0 in range(0, flat.size, budget):
        part = flat[b0 : b0 + budget]
        w.write(part, offset + b0, after=lambda p=part: release_pages(p))
        if progress is not None:
            progress.advance(int(round(part.size * per_byte)), name)


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


def check_output(out_dir: Path, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an existing ``out_dir`` without ``force``, a file in its place, a missing parent,
    or an ``out_dir`` holding one of the ``inputs`` (replacing it would delete them)."""
    if out_dir.exists() or out_dir.is_symlink():
        if not force:
            raise OutputExistsError(f"{out_dir} exists; pass --force to replace it")
        if not out_dir.is_dir():
            raise UsageError(f"{out_dir} exists and is not a folder; remove it or pick another")
        for path in inputs:
            if _within(path, out_dir):
                raise UsageError(
                    f"{path} is inside {out_dir}, which --force would replace; export to "
                    "another folder"
                )
    parent = out_dir.parent
    if not parent.is_dir():
        raise UsageError(f"the folder {parent} does not exist; create it first")


def _check_space(parent: Path, need: int) -> None:
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return
    if free < need:
        from nntrtool.cli.display import human_bytes

        raise DiskFullError(
            f"{parent} has {human_bytes(free)} free but the export needs about "
            f"{human_bytes(need)}; free some space or choose another folder"
        )


def write_export(
    plan: ExportPlan,
    nf: Any,
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: ProgressLike | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> list[str]:
    """Write the planned folder atomically; returns the names of the files written."""
    out_dir = Path(os.path.abspath(os.fspath(out_dir)))
    inputs = tuple(plan.tokenizer_sources) + ((plan.source,) if plan.source else ())
    check_output(out_dir, force, inputs)
    extra = sum(p.stat().st_size for p in plan.tokenizer_sources) + (1 << 20)
    _check_space(out_dir.parent, plan.weight_bytes + extra)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        files = [plan.model_file_name]
        fd = os.open(tmp / plan.model_file_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            writer = _BackgroundWriter(fd)
            backend = _relayout_backend(plan)
            try:
                offset = 0
                for t in plan.tensors:
                    _write_tensor(
                        writer, offset, nf, t, progress, max(1, int(chunk_bytes)), backend
                    )
                    offset += t.nbytes
            finally:
                writer.close()
        finally:
            os.close(fd)
        written = (tmp / plan.model_file_name).stat().st_size
        if written != plan.weight_bytes:  # a bug, not a user error: never ship a bad file
            raise RuntimeError(f"wrote {written} bytes, planned {plan.weight_bytes}")
        for name, obj in (
            ("config.json", plan.config),
            ("generation_config.json", plan.generation_config),
            ("nntr_config.json", plan.nntr_config),
        ):
            (tmp / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", "utf-8")
            files.append(name)
        for src in plan.tokenizer_sources:
            shutil.copyfile(src, tmp / src.name)
            files.append(src.name)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
        return files
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno == errno.ENOSPC:
            raise DiskFullError(
                f"the disk filled up while writing {out_dir}; nothing was written"
            ) from None
        raise UsageError(f"could not write {out_dir}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_target(target: str) -> None:
    """Raise ``UsageError`` unless ``target`` is a runtime export knows."""
    if target.lower() not in TARGETS:
        raise UsageError(f"unknown --target {target!r}; choose one of {', '.join(TARGETS)}")


def _open_nntr(path: Path) -> Any:
    from nntrtool.format import NntrFile

    return NntrFile(path)  # refuses missing paths, folders and bad files with one line


def export_nntr(
    nntr_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    target: str = "nntrainer",
    isa: str = "x86",
    *,
    force: bool = False,
    progress: ProgressFactory | None = None,
    runtime: RuntimeOptions | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> ExportResult:
    """Export an NNTR file to a folder nntrainer's CausalLM application runs as is.

    ``source_dir`` is where the tokenizer and generation config come from (default: the
    source recorded in the file, when it is still there). ``progress`` is a factory
    ``(total params, description) -> context manager yielding a progress object``, opened
    around the writing only. Raises :class:`NntrError`.
    """
    check_target(target)
    start = time.perf_counter()
    path = Path(os.fspath(nntr_path))
    out = Path(os.path.abspath(os.fspath(out_dir)))
    if not dry_run:
        check_output(out, force, (path,) + ((Path(source_dir),) if source_dir else ()))
    nf = _open_nntr(path)
    try:
        plan = plan_export(nf, out, isa=isa, runtime=runtime, source_dir=source_dir, source=path)
        if dry_run:
            return ExportResult(out, plan, [], time.perf_counter() - start, dry_run=True)
        bar = progress(plan.params, f"export {path.name}") if progress else contextlib.nullcontext()
        with bar as prog:
            files = write_export(plan, nf, out, force=force, progress=prog, chunk_bytes=chunk_bytes)
    finally:
        close = getattr(nf, "close", None)
        if callable(close):
            close()
    return ExportResult(out, plan, files, time.perf_counter() - start)


__all__ = [
    "CONVERT_HINT",
    "ISA_LAYOUTS",
    "TOKENIZER_FILES",
    "ExportPlan",
    "ExportResult",
    "ProgressFactory",
    "RuntimeOptions",
    "TensorExport",
    "check_output",
    "check_target",
    "export_nntr",
    "nntrainer_type_overrides",
    "plan_export",
    "write_export",
]
