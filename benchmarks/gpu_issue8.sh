#!/usr/bin/env bash
# Issue 8 on a lent GPU: does width buy learning per step? The shipped recipe
# (configs/gan_procedural32.json: ch 16, G 0.49 M and D 0.08 M parameters) levelled off at
# accuracy 0.83-0.93 / FID 3.8-6.3 after step 23500, and 3000 more steps on an H200 did not move
# it (session 6). On a GPU the small GAN is launch-bound (about 10 it/s alone, 6-8 it/s with three
# runs sharing the card), so a wider net costs about the same per step there. This trains the
# recipe from scratch at three widths at once for the same time, then exports each EMA G with
# 200 standing batches and scores it like the shipped file (n = 2000, with the real-vs-real floor).
# Compare with the shipped run at equal steps (ch 16: acc 0.599, FID 20.45 at step 6000).
#     bash benchmarks/gpu_issue8.sh [OUT]     # OUT default: $OUT or benchmarks/results/gpu_issue8
# Environment: SECONDS_PER_RUN (default 420), N (default 2000), DEVICE (default cuda), WORK (run folders).
# Through the device tool (at most 8 files come back from $OUT), write elsewhere and pack:
#     bash benchmarks/gpu_issue8.sh /tmp/r && tar czf $OUT/results.tgz -C /tmp r
# A ch 32 G is about 1.3 M parameters (5.3 MB as float32 safetensors): small enough to ship.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # a device copy of the tree has attnorm uninstalled
out="${1:-${OUT:-benchmarks/results/gpu_issue8}}"
secs=${SECONDS_PER_RUN:-420}; n=${N:-2000}; dev=${DEVICE:-cuda}; work=${WORK:-/tmp/gpu_issue8}
commit="${ATTNORM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
mkdir -p "$out" "$work"
log="$out/gpu_issue8.log"
variants=(ch16 ch32 ch32_d64)
declare -A overrides=([ch16]="ch=16" [ch32]="ch=32" [ch32_d64]="ch=32 d_ch=64")
echo "== commit $commit, $secs s per run, device $dev" | tee -a "$log"
pids=()
for v in "${variants[@]}"; do
  python3 -m attnorm.cli train-gan --config configs/gan_procedural32.json --out "$work/$v" --overwrite \
    device="$dev" threads=2 max_seconds="$secs" ckpt_every=1000 sample_every=1000 log_every=200 \
    ${overrides[$v]} > "$out/$v.train.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
for v in "${variants[@]}"; do
  tail -n 2 "$out/$v.train.log" | tee -a "$log"
  ckpt="$work/$v/checkpoints/latest.pt"
  [ -f "$ckpt" ] || { echo "== $v: no checkpoint" | tee -a "$log"; continue; }
  python3 -m attnorm.cli export-gan "$ckpt" "$out/$v.safetensors" --standing-stats 200 2>&1 | tee -a "$log"
  python3 -m attnorm.cli evaluate gan --ckpt "$out/$v.safetensors" --metrics acc,pr,fid,kid --n "$n" --floor \
    --device "$dev" --out "$out/$v.eval.json" 2>&1 | tail -n 12 | tee -a "$log"
  last=$(ls "$work/$v/samples" 2>/dev/null | tail -n 1)
  [ -n "$last" ] && cp "$work/$v/samples/$last" "$out/$v.samples.png"
done
echo "== done: $out" | tee -a "$log"
