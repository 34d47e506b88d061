set -u
t0=$(date +%s)
cp .scratch/q19 /tmp/qp/ && cat /tmp/qp/q?? > /tmp/qwen.gguf && sha256sum /tmp/qwen.gguf | cut -c1-64
pip install --no-deps --target /tmp/gg .scratch/whl/gguf-0.19.0-py3-none-any.whl -q 2>/dev/null
mkdir -p /tmp/sp && rm -rf /tmp/sp/spqrfmt && cp -rs $PWD/spqrfmt /tmp/sp/spqrfmt && for d in kernels encoder decoder conformance; do ln -sfn $PWD/$d /tmp/sp/spqrfmt/$d; done
export PYTHONPATH=/tmp/sp:/tmp/gg OMP_NUM_THREADS=2 NUMBA_NUM_THREADS=2
W=/tmp/qw; mkdir -p $W
python bench/gguf_hf.py /tmp/qwen.gguf $W/qwen2.5-coder-1.5b-hf --device cuda 2>&1 | tail -1
echo "[$(( $(date +%s) - t0 ))s] HF ready"
C=(--out $W --model qwen1.5b --corpus wiki --wiki-split .scratch/wiki-split.json --peer-dir .scratch/peers --device cuda --nsamples 128 --seqlen 512 --batch-size 16 --eval-seq-len 512 --threads 2 --eval-tokens 65536 --verbose)
L=$(( 540 - ($(date +%s) - t0) ))
E=(--outlier-rule error --no-outlier-cap)
timeout $L python bench/quality.py "${C[@]}" --targets 3 --methods GPTQ,GPTQ-authors,RTN --results $OUT/g3.json > $OUT/q1.log 2>&1 &
timeout $L python bench/quality.py "${C[@]}" --targets 3.5 --methods GPTQ,GPTQ-authors,RTN --results $OUT/g35.json > $OUT/q2.log 2>&1 &
timeout $L python bench/quality.py "${C[@]}" --targets 4 --methods GPTQ,GPTQ-authors,RTN --results $OUT/g4.json > $OUT/q3.log 2>&1 &
timeout $L python bench/quality.py "${C[@]}" --targets 3 --methods SpQR,SpQR-authors "${E[@]}" --outlier-threshold 1.1 --results $OUT/s3_error_t1.1.json > $OUT/q4.log 2>&1 &
timeout $L python bench/quality.py "${C[@]}" --targets 4 --methods SpQR,SpQR-authors "${E[@]}" --outlier-threshold 0.5 --results $OUT/s4_error_t0.5.json > $OUT/q5.log 2>&1 &
timeout $L python bench/quality.py "${C[@]}" --targets 3,4 --methods SqueezeLLM --results $OUT/sq.json > $OUT/q6.log 2>&1 &
wait
for f in $OUT/q*.log; do echo "== $f"; grep -E "^\[|Error|Traceback" $f | tail -6; done
echo "done after $(( $(date +%s) - t0 ))s"
