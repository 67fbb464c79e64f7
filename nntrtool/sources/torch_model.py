"""The source model as a transformers model in float32: the reference that ``verify --logits``,
``verify --text`` and ``imatrix`` run (needs the ``torch`` extra)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.errors import NntrError, UsageError
from nntrtool.sources.request import SourceRequest


def import_torch() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError:
        raise UsageError(
            "--logits needs torch and transformers: pip install 'nntrtool[torch]'"
        ) from None
    return torch, transformers


def load_model(src: Any, torch: Any, transformers: Any) -> Any:
    """The source model in float32, from its folder when there is one, else from its tensors."""
    root = getattr(src, "root", None)
    cfg = dict(src.config)
    tf_logging = transformers.utils.logging
    bar_was_on, verbosity = tf_logging.is_progress_bar_enabled(), tf_logging.get_verbosity()
    # transformers' own loading bar and notices would interleave with nntrtool's output
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
    gguf_path = Path(src.files[0]) if getattr(src, "gguf", None) is not None else None
    from nntrtool import lease

    # transformers keeps the parameters in the mapped weight files: nothing may cut them short
    # while the model runs (SIGBUS); see nntrtool/lease.py
    unleased = lease.wanted() and lease.hold(src.files) < len(src.files)
    try:
        if gguf_path is not None:  # transformers' own GGUF loading is the reference
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
        elif (
            root is not None
            and (Path(root) / "config.json").is_file()
            and any(Path(root).glob(pattern) for pattern in ("*.safetensors", "pytorch_model*.bin"))
        ):
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(root), dtype=torch.float32, local_files_only=True
            )
        else:
            config = transformers.AutoConfig.for_model(**cfg)
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            state = model.state_dict()
            for t in src.tensors:
                if t.name in state:
                    value = torch.from_numpy(np.ascontiguousarray(t.read_f32()))
                    with torch.no_grad():
                        state[t.name].copy_(value.reshape(state[t.name].shape))
    except NntrError:
        raise
    except Exception as err:  # transformers raises many kinds; the user needs one line
        raise UsageError(
            f"--logits: transformers cannot load the source model: {first_line(err)}"
        ) from None
    finally:
        if bar_was_on:
            tf_logging.enable_progress_bar()
        tf_logging.set_verbosity(verbosity)
    from nntrtool.sources.lora_records import apply_merged_weights

    apply_merged_weights(model, src)  # with adapters, the reference is the merged model
    if unleased:  # a weight file could not be leased: the parameters leave its map
        with torch.no_grad():
            for t in (*model.parameters(), *model.buffers()):
                t.data = t.data.clone()
    model.eval()
    return model


def load_source_model(
    source: SourceRequest | str | Path,
) -> tuple[Any, set[str]]:
    """The source model in float32 (adapters merged) and the names of its stored tensors."""
    torch, transformers = import_torch()
    with SourceRequest.of(source).open() as src:
        model = load_model(src, torch, transformers)
        if src.origin.get("gguf_raw_names"):  # GGUF names: the parameters they stand for
            from nntrtool.sources.raw_names import raw_source_names

            return model, raw_source_names(src, model.state_dict())
        return model, {t.name for t in src.tensors}


def state_slot(name: str, state: dict, placements: list[Any]) -> tuple[str, tuple, bool] | None:
    """Where a stored tensor goes in a model's state: ``(key, index, transpose)``; a slice of a
    fused parameter for MoE experts (per ``placements``), None when the model has no place."""
    if name in state:
        return name, (), False
    slot = next((p.resolve(name) for p in placements if p.resolve(name)), None)
    return slot if slot is not None and slot[0] in state else None


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def quiet_transformers(transformers: Any):
    """Silence transformers' notices (e.g. "sequence longer than the model's maximum"):
    the text is deliberately tokenized whole and cut into chunks afterwards."""
    tf_logging = transformers.utils.logging
    verbosity = tf_logging.get_verbosity()
    tf_logging.set_verbosity_error()
    try:
        yield
    finally:
        tf_logging.set_verbosity(verbosity)
