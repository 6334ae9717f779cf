#!/bin/bash
# p2.sh ARM "OVERRIDES": phase 2 of the long recipe from the s32 per-pair run's step 26000 (G, D 5e-5, ema 0.999) + overrides; code /tmp/wt36
cd /tmp/wt36
export OMP_NUM_THREADS=1
R=RUNS/p2_$1
if [ ! -f $R/checkpoints/latest.pt ]; then
  mkdir -p $R/checkpoints
  cp ~/runs/s32/long_pairs/checkpoints/step_0026000.pt $R/checkpoints/latest.pt
  cp ~/runs/s32/long_pairs/config.json $R/config.json
fi
/work/main/.venv/bin/python -m attnorm.cli train-gan --out $R --resume --steps 38000 lr_g=5e-5 lr_d=5e-5 ema_decay=0.999 ckpt_every=1000 keep_every=1000 threads=1 $2 >> $R.log 2>&1
echo done >> $R.log
