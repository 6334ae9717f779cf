"""Diagnostic of issue 8: does a plain conditional DCGAN learn the procedural shapes in CPU minutes?

    python benchmarks/diag_dcgan.py --seconds 300 --data random --out bench_results/dcgan_random
    python benchmarks/diag_dcgan.py --seconds 300 --data canon  --out bench_results/dcgan_canon
    python benchmarks/diag_dcgan.py --seconds 300 --data canon --G an --out bench_results/an_g_dcgan_d
    python benchmarks/diag_dcgan.py --seconds 300 --data canon --D resblock --out bench_results/dcgan_g_resblock_d

Not a recipe: the smallest experiments that separated the causes of the old demo's failure
(README, "How the cause was found"). A hand-written training loop, independent of
``attnorm train-gan``: hinge loss, Adam (lr 2e-4, betas (0.5, 0.999)), one D step per G step,
batch 32, an EMA of G (decay min(0.999, (1 + t) / (10 + t))), on 20,000 pre-rendered images.

* ``--G dcgan``: z (128) + a 32-d class embedding -> linear 4x4x(4 ch) -> three 4x4/2 transposed
  convolutions (4ch -> 2ch -> ch -> ch), class-conditional batch norm and ReLU before each, then
  CBN, ReLU, 3x3 conv, tanh; no spectral norm. ``--G an``: attnorm's Generator (32 px, ch 16, AN,
  class embedding 32).
* ``--D dcgan``: ``attnorm.models.gan.ConvDiscriminator`` without minibatch stddev (ch 32).
  ``--D resblock``: the listing's ResBlock D at ch 16 with projection and minibatch stddev 4.
* ``--data random``: the procedural shapes as shipped; ``flat``: one flat random background colour,
  random pose; ``canon``: flat background, the shape centred, upright, at scale 0.75.

Both G copies get 50 batches of standing statistics, then ``evaluate_gan`` (shipped classifier,
``--n`` samples, reference: the procedural shapes as shipped). Writes ``OUT.json`` (settings,
steps, metrics of the raw and the EMA G) and ``OUT.png`` (EMA samples, a row per class).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attnorm.data import procedural
from attnorm.evaluation.gan import evaluate_gan
from attnorm.io import to_uint8
from attnorm.models.gan import ConvDiscriminator, Discriminator, Generator
from attnorm.viz.grid import make_grid, save_image

C, Z = 10, 128


class VariantShapes(procedural.ProceduralShapes):
    """The procedural shapes with a flat background (``flat``), and centred upright (``canon``)."""

    def __init__(self, variant: str, **kw) -> None:
        super().__init__(**kw)
        self.variant = variant

    def render(self, index: int) -> np.ndarray:
        if self.variant == "random":
            return super().render(index)
        rng = np.random.default_rng([self.seed, int(index)])
        bg = np.zeros(self._u.shape + (3,)) + rng.uniform(0, 1, 3)
        if self.variant == "flat":
            scale = rng.uniform(0.55, 0.85)
            cx, cy = rng.uniform(-1, 1, 2) * (0.95 - scale)
            ang = rng.uniform(0, 2 * np.pi)
        else:
            scale, cx, cy, ang = 0.75, 0.0, 0.0, 0.0
        du, dv = self._u - cx, -(self._v - cy)
        x = (np.cos(ang) * du + np.sin(ang) * dv) / scale
        y = (-np.sin(ang) * du + np.cos(ang) * dv) / scale
        alpha = procedural.shape_alpha(self.label(index), x, y, pixel=2.0 / self.resolution / scale)[..., None]
        fg = rng.uniform(0, 1, 3)
        fg = 0.55 + 0.45 * fg if bg[0, 0] @ np.array([0.299, 0.587, 0.114]) < 0.5 else 0.45 * fg
        return np.clip(bg * (1 - alpha) + fg * alpha, 0, 1).astype(np.float32)


class CBN(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(ch, affine=False)
        self.gain, self.bias = nn.Embedding(C, ch), nn.Embedding(C, ch)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x, y):
        return self.bn(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class DCGANGenerator(nn.Module):
    def __init__(self, ch: int = 32) -> None:
        super().__init__()
        self.z_dim, self.num_classes, self.ch = Z, C, ch
        self.embed = nn.Embedding(C, 32)
        self.fc = nn.Linear(Z + 32, 4 * 4 * ch * 4)
        self.ups = nn.ModuleList([nn.ConvTranspose2d(ch * 4, ch * 2, 4, 2, 1), nn.ConvTranspose2d(ch * 2, ch, 4, 2, 1),
                                  nn.ConvTranspose2d(ch, ch, 4, 2, 1)])
        self.norms = nn.ModuleList([CBN(ch * 4), CBN(ch * 2), CBN(ch), CBN(ch)])
        self.out = nn.Conv2d(ch, 3, 3, 1, 1)

    def forward(self, z, y):
        h = self.fc(torch.cat([z, self.embed(y)], 1)).view(-1, self.ch * 4, 4, 4)
        for up, norm in zip(self.ups, self.norms):
            h = up(F.relu(norm(h, y)))
        return torch.tanh(self.out(F.relu(self.norms[-1](h, y))))


def standing_stats(g: nn.Module, batches: int = 50) -> nn.Module:
    g.train()
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    with torch.no_grad():
        for _ in range(batches):
            g(torch.randn(64, Z), torch.randint(0, C, (64,)))
    return g.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--data", choices=["random", "flat", "canon"], default="random")
    ap.add_argument("--G", choices=["dcgan", "an"], default="dcgan")
    ap.add_argument("--D", choices=["dcgan", "resblock"], default="dcgan")
    ap.add_argument("--n", type=int, default=1000, help="samples for the evaluation")
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output prefix: OUT.json and OUT.png")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    X, Y = VariantShapes(args.data, resolution=32, num_classes=C, seed=0).get_batch(range(args.n_train))
    g = DCGANGenerator() if args.G == "dcgan" else Generator(resolution=32, ch=16, num_classes=C, class_embed_dim=32)
    d = (ConvDiscriminator(resolution=32, ch=32, num_classes=C) if args.D == "dcgan" else
         Discriminator(resolution=32, ch=16, num_classes=C, attention="none", projection=True, mbstd_group=4))
    g_ema = copy.deepcopy(g)
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    bs, step, t0 = 32, 0, time.time()
    while time.time() - t0 < args.seconds:
        idx = torch.randint(0, len(X), (bs,))
        y_fake = torch.randint(0, C, (bs,))
        with torch.no_grad():
            fake = g(torch.randn(bs, Z), y_fake)
        loss_d = F.relu(1 - d(X[idx], Y[idx])).mean() + F.relu(1 + d(fake, y_fake)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        y_fake = torch.randint(0, C, (bs,))
        loss_g = -d(g(torch.randn(bs, Z), y_fake), y_fake).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for pe, p in zip(g_ema.parameters(), g.parameters()):
                pe.lerp_(p, 1 - decay)
        step += 1
    result = {"settings": vars(args), "steps": step, "seconds": round(time.time() - t0, 1)}
    for name, m in (("raw", g), ("ema", g_ema)):
        r = evaluate_gan(standing_stats(m), num_classes=C, z_dim=Z, n=args.n, metrics="acc,pr,fid")["metrics"]
        result[name] = {"acc": r["acc"]["value"], "precision": r["pr"]["precision"], "recall": r["pr"]["recall"],
                        "fid": r["fid"]["value"]}
    with torch.no_grad():
        torch.manual_seed(1)
        x = g_ema(torch.randn(8 * C, Z), torch.arange(C).repeat_interleave(8))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(to_uint8(x), ncol=8), out.with_suffix(".png"), scale=3)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
