"""How far apart two images of one class lie, relative to their contrast, and how saturated and flat the grounds are:
a generator's samples against the data (session 36, issue 8). Run from the repository root:

    python benchmarks/results/gan_demo_levers_s36/pair_spread_probe.py NAME=GENERATOR.safetensors ...

Per line: ``pair`` the mean over 400 same-class pairs of ``mean|x1 - x2|`` over the batch's contrast ``mean|x - mean_hw(x)|``
(the image part of the mode-seeking term, ``mode_seeking_norm=image``; divide by ``mean|z1 - z2|`` = 1.128 for 128-d normal
latents to get the term's ratio), its sd, the contrast, the mean chroma (max - min channel, [0, 1] pixels), the ground's
chroma (mean colour of the 3-pixel border) and the share of grounds with chroma > 0.6, and the border's mean per-channel std
(how far the ground is from flat). The data: 800 centred procedural images (dataset seed 7), pairs of the same class."""
import sys

import torch

from attnorm.checkpoints import load_gan_generator
from attnorm.data.procedural import ProceduralShapes

torch.set_num_threads(1)
N = 400  # pairs


def stats(x1, x2):  # [-1, 1] images (n, 3, h, w), pair i = (x1[i], x2[i])
    x = torch.cat([x1, x2])
    contrast = (x - x.mean((2, 3), keepdim=True)).abs().mean()
    pair = (x1 - x2).abs().flatten(1).mean(1) / contrast
    p = (x + 1) / 2
    chroma = p.max(1).values - p.min(1).values
    border = torch.cat([p[..., :3, :].flatten(2), p[..., -3:, :].flatten(2),
                        p[..., :, :3].flatten(2), p[..., :, -3:].flatten(2)], 2)
    ground = border.mean(2)
    g_chroma = ground.max(1).values - ground.min(1).values
    return dict(pair=float(pair.mean()), pair_sd=float(pair.std()), contrast=float(contrast), chroma=float(chroma.mean()),
                g_chroma=float(g_chroma.mean()), g_sat=float((g_chroma > 0.6).float().mean()),
                g_var=float(border.std(2).mean()))


def show(name, d):
    print(f"{name:12s} " + " ".join(f"{k} {v:.3f}" for k, v in d.items()), flush=True)


if __name__ == "__main__":
    ds = ProceduralShapes(32, 10, seed=7, pose="centred")
    idx = [i % 10 + 10 * i for i in range(2 * N)]  # label = index % 10: pair i and i + N share class i % 10
    x = torch.stack([torch.from_numpy(ds.render(i)).permute(2, 0, 1) for i in idx]) * 2 - 1
    show("data", stats(x[:N], x[N:]))
    g = torch.Generator().manual_seed(0)
    y = torch.arange(N) % 10
    z1, z2 = torch.randn(N, 128, generator=g), torch.randn(N, 128, generator=g)
    for arg in sys.argv[1:]:
        name, path = arg.split("=", 1)
        G = load_gan_generator(path)[0].eval()
        with torch.no_grad():
            show(name, stats(G(z1, y), G(z2, y)))
