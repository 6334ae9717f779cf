#!/bin/bash
# the demo preset (per-pair mode-seeking term) through the shipped recipe's two phases, one thread; code /tmp/wt32
cd /tmp/wt32
export OMP_NUM_THREADS=1
R=~/runs/s32/long_pairs
if [ ! -f $R/phase1.done ]; then
  /work/main/.venv/bin/python -m attnorm.cli train-gan --config configs/gan_demo.json --out $R threads=1 amp=true steps=10864 ckpt_every=1000 keep_every=1000 log_every=100 sample_every=2000 >> $R.log 2>&1 && touch $R/phase1.done
fi
/work/main/.venv/bin/python -m attnorm.cli train-gan --out $R --resume --steps 38000 lr_g=5e-5 lr_d=5e-5 ema_decay=0.999 ckpt_every=1000 keep_every=1000 >> $R.log 2>&1
echo done >> $R.log
