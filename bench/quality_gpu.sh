#!/bin/bash
# The issue-17 quality tables (SmolLM2-135M and Qwen2.5-Coder-1.5B, Wikipedia split, ours vs the authors')
# on one GPU, in one call that ends by itself before LIMIT seconds.
#
#   bench/quality_gpu.sh SMOL.gguf QWEN.gguf WIKI_SPLIT.json PEER_DIR OUT [LIMIT_S=450]
#   QUALITY_PHASE=qwen bench/quality_gpu.sh ...        # the Qwen rows (a second call)
#   QUALITY_PHASE="smollm2-solvers qwen" ...           # words: smollm2 (= smollm2-solvers + siblings), qwen, qwen-authors,
#                                                      # matched-smollm2, matched-qwen (ours vs the authors' SpQR with the
#                                                      # same rule and threshold, both uncapped, plus the GPTQ pairs)
#
# What comes back: $OUT/results.tgz (every part JSON) and $OUT/logs.txt / logs.tgz (a call returns at most 8 files).
#
# Why five processes: the solvers' column loops are launch-bound (the GPU idles between tiny kernels) and
# the file write/decode of each row is CPU work, so independent rows run side by side on one GPU and
# 16 cores. Rows are written to $W/<model>/<part>.json after every row (tarred into OUT at the end); a second
# call with the same QUALITY_WORK (default /tmp/q17run: HF folders, finished rows) resumes where the first stopped.
set -u
SMOL=$1 QWEN=$2 SPLIT=$3 PEERS=$4 OUT=$(realpath -m "$5") LIMIT=${6:-450}
W=${QUALITY_WORK:-/tmp/q17run}
PHASE=${QUALITY_PHASE:-smollm2}
[[ " $PHASE " == *" smollm2 "* ]] && PHASE="$PHASE smollm2-solvers siblings"
t0=$(date +%s)
mkdir -p "$W/smollm2" "$W/qwen1.5b" "$W/logs" "$OUT"
[ -f "$W/smollm2/smollm2-135m-hf/model.safetensors" ] ||
  python bench/gguf_hf.py "$SMOL" "$W/smollm2/smollm2-135m-hf" --device cuda
[[ "$PHASE" != *qwen* ]] || [ -f "$W/qwen1.5b/qwen2.5-coder-1.5b-hf/model.safetensors" ] ||
  python bench/gguf_hf.py "$QWEN" "$W/qwen1.5b/qwen2.5-coder-1.5b-hf" --device cuda
echo "[$(( $(date +%s) - t0 ))s] HF folders ready"
COMMON=(--corpus wiki --wiki-split "$SPLIT" --peer-dir "$PEERS" --device cuda --nsamples 128 --seqlen 512
        --batch-size 16 --eval-seq-len 512 --threads 3 --verbose)
export OMP_NUM_THREADS=3 NUMBA_NUM_THREADS=3
run() {  # run MODEL PART TARGETS METHODS [extra args]: one quality.py process, resumed from $W
  local model=$1 part=$2 targets=$3 methods=$4; shift 4
  local left=$(( LIMIT - ($(date +%s) - t0) - 20 ))
  (( left >= 1 )) || left=1  # timeout 0 would mean no limit
  timeout "$left" python bench/quality.py --out "$W/$model" --model "$model" --targets "$targets" \
    --methods "$methods" --results "$W/$model/$part.json" "${COMMON[@]}" "$@" > "$W/logs/$model-$part.log" 2>&1
  echo "$model/$part rc=$? after $(( $(date +%s) - t0 ))s"
}
# The equal-bits SpQR pairs: --outlier-threshold is both sides' T (SmolLM2: ~3 at 1.1, ~3.5 at 0.8, ~4 at 0.5,
# ~4.6 at 0.2 give equal bits; docs/quality.md, third H200 run). One spec for every part, so --merge takes them.
ERR=(--outlier-rule error --no-outlier-cap --outlier-threshold 3=1.1,3.5=0.8,4=0.5,4.6=0.2)
# Ours are fast since the CUDA-graph solver (~1 s per SmolLM2 block); the authors' SpQR (~12 s per block) is the
# long pole, so each SpQR width gets its own process (ours first: the authors' row takes its bit count).
if [[ "$PHASE" == *smollm2-solvers* ]]; then
  for t in 3 3.5 4 4.6; do run smollm2 "spqr-$t" "$t" SpQR,SpQR-authors & done
  run smollm2 gptq 3,3.5,4,4.6 GPTQ,GPTQ-authors,RTN &
fi
[[ "$PHASE" == *siblings* ]] && run smollm2 siblings 3,4,2,3.5,4.6 SqueezeLLM,QuIP &
if [[ " $PHASE " == *" qwen "* || "$PHASE" == *qwen-authors* ]]; then  # qwen: ours and the siblings first; an authors' SpQR row needs about one call of its own
  run qwen1.5b q4 4 "SpQR,GPTQ,GPTQ-authors,RTN,SqueezeLLM,QuIP" --eval-tokens 65536 &
  run qwen1.5b q3 3 "SpQR,GPTQ,GPTQ-authors,RTN,SqueezeLLM,QuIP" --eval-tokens 65536 &
  run qwen1.5b q35 3.5,4.6 "SpQR,GPTQ,RTN,SqueezeLLM" --eval-tokens 65536 &
  [[ "$PHASE" == *qwen-authors* ]] && run qwen1.5b qa4 4 "SpQR,SpQR-authors" --eval-tokens 65536 &
fi
if [[ "$PHASE" == *matched-smollm2* ]]; then
  run smollm2 err3 3 SpQR,SpQR-authors "${ERR[@]}" &
  run smollm2 err35 3.5 SpQR,SpQR-authors "${ERR[@]}" &
  run smollm2 err4 4 SpQR,SpQR-authors "${ERR[@]}" &
  run smollm2 err46 4.6 SpQR,SpQR-authors "${ERR[@]}" &
  run smollm2 gptq 3,3.5,4,4.6 GPTQ,GPTQ-authors &
fi
if [[ "$PHASE" == *matched-qwen* ]]; then  # at most three processes: six did not finish a SpQR pair in 540 s
  run qwen1.5b err3 3 SpQR,SpQR-authors "${ERR[@]}" --eval-tokens 65536 &
  run qwen1.5b err4 4 SpQR,SpQR-authors "${ERR[@]}" --eval-tokens 65536 &
  run qwen1.5b gptqa 3,3.5,4 GPTQ,GPTQ-authors --eval-tokens 65536 &
fi
wait
(cd "$W" && find smollm2 qwen1.5b -maxdepth 1 -name '*.json' | tar czf "$OUT/results.tgz" -T -)
for f in "$W"/logs/*.log; do
  echo "== $f"; grep -E "^\[|Error|error|Traceback" "$f" | tail -25
done > "$OUT/logs.txt"
tar czf "$OUT/logs.tgz" -C "$W" logs
tail -c 9000 "$OUT/logs.txt"
echo "quality_gpu.sh done in $(( $(date +%s) - t0 ))s"
