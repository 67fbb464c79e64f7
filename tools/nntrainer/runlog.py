"""Helpers shared by the scripts here: read a run of nntr_causallm, load the reference model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

BANNER = "=================[ LLM"  # the timing banner the app prints after the generated text


def app_ids(stdout_path: str | Path, prompt: str) -> list[int] | None:
    """The ids the app generated (the ids tokenizer prints them after echoing the prompt)."""
    text = Path(stdout_path).read_text(errors="replace")
    start, end = text.find(prompt + "\n"), text.find(BANNER)
    if start < 0 or end < 0:
        return None
    return [int(t) for t in re.findall(r"-?\d+", text[start + len(prompt) : end])]


def app_logits(logits_path: str | Path, vocab: int) -> np.ndarray:
    """The NNTR_DUMP_LOGITS file as ``[steps, vocab]`` float32."""
    return np.fromfile(logits_path, dtype=np.float32).reshape(-1, vocab)


def load_reference(
    hf: str,
    nntr: str | None = None,
    *,
    no_clamp: bool = False,
    zero_router_bias: bool = False,
    folder: str | None = None,
) -> Any:
    """transformers' model of ``hf`` in float32, every weight replaced by its dequantized value
    from ``nntr`` or, with ``folder``, from an exported folder as the test reader reads it (for
    types the export encodes itself: Q4_K, F16); ``no_clamp`` lifts GPT-OSS's SwiGLU limit and
    ``zero_router_bias`` zeroes its router biases, to match what the runtime computes."""
    import torch
    from transformers import AutoModelForCausalLM

    overrides = {"swiglu_limit": 1e6} if no_clamp else {}
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32, **overrides).eval()
    if nntr:
        from nntrtool.format import NntrFile
        from nntrtool.verify.logits import _replace_weights

        state, replaced, unused = model.state_dict(), set(), []
        with NntrFile(nntr) as nf:
            _replace_weights(nf, state, replaced, unused, "auto", None)
        missing = [name for name in state if name not in replaced]
        print(f"replaced {len(replaced)}; not in the file: {missing}; unused: {unused}")
    if folder:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
        from nntrainer_reader import read_folder

        weights = read_folder(folder, "x86").state_dict
        missing, unexpected = model.load_state_dict(
            {k: torch.from_numpy(v) for k, v in weights.items()}, strict=False
        )
        print(f"replaced {len(weights)} from {folder}; missing {missing}; unexpected {unexpected}")
    if zero_router_bias:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.mlp.router.bias.zero_()
    return model
