#!/usr/bin/env bash
# Profile the BERT-base -> TinyBERT6 step on a lent GPU: trace + optimized HLO for offline study.
#   bash benchmarks/gpu_profile.sh OUT_DIR      (wheels in .whl/ as for gpu_run.sh)
set -u
out=${1:-${OUT:-/tmp/gpu_out}}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
args="--teacher random --teacher-layers 12 --teacher-hidden 768 --teacher-heads 12 --teacher-ffn 3072
 --student-layers 6 --student-hidden 768 --student-heads 12 --student-ffn 3072
 --dtype bfloat16 --seq 128 --batch 256 --steps 10 --warmup 3 --repeats 3"
timeout 200 python3 -m benchmarks.distill_step $args --profile /tmp/prof --json "$out/tb6_b256_profiled.json" \
  2>&1 | grep -v "^\s*$" | tee "$out/profile.log" | tail -8
find /tmp/prof -name '*.trace.json.gz' -exec cp {} "$out/trace.json.gz" \;
gzip -c /tmp/prof/step.hlo.txt > "$out/step.hlo.txt.gz"
ls -la "$out"
