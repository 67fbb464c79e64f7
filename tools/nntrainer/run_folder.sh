#!/bin/bash
# run_folder.sh FOLDER REF_PREFIX [PROMPT]: run nntr_causallm on an exported FOLDER with token
# ids, keep FOLDER.stdout, FOLDER.stderr and FOLDER.logits.bin, and compare with the reference
# that reference.py wrote to REF_PREFIX.{json,npy}.
#   NNTR_CAUSALLM  the app built with ids-tokenizer.patch (required)
# Needs the nntrtool venv active (compare.py uses numpy). Exit status: compare.py's.
set -uo pipefail
APP=${NNTR_CAUSALLM:?set NNTR_CAUSALLM to the nntr_causallm built with ids-tokenizer.patch}
F=$(realpath "${1:?usage: run_folder.sh FOLDER REF_PREFIX [PROMPT]}")
REF=${2:?usage: run_folder.sh FOLDER REF_PREFIX [PROMPT]}
PROMPT=${3:-"1 17 42 99 256 3 77 5"}
HERE=$(cd "$(dirname "$0")" && pwd)
rm -f "$F.logits.bin"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} NNTR_DUMP_LOGITS=$F.logits.bin
( cd "$(dirname "$APP")" && timeout 300 "$APP" "$F" "$PROMPT" ) > "$F.stdout" 2> "$F.stderr"
echo "exit $?" | tee -a "$F.stdout"
python "$HERE/compare.py" "$F.stdout" "$F.logits.bin" "$REF"
