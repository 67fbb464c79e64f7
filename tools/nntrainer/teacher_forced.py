"""Teacher-forced check: transformers on the prompt followed by the ids the app generated,
its logits compared with the app's at every step (weights dequantized from the NNTR file).

usage: teacher_forced.py HF_DIR NNTR_FILE|FOLDER APP_STDOUT APP_LOGITS "PROMPT IDS"
(a FOLDER: the weights as the exported folder holds them, for Q4_K and F16 layers)
                         [--no-clamp] [--zero-router-bias]
Separates "numerically different" from "a near-tie went the other way and the texts parted".
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from runlog import app_ids, app_logits, load_reference


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("hf", "nntr", "stdout", "logits", "prompt"):
        ap.add_argument(name)
    ap.add_argument("--no-clamp", action="store_true", help="GPT-OSS without the SwiGLU clamp")
    ap.add_argument("--zero-router-bias", action="store_true", help="GPT-OSS, router biases 0")
    a = ap.parse_args()
    folder = a.nntr if Path(a.nntr).is_dir() else None  # an exported folder's own weights
    model = load_reference(
        a.hf,
        None if folder else a.nntr,
        no_clamp=a.no_clamp,
        zero_router_bias=a.zero_router_bias,
        folder=folder,
    )
    ids = [int(t) for t in a.prompt.split()]
    got = app_ids(a.stdout, a.prompt)
    if not got:
        print("the app's output has no generated ids")
        return 1
    app = app_logits(a.logits, model.config.vocab_size)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids + got[:-1]])).logits[0, len(ids) - 1 :].numpy()
    n = min(len(app), len(ref))
    diffs = [float(np.abs(app[k] - ref[k]).max()) for k in range(n)]
    flips = [k for k in range(n) if int(app[k].argmax()) != int(ref[k].argmax())]
    print(
        f"teacher-forced over {n} steps: max|dlogit| {max(diffs):.3f}; "
        f"logit std {ref.std():.2f}; argmax differs at {len(flips)} steps"
    )
    print("  per-step max|dlogit|:", " ".join(f"{d:.3f}" for d in diffs))
    for k in flips:
        mine, theirs = int(app[k].argmax()), int(ref[k].argmax())
        top = np.sort(ref[k])
        print(
            f"  step {k}: app {mine} ref {theirs}; ref top1-top2 gap {top[-1] - top[-2]:.3f}; "
            f"ref logit(ref) - ref logit(app) {ref[k][theirs] - ref[k][mine]:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
