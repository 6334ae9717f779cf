"""Session 34, one-off: what the demo's D (session 32's control runs at 2000 steps) makes of fine detail.

D's mean logit on 256 real images (the demo's data, seed 99), on the same images with extra grain (std 0.06 in
[-1, 1] units, the data's own grain) and blurred (3x3 box, edges replicated), and on 256 of the run's own fakes with
and without added grain; plus the high-frequency residual std (image minus its 3x3 box blur) of reals and fakes.
Run from the repository root: python benchmarks/results/gan_demo_levers_s34/d_detail_probe.py
(needs ~/runs/s32/ctrl_s0 and ctrl_s2, i.e. session 32's runs; output: d_detail_probe.txt)."""
import os

import torch
import torch.nn.functional as F

from attnorm.checkpoints import gan_discriminator_from_state, load_checkpoint, load_gan_generator
from attnorm.training.gan import DEMO_CONFIG, make_dataset, resolve_config


def blur(t):
    return F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), 3, 1)


torch.manual_seed(0)
torch.set_num_threads(1)
ds = make_dataset(resolve_config(base=DEMO_CONFIG, overrides={"seed": 99}))
xs, ys = zip(*[ds[i] for i in range(256)])
x, y = torch.stack(xs), torch.tensor(ys)
for run in ("ctrl_s0", "ctrl_s2"):
    folder = os.path.expanduser(f"~/runs/s32/{run}")
    D = gan_discriminator_from_state(load_checkpoint(f"{folder}/checkpoints/latest.pt")).eval()
    G = load_gan_generator(f"{folder}/generator.safetensors")[0].eval()
    with torch.no_grad():
        f = G(torch.randn(256, G.z_dim), y)
        sets = {"real": x, "real + grain 0.06": x + 0.06 * torch.randn_like(x), "real blurred": blur(x),
                "fake": f, "fake + grain 0.03": f + 0.03 * torch.randn_like(f), "fake + grain 0.06": f + 0.06 * torch.randn_like(f)}
        logits = {k: D(v, y, mbstd_ids=y).float().mean().item() for k, v in sets.items()}
    hf = {k: (sets[k] - blur(sets[k])).std().item() for k in ("real", "fake")}
    print(run, "mean D logit:", ", ".join(f"{k} {v:.3f}" for k, v in logits.items()),
          "| HF residual std: real %.4f, fake %.4f" % (hf["real"], hf["fake"]))
