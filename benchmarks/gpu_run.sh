#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md, as one command for a lent H100/H200 machine.
#
#   bash benchmarks/gpu_run.sh OUT_DIR [NAME ...]     (default: every measurement below)
#
# The machine has JAX (CUDA), flax, optax, orbax, transformers and torch but not grain; put its
# wheels (grain, array_record, portpicker, tensorboardX for Python 3.12) in .whl/ first.
set -u
out=${1:-${OUT:-/tmp/gpu_out}}
shift || true
only=" $* "
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
log=$out/all.log
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee -a "$log"
python3 -c "import jax, flax, optax, transformers, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)" 2>&1 | tee -a "$log"

bert_base="--teacher random --teacher-layers 12 --teacher-hidden 768 --teacher-heads 12 --teacher-ffn 3072"
common="--dtype bfloat16 --seq 128 --steps 10 --warmup 3 --repeats 3"
tb6="--student-layers 6 --student-hidden 768 --student-heads 12 --student-ffn 3072"
tb4="--student-layers 4 --student-hidden 312 --student-heads 12 --student-ffn 1200"
bench() {  # name, limit_s, args...
  local name=$1 limit=$2; shift 2
  [ "$only" = "  " ] || [[ "$only" == *" $name "* ]] || return 0
  echo "=== $name: $*" | tee -a "$log"
  timeout "$limit" python3 -m benchmarks.distill_step $bert_base $common "$@" \
    --json "$out/$name.json" 2>&1 | grep -v "^\s*$" | tee -a "$log" | tail -12
  echo "=== $name rc=${PIPESTATUS[0]}" | tee -a "$log"
}
bench tb6_b1024 130 $tb6 --batch 1024 --breakdown
bench tb6_b256_vs_torch 170 $tb6 --batch 256 --vs torch --torch-modes eager
bench tb4_b1024 100 $tb4 --batch 1024
bench distilbert6_b512 100 $tb6 --batch 512 --method distilbert
