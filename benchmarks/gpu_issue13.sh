#!/usr/bin/env bash
# Issue 13's GPU figures, prepared for a session that is lent a device. All parts take about 12 minutes
# on an H200, more than one device command may run (10): split them over two calls, e.g.
# PARTS="tests probe bench" (the parity cases, the kernels' error, the layer figures: 237 s on the H200 in
# session 24, of which the tests 76 s; with the machine's start it held 273 s of the 900 a session gets)
# and PARTS="profile compile gan gan_compile". From the repository root:
#     bash benchmarks/gpu_issue13.sh [OUT]          # OUT default: $OUT or benchmarks/results/gpu
# It writes one JSON per case (each holds device, torch version, batch, dtype, times and the
# targets as ratios) plus a log, and never fails the whole script for one case:
#   * the Triton kernels' parity cases on the GPU (statistics and pixel sums, tests/triton_cases.py);
#   * probe: the pixel-sum kernel against torch.bmm and float64 in float32 FMA and in three-TF32
#     products, and the forms of the layer's three small products (W_v mean(X), SSR's query and key gradients:
#     160 of AN's 570 us of device time at b 8, 32x32 in session 31) with the CUDA kernels each runs;
#   * batch 8 and 32, sizes 32/64/128: AN, AN with the Triton statistics (an_triton), the Triton
#     pixel sums (an_tsums) and both (an_tall), SA and
#     conv1x1+IN eager in float32, and with forward and backward captured as CUDA graphs
#     (--cuda-graphs) in float32 and bf16 autocast;
#   * forms: an_tall against an_tall_msum (the same with the three small products as multiply-and-sum,
#     attnorm.layers.small_products_as_sums), SA and conv1x1+IN under CUDA graphs, b 8 and 32, 32/64, float32
#     (with probe, the first thing a device session should run: PARTS="probe forms", about 2 minutes);
#   * cl: the pixel-major path's CUDA parity test and AN, SA, conv1x1+IN on channels-last inputs (b 8, 32);
#   * a kernel-level profile of AN, SA and conv1x1+IN (benchmarks/gpu_profile_an.py): under graphs
#     AN's time grows with the map (session 7), so which kernels are slow; and the forward pixel
#     sum timed as one bmm and split into chunks (b 8 at 128x128 took longer than b 32 at 64x64,
#     the same pixels: long per-image reductions with a small output are the suspect);
#   * triton_cost: the Triton paths' first calls in fresh processes, with an empty and a filled kernel
#     cache, against the eager layer (benchmarks/gpu_triton_cost.py): whether they can be on by default;
#   * torch.compile(mode="reduce-overhead") (inductor + CUDA graphs) on AN, SA and conv1x1+IN;
#   * the GAN training step AN / none / SA at 32 and 64 px (benchmarks/bench_gan.py, speed part),
#     eager (also with AN's Triton paths, --triton) and with G and D compiled (default and reduce-overhead): on the H200 the eager step
#     of the small GAN is launch-bound (7-10 iterations/s).
# Through the device tool (at most 8 files come back from $OUT), write elsewhere and pack:
#     bash benchmarks/gpu_issue13.sh /tmp/r && tar czf $OUT/results.tgz -C /tmp r
# ATTNORM_COMMIT names the code state in the log where the tree has no .git (a device copy).
# PARTS picks what runs (default all): tests bench forms cl profile probe triton_cost compile gan gan_compile; e.g.
# PARTS="tests bench profile" for the layer figures and the kernel profile alone (about 4 minutes).
# PROFILE_VARIANTS (default an,an_tall,sa,conv_in) and PROFILE_CASES (batch:autocast, default
# "8: 8:bf16 32:") pick the profiled layers and cases.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # a device copy of the tree has attnorm uninstalled
out="${1:-${OUT:-benchmarks/results/gpu}}"
mkdir -p "$out"
commit="${ATTNORM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
log="$out/gpu_issue13.log"
parts=" ${PARTS:-tests bench forms cl profile probe triton_cost compile gan gan_compile} "
part() { [[ "$parts" == *" $1 "* ]]; }
run() {  # name, time limit in seconds, then attnorm bench arguments
  local name=$1 limit=$2; shift 2
  echo "== $name (commit $commit): attnorm bench $*" | tee -a "$log"
  timeout "$limit" python3 -m attnorm.cli bench --device cuda "$@" --json "$out/$name.json" 2>&1 | tee -a "$log" \
    || echo "== $name failed or timed out (limit $limit s)" | tee -a "$log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$log"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$log"
S="--sizes 32,64,128 --repeats 20 --warmup 3"
# the kernels' parity on this GPU (the cases file run directly: a failure's report lands in the log)
part tests && python3 -m pytest -o addopts= -q -p no:warnings -p no:cacheprovider -rf tests/triton_cases.py 2>&1 | tail -n 60 | tee -a "$log"
part bench && for b in 8 32; do
  run "gpu_b${b}_fp32" 90 --batch "$b" $S --variants an,an_triton,an_tsums,an_tall,sa,conv_in
  run "gpu_b${b}_fp32_graphs" 70 --batch "$b" $S --variants an,an_triton,an_tsums,an_tall,sa,conv_in --cuda-graphs --no-memory
  run "gpu_b${b}_bf16_graphs" 50 --batch "$b" $S --variants an,an_tall,sa,conv_in --cuda-graphs --autocast bf16 --no-memory
done
# the three small products as multiply-and-sum against the plain matrix products, side by side (session 32)
part forms && for b in 8 32; do
  run "gpu_b${b}_fp32_graphs_forms" 60 --batch "$b" --sizes 32,64 --repeats 20 --warmup 3 \
    --variants an_tall,an_tall_msum,sa,conv_in --cuda-graphs --no-memory
done
# channels-last inputs (session 27: the layer computes them pixel-major from 32 channels, never yet run on a GPU):
# its CUDA parity test, then the layer figures in that layout
if part cl; then
  python3 -m pytest -o addopts= -q -p no:warnings -p no:cacheprovider -rf tests/test_layers_attentive.py \
    -k "cuda" 2>&1 | tail -n 30 | tee -a "$log"
  for b in 8 32; do
    run "gpu_b${b}_fp32_channels_last" 90 --batch "$b" $S --variants an,sa,conv_in --channels-last
  done
fi
pv=${PROFILE_VARIANTS:-an,an_tall,sa,conv_in}
part profile && for case in ${PROFILE_CASES:-8: 8:bf16 32:}; do  # batch:autocast; kernel by kernel
  b=${case%%:*}; ac=${case#*:}
  echo "== an_profile b $b ${ac:-fp32} (commit $commit): python benchmarks/gpu_profile_an.py --device cuda --batch $b --sizes 32,64,128 --variants $pv ${ac:+--autocast $ac}" | tee -a "$log"
  timeout 90 python3 benchmarks/gpu_profile_an.py --device cuda --batch "$b" --sizes 32,64,128 --variants "$pv" --top 25 \
    ${ac:+--autocast $ac} $([ "$case" = 8: ] && echo --pixel-sum-probe) --json "$out/an_profile_b${b}${ac:+_$ac}.json" 2>&1 \
    | tee -a "$log" || echo "== an_profile failed or timed out" | tee -a "$log"
done
# the pixel-sum kernel against torch.bmm and float64, in float32 FMA and in three-TF32 products (is tf32x3's error
# small enough to make it the default? session 19 could not tell)
part probe && for prec in ieee tf32x3; do
  echo "== pixel_sum_probe $prec (commit $commit): python benchmarks/gpu_profile_an.py --device cuda --variants '' --pixel-sum-probe --pixel-sum-precision $prec" | tee -a "$log"
  timeout 90 python3 benchmarks/gpu_profile_an.py --device cuda --variants "" --pixel-sum-probe --pixel-sum-precision "$prec" \
    $([ "$prec" = ieee ] && echo --small-mm-probe) \
    --json "$out/pixel_sum_probe_$prec.json" 2>&1 | tee -a "$log" || echo "== pixel_sum_probe failed or timed out" | tee -a "$log"
done
# the Triton paths' one-off cost in a fresh process (kernel compiles with an empty and a filled cache, the pixel
# sums' tuning): what keeps them opt-in (session 24)
if part triton_cost; then
  echo "== triton_cost (commit $commit): python benchmarks/gpu_triton_cost.py --device cuda --sizes 32,64" | tee -a "$log"
  timeout 240 python3 benchmarks/gpu_triton_cost.py --device cuda --sizes 32,64 --json "$out/triton_cost.json" 2>&1 \
    | tee -a "$log" || echo "== triton_cost failed or timed out" | tee -a "$log"
fi
part compile && run "gpu_b8_reduce_overhead" 90 --batch 8 --sizes 32,64,128 --repeats 20 --warmup 5 --variants an,sa,conv_in --compile reduce-overhead --no-memory
if part gan; then
  echo "== gan_step_cuda (commit $commit): python benchmarks/bench_gan.py --device cuda --skip-ssr --res 32 64" | tee -a "$log"
  timeout 120 python3 benchmarks/bench_gan.py --device cuda --skip-ssr --res 32 64 --repeats 9 --json "$out/gan_step_cuda.json" 2>&1 \
    | tee -a "$log" || echo "== gan_step_cuda failed or timed out" | tee -a "$log"
  echo "== gan_step_cuda_triton (commit $commit): python benchmarks/bench_gan.py --device cuda --skip-ssr --res 32 64 --triton" | tee -a "$log"
  timeout 120 python3 benchmarks/bench_gan.py --device cuda --skip-ssr --res 32 64 --repeats 9 --triton \
    --json "$out/gan_step_cuda_triton.json" 2>&1 | tee -a "$log" || echo "== gan_step_cuda_triton failed or timed out" | tee -a "$log"
fi
part gan_compile && for mode in default reduce-overhead; do  # the whole GAN step compiled: G and D through torch.compile
  echo "== gan_step_cuda_$mode (commit $commit): python benchmarks/bench_gan.py --device cuda --compile $mode" | tee -a "$log"
  timeout 150 python3 benchmarks/bench_gan.py --device cuda --skip-ssr --res 32 64 --repeats 9 --warmup 4 --compile "$mode" \
    --json "$out/gan_step_cuda_$mode.json" 2>&1 | tee -a "$log" || echo "== gan_step_cuda_$mode failed or timed out" | tee -a "$log"
done
echo "== done: $out" | tee -a "$log"
