#!/bin/bash
# bench.sh DIR: generation speed of nntr_causallm on the folders DIR/q4_0 and DIR/q4_k, in
# alternating runs (the order inside each round alternates too), with uptime's load average
# recorded just before each run.
#   NNTR_CAUSALLM  the app built with ids-tokenizer.patch (required)
#   THREADS        OMP_NUM_THREADS values to try (default "1 2")
#   ROUNDS         rounds per thread count (default 6)
#   PROMPT         token ids (default "1 17 42 99 256 3 77 5")
set -uo pipefail
APP=${NNTR_CAUSALLM:?set NNTR_CAUSALLM to the nntr_causallm built with ids-tokenizer.patch}
DIR=$(realpath "${1:?usage: bench.sh DIR (holding the folders DIR/q4_0 and DIR/q4_k)}")
PROMPT=${PROMPT:-"1 17 42 99 256 3 77 5"}
cd "$(dirname "$APP")" || exit 2
for T in ${THREADS:-1 2}; do
  for R in $(seq "${ROUNDS:-6}"); do
    if [ $((R % 2)) = 1 ]; then ORDER="q4_0 q4_k"; else ORDER="q4_k q4_0"; fi
    for Q in $ORDER; do
      LOAD=$(sed 's/^\([^ ]* [^ ]* [^ ]*\).*/\1/' /proc/loadavg)
      OUT=$(OMP_NUM_THREADS=$T timeout 300 "$APP" "$DIR/$Q" "$PROMPT" 2>&1)
      echo "threads $T round $R $Q load [$LOAD]: $(echo "$OUT" | grep -E '^(prefill|generation):' | tr '\n' ' ')"
    done
  done
done
