#!/usr/bin/env bash
# One call on a GPU machine: the CUDA tests, then the bf16 channels-last comparison with timm and HF.
#   bash benchmarks/gpu.sh [tests|bench|compile|profile|train ...]   (default: all; logs under $OUT or ./gpu-logs)
set -u
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then  # packages the GPU image lacks (pycocotools)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
PY=${PY:-python3}
BENCH="$PY benchmarks/benchmark.py --device cuda --dtype bfloat16 --channels-last --compare"
steps=${*:-tests bench train compile profile}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader
$PY -c "import torch, timm, transformers; print('torch', torch.__version__, 'timm', timm.__version__, 'transformers', transformers.__version__)"
for s in $steps; do
  echo "=== $s"
  case $s in
    quicktests) timeout 150 $PY -m pytest -m gpu tests/accel/test_gpu.py -q -p no:cacheprovider -o addopts= -k "gpu_path or triton or bf16 or float32_matches" 2>&1 | tee "$OUT/quicktests.log" | tail -15 ;;
    tests) timeout 300 $PY -m pytest -m gpu tests/accel/test_gpu.py -q -p no:cacheprovider -o addopts= 2>&1 | tee "$OUT/tests.log" | tail -25 ;;
    quickbench) timeout 100 $BENCH pvt_v2_b0 pvt_v2_b2 -b 8 64 --warmup 10 --repeats 30 --no-memory --json "$OUT/quickbench.json" 2>/dev/null | tee "$OUT/quickbench.txt" ;;
    bench) timeout 300 $BENCH pvt_v2_b0 pvt_v2_b2 pvt_v2_b2_li -b 8 64 --warmup 10 --repeats 30 --json "$OUT/bench.json" 2>"$OUT/bench.err" | tee "$OUT/bench.txt" ;;
    train) timeout 200 $BENCH pvt_v2_b0 pvt_v2_b2 --mode train -b 16 64 --warmup 5 --repeats 20 --json "$OUT/train.json" 2>"$OUT/train.err" | tee "$OUT/train.txt" ;;
    compile) timeout 400 $BENCH pvt_v2_b0 pvt_v2_b2 -b 8 64 --compile --no-memory --warmup 10 --repeats 30 --json "$OUT/compile.json" 2>"$OUT/compile.err" | tee "$OUT/compile.txt" ;;
    profile) timeout 120 $PY benchmarks/profile_gpu.py pvt_v2_b0 pvt_v2_b2 -b 8 64 --channels-last 2>&1 | tee "$OUT/profile.txt"
             PVT_TRITON=0 timeout 60 $PY benchmarks/profile_gpu.py pvt_v2_b0 pvt_v2_b2 -b 8 64 --channels-last --top 0 2>&1 | grep " pvt " | sed "s/^/no-triton /" | tee -a "$OUT/profile.txt" ;;
    *) echo "unknown step $s" ;;
  esac
done
