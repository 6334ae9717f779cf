"""Probe what a GAN's discriminator knows about the classes (issue 8's diagnosis).

    python benchmarks/gan_d_probe.py RUN/checkpoints/latest.pt [MORE.pt ...] --out benchmarks/results/gan_d_probe

For each ``train-gan`` checkpoint (it must hold D; exported .safetensors files do not), ``n`` real
procedural images that training never saw (dataset seed ``--data-seed``, default 777; the runs
train on seed 0) are scored by D under every label
(:func:`attnorm.evaluation.gan.discriminator_class_probe`): D used as a classifier (accuracy,
chance 1/C), the fraction of wrong labels scored below the right one (chance 0.5), and the mean
logit margin of the right label. Writes ``OUT/results.json`` and ``OUT/results.md`` (with machine,
torch version and git commit) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from _provenance import git_commit  # benchmarks/_provenance.py (the script's folder is on sys.path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="train-gan checkpoints (RUN/checkpoints/latest.pt)")
    ap.add_argument("--n", type=int, default=512, help="real images (default 512)")
    ap.add_argument("--data-seed", type=int, default=777, help="procedural dataset seed of the probe images")
    ap.add_argument("--out", default="bench_results/gan_d_probe")
    args = ap.parse_args(argv)

    from attnorm.checkpoints import gan_discriminator_from_state, load_checkpoint
    from attnorm.data.procedural import ProceduralShapes
    from attnorm.evaluation.gan import discriminator_class_probe

    torch.set_num_threads(1)
    rows = []
    for path in args.checkpoints:
        try:  # one read of the file for D and its step
            state = load_checkpoint(path)
            D = gan_discriminator_from_state(state, path)
        except (FileNotFoundError, ValueError) as exc:  # one line: missing, corrupt, not a train-gan checkpoint
            print(f"gan_d_probe: {exc}", file=sys.stderr)
            return 2
        step = state["step"]
        cfg = state["extra"].get("config") or {}
        if cfg.get("data"):
            print(f"{path}: trained on an image folder; this probe uses the procedural shapes", file=sys.stderr)
            return 2
        ds = ProceduralShapes(resolution=cfg["resolution"], num_classes=cfg["procedural_classes"],
                              length=args.n, seed=args.data_seed)
        x = torch.stack([torch.as_tensor(ds[i][0]) for i in range(args.n)])
        y = torch.tensor([ds.label(i) for i in range(args.n)])
        res = discriminator_class_probe(D, x, y, ds.num_classes)
        rows.append({"checkpoint": str(path), "step": int(step), **res})
        print(f"{path}: step {step} label accuracy {res['label_accuracy']:.3f} pairwise {res['pairwise']:.3f} "
              f"margin {res['margin']:.3f}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"n": args.n, "data_seed": args.data_seed, "commit": git_commit(), "torch": torch.__version__,
            "machine": {"platform": platform.platform(), "processor": platform.processor()},
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = [f"D class probe (n={args.n} unseen procedural images, data seed {args.data_seed}, "
             f"commit {meta['commit']}, torch {meta['torch']}, {meta['date']})", "",
             "| checkpoint | step | D as classifier (chance 1/C) | right > wrong label (chance 0.5) | margin |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['checkpoint']} | {r['step']} | {r['label_accuracy']:.3f} | {r['pairwise']:.3f} | {r['margin']:.3f} |"
              for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
