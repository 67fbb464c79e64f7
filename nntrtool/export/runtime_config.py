"""What nntrainer's CausalLM application reads besides the weights: config.json,
generation_config.json and nntr_config.json's run settings, and the source's tokenizer files.

The weight layout decides nothing here; what an architecture needs in its config (keys the
runtime reads under other names, RoPE scaling it applies) comes from its layout table.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nntrtool.architectures.nntrainer_layout import ArchitectureLayout
from nntrtool.errors import UsageError
from nntrtool.export.layouts import architecture_of
from nntrtool.model_config import ModelConfig

#: nntrainer's name of each type it runs, by nntrtool name.
RUNTIME_DTYPES = {
    "f32": "FP32",
    "q4_0": "Q4_0",
    "q6_k": "Q6_K",
    "q4_k": "Q4_K",
    "f16": "FP16",
}


def runtime_dtype(name: str) -> str:
    """nntrainer's name of a stored type (``q4_k`` -> ``Q4_K``)."""
    return RUNTIME_DTYPES[name]


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
                "the runtime needs max_seq_len >= init_seq_len: raise --max-seq-len or lower "
                "--init-seq-len"
            )
        if self.num_to_generate >= self.max_seq_len:
            raise UsageError(
                f"--num-to-generate {self.num_to_generate} leaves no room for the prompt in "
                f"--max-seq-len {self.max_seq_len}: lower --num-to-generate or raise "
                "--max-seq-len"
            )
        negative = [int(i) for i in self.bad_word_ids if int(i) < 0]
        if negative:
            raise UsageError(
                f"--bad-word-ids {negative[0]} is not a token id: give token ids of 0 or more, "
                "e.g. --bad-word-ids 0,5"
            )
        if self.model_file_name is not None and (
            not self.model_file_name
            or os.sep in self.model_file_name
            or self.model_file_name in (".", "..")
            or self.model_file_name in TOKENIZER_FILES
            or self.model_file_name.endswith(".json")
        ):
            raise UsageError(
                f"--model-file-name {self.model_file_name!r} must be a plain file name "
                "(no folder, not a .json or tokenizer file): give one such as model.bin"
            )


def _rope_theta(
    config: dict[str, Any], warnings: list[str], applied: frozenset[str] = frozenset()
) -> int:
    theta: Any = config.get("rope_theta")
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    candidates = [params] + [v for v in params.values() if isinstance(v, dict)]
    if theta is None:
        for p in candidates:
            if isinstance(p, dict) and p.get("rope_theta") is not None:
                theta = p["rope_theta"]
                break
    kinds = (
        {
            str(p.get("rope_type") or p.get("type"))
            for p in candidates + [scaling]
            if isinstance(p, dict) and (p.get("rope_type") or p.get("type"))
        }
        - {"default"}
        - applied
    )
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
        raise UsageError(
            f"the file's config has rope_theta {theta!r}, not a positive number: fix rope_theta "
            "in config.json and convert again"
        )
    if value != round(value):
        warnings.append(
            f"rope_theta {theta} rounded to {round(value)} (the runtime reads an integer)"
        )
    return int(round(value))


def runtime_config(
    config: dict[str, Any], layout: ArchitectureLayout, tied: bool, warnings: list[str]
) -> dict[str, Any]:
    out = {k: v for k, v in config.items() if k != "nntrtool"}
    out["architectures"] = [architecture_of(config)]
    out["rope_theta"] = _rope_theta(config, warnings, layout.rope_scaling)
    out["tie_word_embeddings"] = tied
    if out.get("use_sliding_window") is False:
        # the runtime applies any non-null window; Hugging Face ignores it when disabled
        out["sliding_window"] = None
    for key in ("max_position_embeddings", "rms_norm_eps", *layout.required):
        if out.get(key) is None:
            raise UsageError(
                f"the file's config lacks {key}, which the runtime needs; re-convert from a "
                "complete config.json"
            )
    for key, sources in layout.config_keys:
        value = next((config[k] for k in sources if config.get(k) is not None), None)
        if value is None:
            raise UsageError(
                f"the file's config lacks {' or '.join(sources)}, which the runtime reads as "
                f"{key}; re-convert from a complete config.json"
            )
        out[key] = value
    if layout.rope_scaling:
        out["rope_scaling"] = _rope_scaling(config, layout)
    warnings.extend(layout.check_config(config))
    return out


def _rope_scaling(config: dict[str, Any], layout: ArchitectureLayout) -> dict[str, Any]:
    """The ``rope_scaling`` object the runtime reads (transformers 5 writes rope_parameters)."""
    for where in ("rope_scaling", "rope_parameters"):
        params = config.get(where)
        if not isinstance(params, dict):
            continue
        kind = params.get("rope_type") or params.get("type")
        if kind in layout.rope_scaling and params.get("factor") is not None:
            out = {k: v for k, v in params.items() if k != "rope_theta"}
            out["rope_type"] = kind
            return out
    raise UsageError(
        f"{layout.architecture} needs a {'/'.join(sorted(layout.rope_scaling))} RoPE scaling "
        "with a factor in the config (rope_scaling or rope_parameters), and the file's config "
        "has none; re-convert from the model's own config.json"
    )


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if v is not None]
    return [int(value)]


def generation_config(
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


def sample_input(tokenizer_sources: list[Path]) -> str:
    for path in tokenizer_sources:
        if path.name in ("tokenizer_config.json", "chat_template.jinja", "chat_template.json"):
            try:
                if "<|im_start|>" in path.read_text("utf-8", errors="replace"):
                    return _CHATML_PROMPT
            except OSError:
                continue
    return _PLAIN_PROMPT


def gguf_source(config: dict[str, Any]) -> Path | None:
    """The GGUF file the NNTR file was converted from, when it was one and is still there."""
    src: Any = ModelConfig.of(config).record.get("source")
    path = src.get("path") if isinstance(src, dict) else None
    if isinstance(path, str) and path.lower().endswith(".gguf") and Path(path).is_file():
        return Path(path)
    return None


def source_from_metadata(config: dict[str, Any]) -> Path | None:
    """The folder holding the source's tokenizer files, from the file's recorded source."""
    meta = ModelConfig.of(config).record
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


def fit_positions(
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
    # past the table these classes abort (or read out of bounds).
    if not layout.rope_table_from_config or limit is None or min(init + n, total) <= int(limit):
        return n, init, total
    limit = int(limit)
    if limit < 2:
        raise UsageError(
            f"the file's config has max_position_embeddings {limit}, which leaves no room for a "
            "prompt and a generated token: fix it in config.json and convert again"
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


def tokenizer_sources_for(
    config: dict[str, Any], source_dir: Any, warnings: list[str]
) -> tuple[Path | None, list[Path]]:
    """The folder the tokenizer comes from and its files (made from a GGUF's vocabulary
    when the source was one); a warning when the runtime would find none."""
    source_path = Path(source_dir).expanduser() if source_dir is not None else None
    if source_path is not None and not source_path.is_dir():
        raise UsageError(
            f"--tokenizer {source_path} is not a folder: give the folder that holds tokenizer.json"
        )
    if source_path is None:
        source_path = source_from_metadata(config)
    tokenizer_sources = (
        [source_path / n for n in TOKENIZER_FILES if (source_path / n).is_file()]
        if source_path is not None
        else []
    )
    gguf = gguf_source(config) if source_dir is None else None
    if gguf is not None and not any(p.name == "tokenizer.json" for p in tokenizer_sources):
        from nntrtool.sources.gguf_tokenizer import gguf_tokenizer_files

        made, problem = gguf_tokenizer_files(gguf)
        tokenizer_sources = made or tokenizer_sources
        if problem is not None:
            warnings.append(problem)
    elif not any(p.name == "tokenizer.json" for p in tokenizer_sources):
        warnings.append(
            "no tokenizer.json found in the source; the runtime needs one: copy it into the "
            "folder or pass --tokenizer DIR"
        )
    return source_path, tokenizer_sources


def nntr_config(
    runtime: RuntimeOptions,
    fc: str,
    emb: str,
    head: str | None,
    isa: str,
    out_dir: Any,
    source: Any,
    tokenizer_sources: list[Path],
    lengths: tuple[int, int, int],
) -> dict[str, Any]:
    """``nntr_config.json``: the weight file, the layer types and the run settings."""
    num_to_generate, init_seq_len, max_seq_len = lengths
    out_abs = Path(os.path.abspath(os.fspath(out_dir)))
    stem = Path(os.fspath(source)).stem if source is not None else "model"
    file_name = runtime.model_file_name or f"{stem}-{fc}-{isa}.bin"
    nntr_cfg: dict[str, Any] = {
        "model_tensor_type": f"{runtime_dtype(fc)}-FP32",
        "model_file_name": file_name,
        "fc_layer_dtype": runtime_dtype(fc),
        "embedding_dtype": runtime_dtype(emb),
    }
    if head is not None:
        nntr_cfg["lmhead_dtype"] = runtime_dtype(head)
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
            else sample_input(tokenizer_sources),
        }
    )
    return nntr_cfg
