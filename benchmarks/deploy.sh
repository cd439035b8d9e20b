#!/usr/bin/env bash
# The deployment-speed measurements of docs/speed.md ("Deployment"), for one machine: every runtime
# (ours, timm, HF, ONNX Runtime, OpenVINO) in every precision it offers, each in its own process,
# alternating rounds, medians. Run it on a quiet machine (`uptime` load average below ~1), from a checkout
# with the deploy extra installed (pip install -e '.[deploy,test]'):
#
#   bash benchmarks/deploy.sh [OUT_DIR]            # default docs/deploy/<cpu>-<date>
#   ROUNDS=2 MODELS="pvt_v2_b0" bash benchmarks/deploy.sh /tmp/quick
#
# Writes one .txt table (and .json rows) per step into OUT_DIR and prints them as they come.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
CPU=$(grep -m1 "model name" /proc/cpuinfo | sed 's/.*: //; s/[^A-Za-z0-9]\+/-/g; s/-$//')
OUT=${1:-docs/deploy/${CPU}-$(date +%Y%m%d)}
MODELS=${MODELS:-pvt_v2_b0 pvt_v2_b2 pvt_v2_b2_li}
ROUNDS=${ROUNDS:-3}
mkdir -p "$OUT"
uptime | tee "$OUT/uptime-start.txt"
bench() {  # bench NAME ARGS...: one pvt benchmark run into $OUT/NAME.{txt,json}
  local name=$1; shift
  echo "== $name: pvt benchmark $*"
  $PY -m pvt benchmark "$@" --rounds "$ROUNDS" --json "$OUT/$name.json" | tee "$OUT/$name.txt"
}
# 1. Throughput (batch 8) and serving latency (batch 1), 1 and 2 threads, idle machine.
bench batch8 $MODELS --compare --precision float32 bfloat16 int8 --threads 1 2 -b 8 --repeats 10
bench batch1 $MODELS --compare --precision float32 bfloat16 int8 --threads 1 2 -b 1 --repeats 30
# 2. One of the cores busy with a spinning process: OpenMP's default wait policy against passive
#    waiting, at 1 and 2 threads (ONNX Runtime: its spinning off under "passive").
for policy in default passive; do
  bench "busy1-$policy" $MODELS --runtimes pvt timm onnxruntime openvino --precision float32 bfloat16 int8 \
    --threads 1 2 -b 8 --repeats 10 --busy-cores 1 --wait-policy "$policy"
done
# 3. The cost of passive waiting on an idle machine (compare with batch8.txt).
bench idle-passive $MODELS --runtimes pvt timm --precision float32 bfloat16 int8 --threads 2 -b 8 --repeats 10 \
  --wait-policy passive
# 3b. Wait policy and threads against a spinning process, every variant interleaved in one run.
#     spin=N: GNU OpenMP spins N times at a barrier before sleeping (default 300000): the middle ground.
$PY benchmarks/wait_policy.py pvt_v2_b0 --rounds "$ROUNDS" --busy-cores 1 --policies default passive spin=10000 spin=100000 \
  | tee "$OUT/wait-policy-busy1.txt"
$PY benchmarks/wait_policy.py pvt_v2_b0 --rounds "$ROUNDS" --busy-cores 0 --threads 2 --peers \
  --policies default passive spin=10000 spin=100000 | tee "$OUT/wait-policy-idle.txt"
# 4. Accuracy: logits on random weights for every variant (trained checkpoints: see docs/speed.md).
$PY benchmarks/accuracy.py --variants all --random-batch 2 | tee "$OUT/accuracy-random.txt"
uptime | tee "$OUT/uptime-end.txt"
