"""Compare one run of nntr_causallm (stdout + NNTR_DUMP_LOGITS file) with reference.py's output.

usage: compare.py APP_STDOUT APP_LOGITS REF_PREFIX
Prints both id lists, per-step logit agreement and a RESULT line; exit 1 unless the ids match.
"""

import json
import sys

import numpy as np
from runlog import app_ids, app_logits


def main() -> int:
    out_path, logits_path, ref_prefix = sys.argv[1:4]
    with open(ref_prefix + ".json") as f:
        ref = json.load(f)
    ref_logits = np.load(ref_prefix + ".npy")
    got = app_ids(out_path, " ".join(str(t) for t in ref["prompt"]))
    if got is None:
        print("RESULT: the app did not finish (no prompt echo or no timing banner)")
        return 1
    want = ref["greedy"]
    print("app      ", got)
    print("reference", want)
    try:
        logits = app_logits(logits_path, ref_logits.shape[1])
    except (OSError, ValueError) as err:
        print("no logits:", err)
        logits = np.zeros((0, ref_logits.shape[1]), np.float32)
    for k, (a, b) in enumerate(zip(logits, ref_logits, strict=False)):
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
        top = np.sort(b)[-2:]
        print(
            f"step {k:2d}: app argmax {int(a.argmax()):4d} ref argmax {int(b.argmax()):4d}"
            f"  max|dlogit| {np.abs(a - b).max():.2e}  cos {cos:.6f}"
            f"  ref top1-top2 {top[1] - top[0]:.3f}"
        )
    print(f"logit steps: app {len(logits)}, ref {len(ref_logits)}")
    n = min(len(got), len(want))
    first_bad = next((k for k in range(n) if got[k] != want[k]), None)
    if first_bad is not None:
        status = f"MISMATCH at token {first_bad}"
    elif len(got) < len(want):
        status = f"PREFIX MATCH ({len(got)} of {len(want)})"
    else:
        status = "MATCH"
    print(f"RESULT: {status}; {n} compared")
    return 0 if status == "MATCH" else 1


if __name__ == "__main__":
    sys.exit(main())
