"""Diagnostic of issue 8: what does recall in the classifier's features respond to?

    python benchmarks/diag_recall.py --out benchmarks/results/diag_recall
    python benchmarks/diag_recall.py --ckpt runs/demo/checkpoints/latest.pt --ckpt attnorm/weights/gan_procedural32.safetensors

Improved precision/recall (Kynkaanniemi et al. 2019, k = 3) counts a real image as recalled
when it lies inside some generated image's k-NN ball. A generator can miss that in two ways:
its images are *too alike* (small balls: a diversity problem) or *too far* from the real ones
(a fidelity problem). This script separates the two.

1. **Known damage to real images.** A second real set (procedural seed 1) is scored against the
   reference (seed 0), as is, and after one controlled change: Gaussian blur, additive noise, or
   the colours collapsed to two tints of each image's luminance. Each row says how much recall
   that kind of flaw alone costs.
2. **Geometry of a generator's samples** (``--ckpt``, repeatable; EMA G): beside P/R, the
   median k-NN radius of the set (how spread out it is) and the median distance from each
   generated image to its nearest real one (how far off the real images it lies), with the same
   two numbers for the second real set as the yardstick.
3. **Pixel measures** (every row, each over the reference's): sharpness, the images' power
   above a quarter of the sampling frequency (fine detail: edges, grain; blur lowers it, noise
   raises it); within-class spread, how much images of one class differ from each other at
   coarse scale (8x8 means: colours and layout, not grain), against within-class collapse;
   contrast (the pixel values' standard deviation) and chroma (largest minus smallest channel),
   against colours pushed to the extremes; and improved precision / recall (k = 3) of the grounds' colours
   alone (each image's mean colour along its edges, an RGB point), against a palette that misses part of
   the data's colours. Beside FID, its mean term ``|mu_real - mu_fake|^2``
   (the rest is the covariance term). Every set is ordered so that image ``i`` has class ``i % classes``.
4. **Which real images are missed** (every row): recall counted over the reference's images of
   each background kind (smooth noise, gradient, stripes) and of each class: a flaw of one kind of
   image (no stripes drawn) shows as one low column, a set that is narrow inside every class as low
   columns throughout.

5. **Which grounds a generator draws** (``--grounds``): a small CNN trained on real images (its own
   procedural seed) to tell the three background kinds apart calls each generated image's ground;
   the fractions beside the reference's (as the same CNN calls them) separate a ground that is
   dropped (drawn rarely) from one drawn badly (drawn as often, recalled less). Its held-out
   accuracy per ground is in the results.

Features: the shipped procedural classifier (``attnorm.metrics``'s ``classifier`` extractor),
the protocol of ``attnorm evaluate gan``. Writes ``OUT/results.json`` and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import git_commit  # noqa: E402

from attnorm.data.procedural import BACKGROUNDS, ProceduralShapes  # noqa: E402
from attnorm.metrics.extractors import get_extractor  # noqa: E402
from attnorm.metrics.maths import _knn_sq_radii, feature_statistics, frechet_distance, precision_recall  # noqa: E402

K = 3
GROUND_FRAME = 3  # pixels along each edge that :func:`ground_colours` averages


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (b, c, h, w) images, radius 3 sigma, reflect padding."""
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def two_tints(x: torch.Tensor) -> torch.Tensor:
    """Each image's luminance in one of two fixed tints (alternating): shapes and textures kept,
    colour diversity gone."""
    lum = x.mean(1, keepdim=True)  # (b, 1, h, w) in [-1, 1]
    tints = torch.tensor([[1.0, 0.8, 0.2], [0.2, 0.9, 0.5]], dtype=x.dtype).view(2, 3, 1, 1)
    return (lum * tints[torch.arange(x.shape[0]) % 2]).clamp(-1, 1)


def with_noise(x: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(-1, 1)


def knn_radii(feats: np.ndarray, k: int = K) -> np.ndarray:
    """Distance from each row to its k-th nearest other row: the radius of precision_recall's
    balls (its own helper, so the two cannot drift apart)."""
    return np.sqrt(_knn_sq_radii(np.asarray(feats, dtype=np.float64), k, batch_size=256))


def nearest_distances(query: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Distance from each query row to its nearest reference row."""
    q, r = (torch.as_tensor(a, dtype=torch.float64) for a in (query, ref))
    return torch.cdist(q, r).min(1).values.numpy()


def high_frequency_power(x: torch.Tensor, cutoff: float = 0.25) -> float:
    """Mean spectral power of (b, c, h, w) images (each channel minus its mean) at spatial
    frequencies above ``cutoff`` cycles per pixel (Nyquist: 0.5)."""
    x = x.double() - x.double().mean((2, 3), keepdim=True)
    p = torch.fft.rfft2(x).abs().pow(2)  # (b, c, h, w // 2 + 1)
    fy = torch.fft.fftfreq(x.shape[2], dtype=torch.float64).view(-1, 1)
    fx = torch.fft.rfftfreq(x.shape[3], dtype=torch.float64).view(1, -1)
    return float(p[..., (fy * fy + fx * fx).sqrt() > cutoff].mean())


def within_class_spread(x: torch.Tensor, classes: int) -> float:
    """Mean over classes (image ``i`` has class ``i % classes``), pixels and channels of the
    standard deviation across that class's images of their 8x8 block means."""
    coarse = F.adaptive_avg_pool2d(x.double(), 8)  # (n, 3, 8, 8)
    labels = torch.arange(len(x)) % classes
    return float(torch.stack([coarse[labels == c].std(0).mean() for c in range(classes)]).mean())


def contrast(x: torch.Tensor) -> float:
    """Standard deviation of the pixel values over the whole set, mean over the channels: how far the
    colours spread about the set's mean colour (raising every image's contrast raises it)."""
    return float(x.double().transpose(0, 1).flatten(1).std(1).mean())


def chroma(x: torch.Tensor) -> float:
    """Mean over pixels of (largest - smallest channel): 0 for grey, 2 for a fully saturated primary."""
    x = x.double()
    return float((x.max(1).values - x.min(1).values).mean())


def ground_colours(x: torch.Tensor, frame: int = GROUND_FRAME) -> np.ndarray:
    """(n, 3): each image's mean colour over the ``frame`` pixels along its four edges, where the
    centred shapes never reach (they span the middle 75%): the colour of its ground."""
    x = x.double()
    edge = torch.ones(x.shape[-2:], dtype=torch.bool)
    edge[frame:-frame, frame:-frame] = False
    return x[:, :, edge].mean(-1).numpy()


def pixel_reference(x: torch.Tensor, classes: int, grounds: list[str] | None = None) -> dict:
    """What :func:`score` compares against: the reference's pixel measures, its class count and (optional)
    each reference image's background kind."""
    return {"hf": high_frequency_power(x), "spread": within_class_spread(x, classes), "classes": classes,
            "contrast": contrast(x), "chroma": chroma(x), "grounds": grounds, "ground_colours": ground_colours(x)}


def recall_by_group(real_inside: np.ndarray, classes: int, grounds: list[str] | None) -> dict:
    """The fraction of the reference's images that a set recalls, per class (image ``i`` has class
    ``i % classes``) and per background kind."""
    labels = np.arange(len(real_inside)) % classes
    out = {"recall_by_class": [float(real_inside[labels == c].mean()) for c in range(classes)]}
    if grounds is not None:
        g = np.asarray(grounds)
        out["recall_by_ground"] = {k: float(real_inside[g == k].mean()) for k in BACKGROUNDS if (g == k).any()}
    return out


def score(ref: np.ndarray, feats: np.ndarray, images: torch.Tensor, pix: dict) -> dict:
    pr = precision_recall(ref, feats, k=K, per_sample=True)
    (mu_r, cov_r), (mu_f, cov_f) = feature_statistics(ref), feature_statistics(feats)
    fid = frechet_distance(mu_r, cov_r, mu_f, cov_f)
    colour = precision_recall(pix["ground_colours"], ground_colours(images), k=K)
    return {"precision": pr["precision"], "recall": pr["recall"], "fid": fid,
            "fid_mean_term": float(((mu_r - mu_f) ** 2).sum()),
            "knn_radius": float(np.median(knn_radii(feats))),
            "to_nearest_real": float(np.median(nearest_distances(feats, ref))),
            "hf_power_vs_reference": high_frequency_power(images) / pix["hf"],
            "class_spread_vs_reference": within_class_spread(images, pix["classes"]) / pix["spread"],
            "contrast_vs_reference": contrast(images) / pix["contrast"],
            "chroma_vs_reference": chroma(images) / pix["chroma"],
            "ground_colour_precision": colour["precision"], "ground_colour_recall": colour["recall"],
            **recall_by_group(pr["real_inside"], pix["classes"], pix.get("grounds"))}


def real_set(n: int, pose: str, classes: int = 10, seed: int = 0) -> tuple[ProceduralShapes, torch.Tensor]:
    """The first ``n`` real images of procedural seed ``seed`` (0: the reference) and their dataset."""
    ds = ProceduralShapes(32, classes, pose=pose, seed=seed)
    return ds, ds.get_batch(range(n))[0]


def real_probes(ext, n: int, pose: str, classes: int = 10) -> tuple[np.ndarray, dict, dict, torch.Tensor]:
    """The reference features and pixel measures, the scored rows of the real probes (procedural
    shapes of the first ``classes`` classes: those of the generators under test), and the reference
    images themselves (rendered once: ``--grounds`` calls their grounds too)."""
    ref_ds, ref_x = real_set(n, pose, classes)
    ref, pix = ext.features(ref_x), pixel_reference(ref_x, classes, [ref_ds.background(i) for i in range(n)])
    x = real_set(n, pose, classes, seed=1)[1]
    rows = {"real (the floor)": x}
    for s in (0.5, 0.8, 1.2):
        rows[f"blur sigma {s} px"] = gaussian_blur(x, s)
    rows["noise std 0.1"] = with_noise(x, 0.1)
    rows["colours: two tints of the luminance"] = two_tints(x)
    return ref, pix, {name: score(ref, ext.features(v), v, pix) for name, v in rows.items()}, ref_x


def generated(G, n: int, seed: int = 0, batch_size: int = 250) -> torch.Tensor:
    """The ``n`` images of G that ``attnorm evaluate gan`` scores (``attnorm.inference.evaluation_samples``:
    sample ``i`` has class ``i % num_classes`` and its own latent), eval mode."""
    from attnorm.inference import evaluation_samples
    return torch.cat([x for _, x in evaluation_samples(G, n, G.num_classes, G.z_dim, seed, batch_size)])


GROUND_SEED, GROUND_TEST_SEED = 5, 7  # the ground CNN's training and held-out real sets (the reference is seed 0)
GROUND_N, GROUND_EPOCHS, GROUND_TEST_N = 12000, 15, 2000


def _ground_set(n: int, pose: str, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`real_set`'s images and the index into BACKGROUNDS of each one's ground."""
    ds, x = real_set(n, pose, classes, seed)
    return x, torch.tensor([BACKGROUNDS.index(ds.background(i)) for i in range(n)])


def ground_classifier(n: int = GROUND_N, epochs: int = GROUND_EPOCHS, pose: str = "centred", classes: int = 10,
                      test_n: int = GROUND_TEST_N, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """A small CNN trained (Adam, batch 64) on ``n`` real images to tell their background kinds apart,
    in eval mode, and its accuracy per kind on ``test_n`` held-out real images (``{kind: recall}``,
    plus ``"all"``)."""
    from torch import nn
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(),
                        nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(), nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, len(BACKGROUNDS)))
    x, g = _ground_set(n, pose, classes, GROUND_SEED)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, 64):
            j = perm[i:i + 64]
            loss = F.cross_entropy(net(x[j]), g[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    xt, gt = _ground_set(test_n, pose, classes, GROUND_TEST_SEED)
    called = ground_calls(net, xt)
    acc = {k: float((called[gt == i] == i).float().mean()) for i, k in enumerate(BACKGROUNDS) if (gt == i).any()}
    acc["all"] = float((called == gt).float().mean())
    return net, acc


@torch.no_grad()
def ground_calls(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """(N,) index into BACKGROUNDS of the kind ``net`` calls each image's ground."""
    return torch.cat([net(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def ground_fractions(net: torch.nn.Module, images: torch.Tensor) -> dict:
    """{kind: fraction of ``images`` whose ground ``net`` calls that kind}."""
    called = ground_calls(net, images)
    return {k: float((called == i).float().mean()) for i, k in enumerate(BACKGROUNDS)}


def checkpoint_rows(ext, ref: np.ndarray, pix: dict, ckpts: list[str], n: int, ground_net=None) -> dict:
    """Each generator's scored row; ``pix`` (:func:`pixel_reference`) also names the real sets' classes."""
    from attnorm.checkpoints import load_gan_generator
    classes = pix["classes"]
    out = {}
    for path in ckpts:
        G, _ = load_gan_generator(path, use_ema=True)
        if G.num_classes != classes:
            raise SystemExit(f"{path}: its G has {G.num_classes} classes, the real sets {classes} "
                             f"(pass --classes {G.num_classes})")
        x = generated(G, n)
        out[path] = score(ref, ext.features(x), x, pix)
        if ground_net is not None:
            out[path]["ground_fractions"] = ground_fractions(ground_net, x)
    return out


def to_markdown(res: dict) -> str:
    head = ("| images | precision | recall | FID | FID's mean term | median k-NN radius | median distance to nearest real "
            "| power above 1/4 of the sampling frequency / reference's | within-class spread / reference's "
            "| contrast / reference's | chroma / reference's | ground colour precision / recall |")
    rule = "|" + " --- |" * (head.count("|") - 1)
    lines = [f"# What recall responds to (n = {res['n']}, pose {res['pose']}, {res['classes']} classes, "
             f"classifier features, k = {K})", "",
             f"torch {res['torch']}, code {res['code']}, {res['seconds']:.0f} s.", "",
             "Real images (seed 1) against the reference (seed 0), as is and after one change:", "",
             head, rule]
    fmt = lambda name, r: (f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['fid']:.2f} | "  # noqa: E731
                           f"{r['fid_mean_term']:.2f} | {r['knn_radius']:.3f} | {r['to_nearest_real']:.3f} | "
                           f"{r['hf_power_vs_reference']:.3f} | {r['class_spread_vs_reference']:.3f} | "
                           f"{r['contrast_vs_reference']:.3f} | {r['chroma_vs_reference']:.3f} | "
                           f"{r['ground_colour_precision']:.3f} / {r['ground_colour_recall']:.3f} |")
    lines += [fmt(k, v) for k, v in res["real"].items()]
    if res["checkpoints"]:
        lines += ["", "Generated images (EMA G, the same reference):", "", head, rule]
        lines += [fmt(f"`{k}`", v) for k, v in res["checkpoints"].items()]
    rows = {**res["real"], **{f"`{k}`": v for k, v in res["checkpoints"].items()}}
    grounds = [g for g in BACKGROUNDS if any(g in r.get("recall_by_ground", {}) for r in rows.values())]
    lines += ["", "Which reference images each set recalls, by the image's background and by its class:", "",
              "| images | " + " | ".join(f"{g} ground" for g in grounds) + " | "
              + " | ".join(f"class {c}" for c in range(res["classes"])) + " |",
              "|" + " --- |" * (1 + len(grounds) + res["classes"])]
    for name, r in rows.items():
        by_ground = r.get("recall_by_ground", {})
        lines.append(f"| {name} | " + " | ".join(f"{by_ground.get(g, float('nan')):.3f}" for g in grounds) + " | "
                     + " | ".join(f"{x:.2f}" for x in r["recall_by_class"]) + " |")
    if res.get("grounds"):
        gr = res["grounds"]
        acc = ", ".join(f"{k} {v:.2f}" for k, v in gr["held_out_accuracy"].items())
        lines += ["", f"Which ground each set's images have, as a CNN trained on real images calls it (held-out accuracy: {acc}):",
                  "", "| images | " + " | ".join(BACKGROUNDS) + " |", "|" + " --- |" * (1 + len(BACKGROUNDS)),
                  "| reference (real) | " + " | ".join(f"{gr['reference'][k]:.3f}" for k in BACKGROUNDS) + " |"]
        for name, r in res["checkpoints"].items():
            if "ground_fractions" in r:
                lines.append(f"| `{name}` | " + " | ".join(f"{r['ground_fractions'][k]:.3f}" for k in BACKGROUNDS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="images per set")
    ap.add_argument("--pose", default="centred", help="procedural pose of the real sets")
    ap.add_argument("--classes", type=int, default=10,
                    help="procedural classes of the real sets: the generators' (default 10, as the presets)")
    ap.add_argument("--ckpt", action="append", default=[], help="a generator to place against the real sets")
    ap.add_argument("--grounds", action="store_true",
                    help="also train a small CNN on real images to call each image's background kind, and report "
                         "the fraction of each kind in every generator's images (about a minute on one thread)")
    ap.add_argument("--out", default="bench_results/diag_recall")
    args = ap.parse_args(argv)
    t0 = time.time()
    ext = get_extractor("classifier")
    ref, pix, real, ref_x = real_probes(ext, args.n, args.pose, args.classes)
    grounds = net = None
    if args.grounds:
        net, acc = ground_classifier(pose=args.pose, classes=args.classes)
        grounds = {"held_out_accuracy": acc,
                   "reference": ground_fractions(net, ref_x),
                   "protocol": f"CNN trained on {GROUND_N} real images (procedural seed {GROUND_SEED}), {GROUND_EPOCHS} "
                               f"epochs; held-out: {GROUND_TEST_N} (seed {GROUND_TEST_SEED}); reference: the seed-0 set"}
    res = {"n": args.n, "pose": args.pose, "classes": args.classes, "k": K, "real": real,
           "checkpoints": checkpoint_rows(ext, ref, pix, args.ckpt, args.n, net), "grounds": grounds,
           "torch": torch.__version__, "code": git_commit()}
    res["seconds"] = time.time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "results.md").write_text(to_markdown(res))
    print(to_markdown(res))
    return res


if __name__ == "__main__":
    main()
