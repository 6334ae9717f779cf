#!/usr/bin/env bash
# ch24 variant of the shipped gan_centred16 recipe; resumable: rerun this script.
cd /work/main
export OMP_NUM_THREADS=1
R=~/runs/s21/ch24
A=.venv/bin/attnorm
step() { .venv/bin/python - "$R" <<'PY'
import sys, json, pathlib
p = pathlib.Path(sys.argv[1]) / "stats.jsonl"
last = 0
if p.exists():
    for line in p.read_text().splitlines():
        try: last = max(last, json.loads(line).get("step", 0))
        except Exception: pass
print(last)
PY
}
if [ ! -f $R/checkpoints/latest.pt ]; then
  $A train-gan --config configs/gan_centred16.json --out $R ch=24 keep_every=1000
elif [ "$(step)" -lt 10864 ]; then
  $A train-gan --out $R --resume --steps 10864
fi
$A train-gan --out $R --resume --steps 42000 lr_g=5e-5 lr_d=5e-5 ema_decay=0.999 keep_every=1000
