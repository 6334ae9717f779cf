#!/bin/bash
# the shipped recipe (configs/gan_centred16.json) with d_mbstd_channels=4: phase 1 then phase 2 to 38000, resumable
cd /tmp/wt39
export OMP_NUM_THREADS=1
R=~/runs/s39/c16ch4
P=/work/main/.venv/bin/python
if [ ! -f $R/checkpoints/latest.pt ]; then
  $P -m attnorm.cli train-gan --config configs/gan_centred16.json --out $R d_mbstd_channels=4 keep_every=1000 >> $R.log 2>&1
else
  step=$($P -c "import torch;print(torch.load('$R/checkpoints/latest.pt',weights_only=True,map_location='cpu')['step'])")
  if [ "$step" -lt 10864 ]; then $P -m attnorm.cli train-gan --out $R --resume >> $R.log 2>&1; fi
fi
$P -m attnorm.cli train-gan --out $R --resume --steps 38000 lr_g=5e-5 lr_d=5e-5 ema_decay=0.999 keep_every=1000 >> $R.log 2>&1
echo done >> $R.log
