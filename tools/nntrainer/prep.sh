#!/bin/bash
# prep.sh DIR: convert DIR/hf to NNTR files, export each for nntrainer (x86), and write the
# transformers reference of each (weights dequantized from the NNTR file).
#   QUANTS  space-separated, from f32 q4_0 q4_0_q6k q4_k f16 (default "f32 q4_0"); q4_k and f16
#           are encoded by the export (--linear-type) and their reference reads the folder
#   PROMPT  token ids (default "1 17 42 99 256 3 77 5"; the MoE models have a vocabulary of 256)
#   ISA     x86 (default) or arm
# Needs the nntrtool venv active. A MoE model (config with num_experts / num_local_experts)
# gets its experts' type set explicitly, since a GPT-OSS source's MXFP4 experts would otherwise
# become Q8_0, which the runtime cannot run.
set -euo pipefail
DIR=${1:?usage: prep.sh DIR (holding DIR/hf)}
HERE=$(cd "$(dirname "$0")" && pwd)
PROMPT=${PROMPT:-"1 17 42 99 256 3 77 5"}
EXPORT=(--target nntrainer --isa "${ISA:-x86}" --num-to-generate 16 --init-seq-len 32
        --max-seq-len 64 --greedy --force -q)
MOE=no
grep -qE '"num_(local_)?experts"' "$DIR/hf/config.json" && MOE=yes
for Q in ${QUANTS:-f32 q4_0}; do
  LINEAR=(); REF=(--nntr "$DIR/$Q.nntr")
  case $Q in
    f32) CONV=(--quant-type f32); EXPERTS=f32;;
    q4_0) CONV=(--quant-type q4_0 --keep-f32 embed_tokens); EXPERTS=q4_0;;
    q4_0_q6k) CONV=(--quant-type q4_0 --type embed_tokens=q6_k); EXPERTS=q4_0;;
    q4_k) CONV=(--quant-type f32 --type embed_tokens=q6_k); LINEAR=(--linear-type q4_k); EXPERTS=f32;;
    f16) CONV=(--quant-type f32); LINEAR=(--linear-type f16); EXPERTS=f32;;
    *) echo "unknown quant $Q (f32, q4_0, q4_0_q6k, q4_k, f16)"; exit 2;;
  esac
  [ $MOE = yes ] && CONV+=(--type "mlp\\.experts\\.=$EXPERTS")
  OUT=$DIR/${Q}_${ISA:-x86}
  nntrtool convert "$DIR/hf" "$DIR/$Q.nntr" "${CONV[@]}" --force -q
  nntrtool export "$DIR/$Q.nntr" "$OUT" "${EXPORT[@]}" "${LINEAR[@]}"
  [ ${#LINEAR[@]} -gt 0 ] && REF=(--folder "$OUT")
  # the ids tokenizer ignores the file, but the app exits when tokenizer_file does not exist
  [ -e "$OUT/tokenizer.json" ] || touch "$OUT/tokenizer.json"
  python "$HERE/reference.py" "$DIR/hf" "$DIR/ref_$Q" "${REF[@]}" --prompt "$PROMPT" \
    > "$DIR/ref_$Q.log" 2>&1
  echo "$DIR $Q: $(tail -1 "$DIR/ref_$Q.log")"
done
