"""Computing an importance matrix: what each linear layer's input columns carry on real text.

The source model (transformers, float32) runs over the text in chunks of ``ctx`` tokens. A
forward pre-hook on every ``nn.Linear`` of the decoder layers adds, per input column, the sum
of the squared activations over all rows (tokens) it sees, in float64, and counts the rows.
The routers of mixture-of-experts layers count as linear layers too (``ffn_gate_inp``), and
the experts are followed one by one: per-expert ``nn.Linear`` modules
(``mlp.experts.3.up_proj``) become row 3 of llama.cpp's ``ffn_up_exps``; fused 3-D expert
weights (transformers' ``Experts`` modules holding ``gate_up_proj`` / ``down_proj``) are
followed through the router's choice of experts for every token. As in llama.cpp's imatrix
tool, the output head is not collected.

Memory: one model, one chunk's activations, and one float64 vector per input column per matrix.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.errors import DiskFullError, UsageError
from nntrtool.imatrix.format import ImatrixEntry, write_imatrix
from nntrtool.progress import ProgressFactory
from nntrtool.sources.request import SourceRequest

#: Decoder-layer submodule (Hugging Face) -> llama.cpp tensor stem, for the supported families.
_LAYER_NAMES: dict[str, str] = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "mlp.gate": "ffn_gate_inp",
    "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
    "mlp.shared_expert.up_proj": "ffn_up_shexp",
    "mlp.shared_expert.down_proj": "ffn_down_shexp",
    "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
}
_LAYER = re.compile(r"^(?:model\.)?layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^mlp\.experts\.(\d+)\.(gate|up|down)_proj$")


def llama_cpp_name(
    module_name: str, config: dict[str, Any] | None = None
) -> tuple[str, int | None] | None:
    """``model.layers.3.self_attn.q_proj`` -> ``("blk.3.attn_q.weight", None)``; an expert's
    Linear ``model.layers.3.mlp.experts.5.up_proj`` -> ``("blk.3.ffn_up_exps.weight", 5)``;
    None for modules llama.cpp's imatrix does not collect (outside the decoder layers).

    llama.cpp's own tables (:func:`nntrtool.names.hf_to_gguf`, for the model's architecture)
    decide first; the fixed table of the common decoder layouts covers what they do not know.
    """
    m = _LAYER.match(module_name)
    if m is None:
        return None
    if config:
        from nntrtool.names import hf_to_gguf

        found = hf_to_gguf(module_name + ".weight", config)
        if found is not None and found[0].startswith("blk."):
            name = found[0] if found[0].endswith(".weight") else found[0] + ".weight"
            return name, found[1]
    block, rest = int(m.group(1)), m.group(2)
    e = _EXPERT.match(rest)
    if e is not None:
        return f"blk.{block}.ffn_{e.group(2)}_exps.weight", int(e.group(1))
    stem = _LAYER_NAMES.get(rest)
    return (f"blk.{block}.{stem}.weight", None) if stem else None


@dataclass
class _Stats:
    """Running sums of one weight: float64 ``(n_mat, columns)`` and rows seen per matrix."""

    name: str
    sums: Any  # torch float64 tensor
    counts: np.ndarray

    def add(self, mat: int, x: Any) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).double()
        self.sums[mat] += (flat * flat).sum(dim=0)
        self.counts[mat] += flat.shape[0]


@dataclass
class ImatrixReport:
    """What ``nntrtool imatrix`` computed and wrote."""

    out: str
    source: str
    text: str
    tensors: int  # weights with statistics
    matrices: int  # including every expert
    chunks: int
    chunk_size: int
    tokens: int
    text_tokens: int
    never_activated: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The fields in order, ``seconds`` rounded to milliseconds."""
        return {**asdict(self), "seconds": round(self.seconds, 3)}


class ImatrixCollector:
    """Hooks on a transformers model that accumulate the importance statistics."""

    def __init__(self, model: Any) -> None:
        import torch

        config = model.config.to_dict() if hasattr(model, "config") else None

        self.stats: dict[str, _Stats] = {}
        self._handles: list[Any] = []
        experts: dict[str, int] = {}  # weight name -> number of experts, for per-expert Linears
        linears = []
        for name, module in model.named_modules():
            # nn.Linear, or a module applying its own 2-D weight (transformers' MoE routers)
            weight = getattr(module, "weight", None)
            if isinstance(module, torch.nn.Linear) or (
                isinstance(weight, torch.nn.Parameter) and weight.ndim == 2
            ):
                mapped = llama_cpp_name(name, config)
                if mapped is not None:
                    linears.append((module, *mapped))
                    if mapped[1] is not None:
                        experts[mapped[0]] = max(experts.get(mapped[0], 0), mapped[1] + 1)
            elif _is_fused_experts(module):
                self._hook_fused_experts(name, module, torch)
        for module, wname, expert in linears:
            cols = int(module.weight.shape[-1])
            stats = self._stats(wname, experts.get(wname, 1), cols, torch)
            self._handles.append(module.register_forward_pre_hook(_linear_hook(stats, expert or 0)))

    def _stats(self, name: str, n_mat: int, cols: int, torch: Any) -> _Stats:
        if name not in self.stats:
            self.stats[name] = _Stats(
                name, torch.zeros((n_mat, cols), dtype=torch.float64), np.zeros(n_mat, np.int64)
            )
        return self.stats[name]

    def _hook_fused_experts(self, name: str, module: Any, torch: Any) -> None:
        m = _LAYER.match(name)
        if m is None:
            return
        block = int(m.group(1))
        n_exp, hidden, inter = (int(s) for s in module.down_proj.shape)  # down: [E, H, I]
        gate = self._stats(f"blk.{block}.ffn_gate_exps.weight", n_exp, hidden, torch)
        up = self._stats(f"blk.{block}.ffn_up_exps.weight", n_exp, hidden, torch)
        down = self._stats(f"blk.{block}.ffn_down_exps.weight", n_exp, inter, torch)

        def hook(mod: Any, args: tuple, kwargs: dict) -> None:
            hidden_states = args[0] if args else kwargs["hidden_states"]
            top_k = args[1] if len(args) > 1 else kwargs["top_k_index"]
            x_all = hidden_states.reshape(-1, hidden_states.shape[-1])
            routed = top_k.reshape(x_all.shape[0], -1)
            with torch.no_grad():
                for e in torch.unique(routed).tolist():
                    if not 0 <= e < n_exp:
                        continue
                    rows = (routed == e).any(dim=-1).nonzero().squeeze(-1)
                    x = x_all[rows]
                    gate.add(e, x)
                    up.add(e, x)
                    down.add(e, _expert_hidden(mod, e, x, torch))

        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def entries(self) -> list[ImatrixEntry]:
        """The statistics, one entry per weight in name order (float32, as the file holds them)."""
        return [
            ImatrixEntry(s.name, s.sums.numpy().astype(np.float32), s.counts.astype(np.float32))
            for s in sorted(self.stats.values(), key=lambda s: s.name)
        ]


def _linear_hook(stats: _Stats, mat: int):
    def hook(module: Any, args: tuple) -> None:
        stats.add(mat, args[0])

    return hook


def _is_fused_experts(module: Any) -> bool:
    down = getattr(module, "down_proj", None)
    has_up = getattr(module, "gate_up_proj", None) is not None or (
        getattr(module, "up_proj", None) is not None
        and getattr(getattr(module, "up_proj", None), "ndim", 0) == 3
    )
    return getattr(down, "ndim", 0) == 3 and has_up and hasattr(module, "act_fn")


def _expert_hidden(module: Any, e: int, x: Any, torch: Any) -> Any:
    """The input of expert ``e``'s down projection for rows ``x``: act(x W_gate) * (x W_up)."""
    f = torch.nn.functional
    if getattr(module, "gate_up_proj", None) is not None:
        gate, up = f.linear(x, module.gate_up_proj[e]).chunk(2, dim=-1)
    else:
        gate, up = f.linear(x, module.gate_proj[e]), f.linear(x, module.up_proj[e])
    return module.act_fn(gate) * up


# ----------------------------------------------------------------------------------------------
# the command's library function


def check_output(out: str | Path, force: bool) -> Path:
    """The output path, checked before any work: its folder exists, it is new or ``force``
    (which replaces only an earlier importance matrix)."""
    from nntrtool.outputs import check_output_path

    return check_output_path(out, force, "imatrix")


def compute_imatrix(
    source: SourceRequest | str | Path,
    text_path: str | Path,
    out: str | Path,
    *,
    ctx: int = 512,
    chunks: int | None = None,
    force: bool = False,
    progress: ProgressFactory | None = None,
) -> ImatrixReport:
    """Run the source model over the text and write its importance matrix to ``out``."""
    from nntrtool.progress import token_progress
    from nntrtool.sources.text_chunks import load_text_chunks
    from nntrtool.sources.torch_model import import_torch, load_model

    start = time.perf_counter()
    path = check_output(out, force)
    torch, transformers = import_torch()
    source = SourceRequest.of(source)
    text = load_text_chunks(source, text_path, ctx=ctx, chunks=chunks)
    with source.open() as src:
        model = load_model(src, torch, transformers)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    high = max(max(c) for c in text.chunks)
    if high >= vocab:
        raise UsageError(
            f"--text: the tokenizer gives id {high}, outside the model's vocabulary ({vocab}); "
            "the tokenizer does not belong to this model: give the model folder with its own"
        )
    collector = ImatrixCollector(model)
    if not collector.stats:
        raise UsageError(
            f"{source}: no linear layer of a known decoder layout (model.layers.N...) "
            "to collect statistics from; give a decoder-only causal language model"
        )
    n = len(text.chunks)
    try:
        with token_progress(progress, n * ctx, "imatrix") as bar, torch.no_grad():
            for i, ids in enumerate(text.chunks):
                model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
                if bar is not None:
                    bar.advance(ctx, current=f"chunk {i + 1}/{n}")
    finally:
        collector.remove()
    entries = collector.entries()
    never = _never_activated(entries)
    try:
        write_imatrix(
            path,
            {e.name: (e.in_sum2, e.counts) for e in entries},
            chunk_count=n,
            datasets=[str(text_path)],
            chunk_size=ctx,
        )
    except OSError as err:
        if err.errno == 28:
            raise DiskFullError(f"no space left writing {path}: free some disk space") from None
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
    return ImatrixReport(
        out=str(path),
        source=str(source),
        text=str(text_path),
        tensors=len(entries),
        matrices=sum(int(e.counts.size) for e in entries),
        chunks=n,
        chunk_size=ctx,
        tokens=n * ctx,
        text_tokens=text.text_tokens,
        never_activated=never,
        seconds=time.perf_counter() - start,
    )


def _never_activated(entries: list[ImatrixEntry]) -> list[str]:
    """Weights (or experts of one) that no row reached: their statistics are all zero."""
    out = []
    for e in entries:
        zero = np.flatnonzero(e.counts == 0)
        if zero.size == e.counts.size:
            out.append(e.name)
        elif zero.size:
            listed = ", ".join(str(i) for i in zero[:16]) + (" ..." if zero.size > 16 else "")
            out.append(f"{e.name} (experts {listed})")
    return out
