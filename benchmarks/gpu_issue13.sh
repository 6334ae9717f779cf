#!/usr/bin/env bash
# Issue 13's GPU figures in one prepared run (about 5-6 minutes on an H100/H200), for a session
# that is lent a device. From the repository root:
#     bash benchmarks/gpu_issue13.sh [OUT]          # OUT default: $OUT or benchmarks/results/gpu
# It writes one JSON per case (each holds device, torch version, batch, dtype, times and the
# targets as ratios) plus a log, and never fails the whole script for one case:
#   * eager, float32 and bf16 autocast, batch 8 and 32, sizes 32/64/128: AN, SA, conv1x1+IN;
#   * AN with compiled statistics (an_cstats) and with the Triton statistics kernels (an_triton)
#     beside them, batch 8, sizes 32 and 64, after the Triton kernels' parity tests on the GPU;
#   * torch.compile(mode="default") on AN and conv1x1+IN at 32 and 64 (the 32x32 compile that
#     failed in inductor's compile worker on an H200 with torch 2.11);
#   * torch.compile(mode="reduce-overhead") (CUDA graphs) on AN, SA and conv1x1+IN at 32 and 64:
#     AN's eager time is kernel launches, which graphs replay without;
#   * the GAN training step AN / none / SA at 32 and 64 px (benchmarks/bench_gan.py, speed part).
# Through the device tool (at most 8 files come back from $OUT), write elsewhere and pack:
#     bash benchmarks/gpu_issue13.sh /tmp/r && tar czf $OUT/results.tgz -C /tmp r
# ATTNORM_COMMIT names the code state in the log where the tree has no .git (a device copy).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # a device copy of the tree has attnorm uninstalled
out="${1:-${OUT:-benchmarks/results/gpu}}"
mkdir -p "$out"
commit="${ATTNORM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
log="$out/gpu_issue13.log"
run() {  # name, time limit in seconds, then attnorm bench arguments
  local name=$1 limit=$2; shift 2
  echo "== $name (commit $commit): attnorm bench $*" | tee -a "$log"
  timeout "$limit" python3 -m attnorm.cli bench --device cuda "$@" --json "$out/$name.json" 2>&1 | tee -a "$log" \
    || echo "== $name failed or timed out (limit $limit s)" | tee -a "$log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$log"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$log"
for b in 8 32; do
  run "gpu_b${b}_fp32" 60 --batch "$b" --sizes 32,64,128 --variants an,sa,conv_in --repeats 20 --warmup 3
  run "gpu_b${b}_bf16" 60 --batch "$b" --sizes 32,64,128 --variants an,sa,conv_in --repeats 20 --warmup 3 --autocast bf16
done
python3 -m pytest -q -p no:warnings tests/test_triton_stats.py 2>&1 | tail -n 3 | tee -a "$log"  # the kernels' parity on this GPU
run "gpu_b8_cstats" 80 --batch 8 --sizes 32,64 --variants an,an_cstats,an_triton,sa,conv_in --repeats 20 --warmup 3 --no-memory
run "gpu_b8_compiled" 80 --batch 8 --sizes 32,64 --variants an,conv_in --repeats 20 --warmup 3 --compile default --no-memory
run "gpu_b8_cudagraphs" 90 --batch 8 --sizes 32,64 --variants an,sa,conv_in --repeats 20 --warmup 5 --compile reduce-overhead --no-memory
echo "== gan_step_cuda (commit $commit): python benchmarks/bench_gan.py --device cuda --skip-ssr --res 32 64" | tee -a "$log"
timeout 120 python3 benchmarks/bench_gan.py --device cuda --skip-ssr --res 32 64 --repeats 9 --json "$out/gan_step_cuda.json" 2>&1 \
  | tee -a "$log" || echo "== gan_step_cuda failed or timed out" | tee -a "$log"
echo "== done: $out" | tee -a "$log"
