"""The GAN recipe on a small real class-folder dataset: scikit-learn's handwritten digits (offline).

    python benchmarks/bench_gan_digits.py --minutes 10 --out bench_results/gan_digits

1. Writes scikit-learn's 1,797 8x8 digit images (10 classes) as a class-folder dataset: a random
   half (``default_rng(0)``) as ``OUT/data/train/<digit>/*.png``, upscaled to 32x32 (bicubic, grey as RGB);
   the other half is held out for the judge's floor.
2. Trains ``configs/gan_procedural32.json``'s recipe on the train folder with ``attnorm train-gan
   --data`` for ``--minutes`` (one thread).
3. Judge, independent of the generator and its discriminator: scikit-learn's
   ``LogisticRegression`` fitted on the *train* half's original 8x8 images. Generated 32x32 samples
   are turned back into the judge's input space (grey = channel mean, box-downsampled 4x to 8x8,
   rescaled to 0..16 like the originals). Reports the judge's accuracy on ``--n`` generated samples
   (labels ``i % 10``) and, as the real-vs-real floor, on the held-out real half.

Writes ``OUT/results.json`` / ``OUT/results.md`` and prints the table. Needs ``pip install scikit-learn``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def to_judge_space(x) -> np.ndarray:
    """(b, 3, 32, 32) in [-1, 1] -> (b, 64) in 0..16 like sklearn's digits."""
    import torch.nn.functional as F
    g = x.float().mean(1, keepdim=True)  # grey
    g = F.avg_pool2d(g, 4)  # 8x8
    return ((g.clamp(-1, 1) + 1) / 2 * 16).flatten(1).numpy()


def prepare_digits(out: Path):
    """Write the train half of scikit-learn's digits as a 32x32 class folder under ``out/data/train``
    (once) and fit the judge on it. Returns (folder, judge, judge accuracy on the held-out half)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    digits = load_digits()
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(digits.images))
    train, held = perm[: len(perm) // 2], perm[len(perm) // 2:]
    data = out / "data" / "train"
    if not data.is_dir():
        for i in train:
            d = data / str(int(digits.target[i]))
            d.mkdir(parents=True, exist_ok=True)
            arr = (digits.images[i] / 16 * 255).astype(np.uint8)
            Image.fromarray(arr).resize((32, 32), Image.BICUBIC).convert("RGB").save(d / f"{i:04d}.png")
    judge = LogisticRegression(max_iter=2000).fit(digits.data[train], digits.target[train])
    return data, judge, float(judge.score(digits.data[held], digits.target[held]))


def judge_accuracy(g, classes, judge, n: int, seed: int = 0) -> float:
    """The judge's accuracy on the ``n`` samples of G that ``attnorm evaluate gan`` draws
    (``attnorm.inference.evaluation_samples``: labels ``i % classes``; class names are the digits)."""
    from attnorm.inference import evaluation_samples
    right = 0
    for y, x in evaluation_samples(g, n, len(classes), g.z_dim, seed, batch_size=200):
        want = np.array([int(classes[int(c)]) for c in y])
        right += int((judge.predict(to_judge_space(x)) == want).sum())
    return right / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--out", default="bench_results/gan_digits")
    ap.add_argument("--config", default="configs/gan_procedural32.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    data, judge, floor = prepare_digits(out)
    run = out / "run"
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "attnorm.cli", "train-gan", "--config", args.config, "--data", str(data),
                    "--out", str(run), f"max_seconds={args.minutes * 60}", "threads=1", "cache_images=true",
                    "log_every=100"], check=True)
    from attnorm.checkpoints import load_gan_generator
    g, extra = load_gan_generator(run / "checkpoints" / "latest.pt")
    acc = judge_accuracy(g, extra["classes"], judge, args.n)
    train = list(data.rglob("*.png"))
    steps = json.loads((run / "checkpoints").joinpath("..", "config.json").resolve().read_text()).get("steps")
    report = {"dataset": f"sklearn digits, {len(train)} train / {1797 - len(train)} held-out", "minutes": args.minutes,
              "wall_seconds": round(time.time() - t0, 1), "judge": "LogisticRegression on the train half's 8x8 images",
              "accuracy_generated": acc, "accuracy_real_heldout_floor": floor, "n": args.n,
              "config": args.config, "config_steps": steps}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    md = (f"| digits ({report['dataset']}) | judge accuracy |\n| --- | --- |\n"
          f"| generated (n={args.n}, {args.minutes:g} min) | {acc:.3f} |\n| held-out real (floor) | {floor:.3f} |\n")
    (out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
