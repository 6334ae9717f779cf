#!/usr/bin/env bash
# Issue 13's GPU figures in one prepared run (about 5-8 minutes on an H100/H200), for a session
# that is lent a device. From the repository root:
#     bash benchmarks/gpu_issue13.sh [OUT]          # OUT default: $OUT or benchmarks/results/gpu
# It writes one JSON per case (each holds device, torch version, batch, dtype, times and the
# targets as ratios) plus a log, and never fails the whole script for one case:
#   * eager, float32 and bf16 autocast, batch 8 and 32, sizes 32/64/128:
#     AN, AN with compiled statistics (an_cstats), SA, conv1x1+IN;
#   * torch.compile(mode="default") on AN and conv1x1+IN at 32 and 64 (the 32x32 compile that
#     failed in inductor's compile worker on an H200 with torch 2.11).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-benchmarks/results/gpu}}"
mkdir -p "$out"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
log="$out/gpu_issue13.log"
run() {  # name, then attnorm bench arguments
  local name=$1; shift
  echo "== $name (commit $commit): attnorm bench $*" | tee -a "$log"
  timeout 300 python -m attnorm.cli bench --device cuda "$@" --json "$out/$name.json" 2>&1 | tee -a "$log" \
    || echo "== $name failed or timed out" | tee -a "$log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$log"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$log"
for b in 8 32; do
  run "gpu_b${b}_fp32" --batch "$b" --sizes 32,64,128 --variants an,an_cstats,sa,conv_in --repeats 20 --warmup 3
  run "gpu_b${b}_bf16" --batch "$b" --sizes 32,64,128 --variants an,an_cstats,sa,conv_in --repeats 20 --warmup 3 --autocast bf16
done
run "gpu_b8_compiled" --batch 8 --sizes 32,64 --variants an,conv_in --repeats 20 --warmup 3 --compile default --no-memory
echo "== done: $out" | tee -a "$log"
