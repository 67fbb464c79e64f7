"""Tiny Qwen3-MoE and GPT-OSS models (tests/moe_models.py) with a wide initializer_range.

usage: make_moe.py OUT_DIR   -> OUT_DIR/qwen3_moe/hf, OUT_DIR/gpt_oss/hf, OUT_DIR/gpt_oss_mxfp4/hf
(the last holds the same GPT-OSS weights with MXFP4-packed experts, as published checkpoints do)
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from moe_models import pack_gpt_oss_mxfp4, save_gpt_oss, save_qwen3_moe  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    save_qwen3_moe(out / "qwen3_moe" / "hf", initializer_range=0.2)
    gpt_oss = save_gpt_oss(out / "gpt_oss" / "hf", initializer_range=0.2)
    pack_gpt_oss_mxfp4(gpt_oss, out / "gpt_oss_mxfp4" / "hf")
    print(out)


if __name__ == "__main__":
    main()
