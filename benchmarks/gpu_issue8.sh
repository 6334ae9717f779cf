#!/usr/bin/env bash
# Issue 8 on a lent GPU: continue a GAN run (its folder: checkpoints/latest.pt, config.json,
# stats.jsonl) on the GPU for a fixed time, then hand its checkpoint back in parts small enough for
# the device tool (at most 8 files of 16 MiB come back). The shipped weights need a wider recipe
# trained long (issue 8, session 6: width is what limits the ch 16 recipe), and the CPU run of
# `configs/gan_procedural32.json` with ch=32 goes on between sessions; this moves it forward by
# about 7-8 steps a second eager on an H200 (session 7) instead of 1.1-1.5 on one CPU thread.
#     bash benchmarks/gpu_issue8.sh RUN_DIR OUT [SECONDS]      # SECONDS of training, default 420
# Through the device tool: copy the run folder into the tree under an ignored path (e.g. .gpu/run)
# and carry it; OUT is $OUT. Back here: `cat OUT/latest.pt.part-* > RUN/checkpoints/latest.pt`,
# copy OUT's stats.jsonl and samples into RUN, then `attnorm train-gan --out RUN --resume
# device=cpu threads=1` goes on from there.
# Environment: COMPILE, the run's compile mode (default reduce-overhead; empty: eager). If the
# compiled run ends with an error, the time that is left runs eager. DEVICE (default cuda).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # a device copy of the tree has attnorm uninstalled
run="${1:?usage: gpu_issue8.sh RUN_DIR OUT [SECONDS]}"; out="${2:?usage: gpu_issue8.sh RUN_DIR OUT [SECONDS]}"
secs=${3:-420}; compile=${COMPILE-reduce-overhead}; dev=${DEVICE:-cuda}
commit="${ATTNORM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
[ -f "$run/checkpoints/latest.pt" ] || { echo "gpu_issue8: no checkpoint at $run/checkpoints/latest.pt" >&2; exit 2; }
mkdir -p "$out"
work=$(mktemp -d)/run
cp -r "$run" "$work"
log="$out/gpu_issue8.log"
elapsed() { python3 -c "import torch; print(int(torch.load('$work/checkpoints/latest.pt', weights_only=True, map_location='cpu')['elapsed']))"; }
e0=$(elapsed); t0=$SECONDS
echo "== commit $commit: $run from $e0 s of training, $secs s more on $dev, compile=${compile:-eager}" | tee -a "$log"
train() {  # extra key=value overrides; trains until the run's clock reaches e0 + secs
  python3 -m attnorm.cli train-gan --out "$work" --resume device="$dev" threads=2 max_seconds=$((e0 + secs)) \
    ckpt_every=500 sample_every=1000 log_every=100 "$@" 2>&1 | grep -v "^W[0-9]" | tee -a "$log"
  return "${PIPESTATUS[0]}"
}
if [ -n "$compile" ]; then
  train compile="$compile" || { echo "== compile=$compile failed after $((SECONDS - t0)) s; eager for the rest" | tee -a "$log"
                                train; }
else
  train
fi
split -b 15M "$work/checkpoints/latest.pt" "$out/latest.pt.part-"
cp "$work/stats.jsonl" "$out/"
(cd "$work" && tar czf "$out/samples.tgz" samples)
echo "== done after $((SECONDS - t0)) s: $(ls "$out" | tr '\n' ' ')" | tee -a "$log"
