"""A Hugging Face ``config.json`` rebuilt from a GGUF file's metadata.

Which keys a family's GGUF holds and which config keys they become is declared in its module
(:mod:`nntrtool.architectures`); the keys are read with the meaning transformers' own GGUF
loader gives them, so the two configs agree key for key. This module holds what every family
shares: numbers checked, token ids, RoPE scaling, tied embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nntrtool.architectures import for_gguf
from nntrtool.architectures.base import COMMON_KEYS

_TOKEN_IDS = {
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
}


def build_config(
    arch: str,
    field: Callable[[str], Any],
    *,
    vocab_rows: int | None,
    has_output: bool,
    token_count: int | None,
    rope_factors: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """The config of a GGUF model: ``field(key)`` reads metadata (None when absent).

    ``vocab_rows`` is the token embedding's row count, ``has_output`` whether the file holds an
    ``output.weight`` (its absence means tied embeddings), ``token_count`` the length of the
    tokenizer's vocabulary, if any; ``rope_factors`` the LongRoPE factors read from the
    :data:`ROPE_FACTORS` tensors (``{"long_factor": [...], "short_factor": [...]}``).
    """
    family = for_gguf(arch)
    cfg: dict[str, Any] = {}
    if family is not None:
        cfg["architectures"] = [family.hf_class]
        cfg["model_type"] = family.model_type
    else:
        cfg["model_type"] = arch
    keys = family.config_keys if family is not None else COMMON_KEYS
    for suffix, name in keys.items():
        value = field(f"{arch}.{suffix}")
        if value is not None:
            cfg[name] = _number(f"{arch}.{suffix}", value, name in _FLOAT_KEYS)
    if "num_experts" in cfg:  # transformers 5 names it num_local_experts
        cfg["num_local_experts"] = cfg["num_experts"]
    if "num_attention_heads" in cfg:
        cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
        if "hidden_size" in cfg and "head_dim" not in cfg and cfg["num_attention_heads"]:
            cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    if "vocab_size" not in cfg or (vocab_rows is not None and cfg["vocab_size"] < vocab_rows):
        # The embedding's rows, as a checkpoint's vocab_size counts them: a stated vocabulary
        # shorter than the rows is the tokenizer's, the rows beyond it padding.
        vocab = vocab_rows if vocab_rows is not None else token_count
        if vocab is not None:
            cfg["vocab_size"] = int(vocab)
    if family is None or family.rope:
        rope: dict[str, Any] = {"rope_type": "default"}
        if "rope_theta" in cfg:
            rope["rope_theta"] = cfg["rope_theta"]
        rope.update(_rope_scaling(arch, field) or {})
        factors = dict(rope_factors or {})
        freqs = factors.pop("rope_freqs", None)
        if factors:
            rope.update(_longrope(arch, field, factors))
        if freqs is not None:
            rope.update(_llama3(cfg, freqs))
        cfg["rope_parameters"] = rope  # transformers 5's spelling; rope_theta for older readers
    cfg["tie_word_embeddings"] = not has_output
    for key, name in _TOKEN_IDS.items():
        value = field(key)
        if value is not None:
            cfg[name] = _number(key, value, False)
    if family is not None and family.hidden_act is not None:
        cfg.setdefault("hidden_act", family.hidden_act)
    if family is not None and family.finish_config is not None:
        family.finish_config(cfg, lambda key: field(f"{arch}.{key}"))
    return {k: _plain(v) for k, v in cfg.items()}


#: Config keys whose values are real numbers (the rest are counts).
_FLOAT_KEYS = (
    "rope_theta",
    "rms_norm_eps",
    "norm_epsilon",
    "layer_norm_epsilon",
    "attn_logit_softcapping",
    "final_logit_softcapping",
)


def _number(key: str, value: Any, real: bool) -> int | float:
    """A metadata count (or, ``real``, any number); SourceError for anything else."""
    ok = isinstance(value, (int, float)) if real else isinstance(value, int)
    if not ok or isinstance(value, bool) or value < 0:
        from nntrtool.errors import SourceError

        raise SourceError(f"the GGUF's metadata {key!r} is {value!r}, not a valid number")
    return value


#: YaRN's parameters beyond the factor: ``{GGUF key under "<arch>.rope.scaling.": rope key}``.
_YARN_KEYS = {
    "yarn_beta_fast": "beta_fast",
    "yarn_beta_slow": "beta_slow",
    "yarn_attn_factor": "attention_factor",
}
#: RoPE factors llama.cpp computes from the config and stores as tensors (Phi-3 128k's
#: LongRoPE factors, Llama 3.1's ``llama3`` frequency factors); they go back into the config.
ROPE_FACTORS = {
    "rope_factors_long.weight": "long_factor",
    "rope_factors_short.weight": "short_factor",
    "rope_freqs.weight": "rope_freqs",
}
#: ``(low_freq_factor, high_freq_factor, original_max_position_embeddings)`` of every published
#: Llama 3.x checkpoint (3.1, 3.2, 3.3), tried first.
_LLAMA3_KNOWN = ((1.0, 4.0, 8192),)


def _rope_scaling(arch: str, field: Callable[[str], Any]) -> dict[str, Any] | None:
    kind = field(f"{arch}.rope.scaling.type")
    factor = field(f"{arch}.rope.scaling.factor")
    if kind in (None, "none") or factor is None:
        return None
    out: dict[str, Any] = {"rope_type": kind, "factor": factor}
    original = field(f"{arch}.rope.scaling.original_context_length")
    if original is not None:
        out["original_max_position_embeddings"] = original
    if kind == "yarn":
        for suffix, name in _YARN_KEYS.items():
            value = field(f"{arch}.rope.scaling.{suffix}")
            if value is not None:
                out[name] = _number(f"{arch}.rope.scaling.{suffix}", value, True)
    return out


def _longrope(
    arch: str, field: Callable[[str], Any], factors: dict[str, list[float]]
) -> dict[str, Any]:
    """LongRoPE's parameters from llama.cpp's factor tensors (both or neither, equally long)."""
    from nntrtool.errors import SourceError

    long, short = factors.get("long_factor"), factors.get("short_factor")
    if long is None or short is None or len(long) != len(short):
        have = ", ".join(f"{k} of {len(v)}" for k, v in sorted(factors.items()))
        raise SourceError(
            f"the GGUF's LongRoPE factor tensors do not pair up ({have}; rope_factors_long and "
            "rope_factors_short must both be there, equally long); download or convert the "
            "GGUF again"
        )
    out: dict[str, Any] = {"rope_type": "longrope", "long_factor": long, "short_factor": short}
    original = field(f"{arch}.rope.scaling.original_context_length")
    if original is not None:
        out["original_max_position_embeddings"] = original
    return out


def _llama3_factors(head: int, theta: float, factor: float, low: float, high: float, old: int):
    """llama.cpp's ``rope_freqs`` for Llama 3's RoPE scaling (float64)."""
    import numpy as np

    freqs = 1.0 / theta ** (np.arange(0, head, 2, dtype=np.float64) / head)
    wavelen = 2 * np.pi / freqs
    smooth = (old / wavelen - low) / (high - low)
    out = 1 / ((1 - smooth) / factor + smooth)
    out[wavelen < old / high] = 1.0
    out[wavelen > old / low] = factor
    return out


def _llama3(cfg: dict[str, Any], values: list[float]) -> dict[str, Any]:
    """Llama 3's RoPE parameters from llama.cpp's ``rope_freqs`` tensor: the factor is its
    largest value; the other three are the published ones, or (low_freq_factor 1, as every
    Llama 3 has) fitted to the values between 1 and the factor; either must give the tensor
    back (to float32 precision) or the file is refused."""
    import numpy as np

    from nntrtool.errors import SourceError

    head, theta = cfg.get("head_dim"), cfg.get("rope_theta", 10000.0)
    v = np.asarray(values, np.float64)
    if not isinstance(head, int) or len(v) != head // 2 or not np.all(v >= 1):
        raise SourceError(
            f"the GGUF's rope_freqs.weight ({len(v)} values) is not Llama 3's RoPE scaling for "
            f"a head size of {head}; convert the original model, or pass --gguf-raw-names"
        )
    factor = float(np.float32(v.max()))
    candidates = list(_LLAMA3_KNOWN)
    if factor > 1:
        wavelen = 2 * np.pi * theta ** (np.arange(0, head, 2, dtype=np.float64) / head)
        mid = (v > 1 + 1e-6) & (v < factor * (1 - 1e-6))
        if mid.sum() >= 2:  # smooth = old / (high - 1) / wavelen - 1 / (high - 1)
            smooth = (1 / v[mid] - 1 / factor) / (1 - 1 / factor)
            slope, intercept = np.polyfit(1 / wavelen[mid], smooth, 1)
            if intercept < 0:
                high = round(1 - 1 / intercept, 3)
                candidates.append((1.0, high, int(round(slope * (high - 1)))))
    for low, high, old in candidates:
        if np.allclose(_llama3_factors(head, theta, factor, low, high, old), v, rtol=2e-6):
            return {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": old,
            }
    raise SourceError(
        "the GGUF's rope_freqs.weight matches no Llama 3 RoPE scaling nntrtool can rebuild "
        f"(factor {factor:g}; low_freq_factor 1 assumed); convert the original model, or pass "
        "--gguf-raw-names"
    )


def _plain(value: Any) -> Any:
    """Floats read as float32 rounded to the shortest decimal that reads back the same."""
    if isinstance(value, float):
        import numpy as np

        return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
