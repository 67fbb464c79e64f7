"""Write tiny Qwen3-MoE and GPT-OSS models exported for nntrainer's CausalLM application.

For each family a tiny random model is built with transformers (2 layers, hidden 64, 8 experts,
2 per token; GPT-OSS also MXFP4-packed as the published checkpoint stores it), converted by
nntrtool and exported in F32 and in Q4_0 for the given ISA, next to the Hugging Face folders
they come from (to compare the runtime's output with transformers'):

    python examples/make_tiny_moe_folders.py OUT_DIR [--isa x86|arm]

    OUT_DIR/hf/{qwen3_moe,gpt_oss,gpt_oss_mxfp4}        the transformers models
    OUT_DIR/{qwen3_moe,gpt_oss,gpt_oss_mxfp4}-{f32,q4_0}  folders for nntr_causallm

The tokenizer is a real byte-level BPE of 256 tokens (one per byte), so any prompt encodes; the
sample prompt is "Hello" (5 tokens), within GPT-OSS's sliding window of 8 (see
docs/NNTRAINER.md). Needs torch and transformers (``pip install 'nntrtool[torch]'``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from moe_models import pack_gpt_oss_mxfp4, save_gpt_oss, save_qwen3_moe  # noqa: E402

from nntrtool.convert import ConvertOptions  # noqa: E402
from nntrtool.export import RuntimeOptions, convert_and_export  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--isa", default="x86", choices=("x86", "arm"))
    args = ap.parse_args()
    hf = args.out / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    gpt = save_gpt_oss(hf / "gpt_oss")
    sources = {
        "qwen3_moe": save_qwen3_moe(hf / "qwen3_moe"),
        "gpt_oss": gpt,
        "gpt_oss_mxfp4": pack_gpt_oss_mxfp4(gpt, hf / "gpt_oss_mxfp4"),
    }
    # a prompt of 5 byte tokens: within GPT-OSS's sliding window of 8, past which the
    # runtime's prefill is known to be wrong
    runtime = RuntimeOptions(
        num_to_generate=16, init_seq_len=32, max_seq_len=64, sample_input="Hello"
    )
    for name, src in sources.items():
        for qtype in ("f32", "q4_0"):
            out = args.out / f"{name}-{qtype}"
            _, result = convert_and_export(
                src, out, ConvertOptions(quant_type=qtype, force=True), isa=args.isa,
                runtime=runtime,
            )  # fmt: skip
            print(
                f"{out}: {result.plan.architecture}, {result.plan.nntr_config['model_tensor_type']}"
            )
            for warning in result.plan.warnings:
                print(f"  warning: {warning}")


if __name__ == "__main__":
    main()
