"""transformers' greedy run of a saved model, the reference for one nntr_causallm run.

usage: reference.py HF_DIR OUT_PREFIX [--nntr FILE | --folder DIR] [--steps 17] [--prompt "1 17 42"]
                    [--no-clamp] [--zero-router-bias]
With --nntr every weight is replaced by its dequantized value from the NNTR file (for F32 that
is the source model). Writes OUT_PREFIX.json (prompt, greedy ids, smallest top1-top2 gap) and
OUT_PREFIX.npy ([steps, vocab] float32, the logits that chose each token).
"""

import argparse
import json

import numpy as np
import torch
from runlog import load_reference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hf")
    ap.add_argument("out")
    ap.add_argument("--nntr")
    ap.add_argument("--folder", help="weights from this exported folder (Q4_K, F16 layers)")
    ap.add_argument("--steps", type=int, default=17)
    ap.add_argument("--prompt", default="1 17 42 99 256 3 77 5")
    ap.add_argument("--no-clamp", action="store_true", help="GPT-OSS without the SwiGLU clamp")
    ap.add_argument("--zero-router-bias", action="store_true", help="GPT-OSS, router biases 0")
    a = ap.parse_args()
    model = load_reference(
        a.hf,
        a.nntr,
        no_clamp=a.no_clamp,
        zero_router_bias=a.zero_router_bias,
        folder=a.folder,
    )
    ids = [int(t) for t in a.prompt.split()]
    gen, logits = [], []
    with torch.no_grad():
        for _ in range(a.steps):  # a full pass per step: no KV-cache subtleties in the reference
            step = model(input_ids=torch.tensor([ids + gen])).logits[0, -1].float()
            gen.append(int(step.argmax()))
            logits.append(step.numpy())
    stacked = np.stack(logits)
    top2 = np.sort(stacked, axis=1)[:, -2:]
    gap = float((top2[:, 1] - top2[:, 0]).min())
    with open(a.out + ".json", "w") as f:
        json.dump({"prompt": ids, "greedy": gen, "min_top2_gap": gap}, f)
    np.save(a.out + ".npy", stacked)
    print("greedy", gen, f"min top1-top2 gap {gap:.4f}")


if __name__ == "__main__":
    main()
