"""Inpainting quality benchmark (issue 9): the shipped weights against scikit-image's biharmonic and
OpenCV's Telea (and the pull-push fill the model starts from), per hole-area bin.

    python benchmarks/bench_inpaint_quality.py                                  # shipped weights
    python benchmarks/bench_inpaint_quality.py --ckpt runs/inpaint_cpu/checkpoints/latest.pt --out bench_results/inp
    python benchmarks/bench_inpaint_quality.py --sheet docs/inpaint_cases.png   # also copy the model's sheet

Protocol: the 4 held-out scikit-image photos (coffee, rocket, camera, gravel; never trained on),
short side resized to 256 and centre-cropped; a fixed set of ``--n`` (100) hole-area-balanced masks
(``attnorm masks --kind binned --size 256 --seed 0``: 20 per bin 0-10%, ..., 40-50%); pair k is
photo k % 4 with mask k; every metric of :mod:`attnorm.evaluation.inpaint` on the 8-bit composites
(PSNR and SSIM over the whole image; ``color_shift``: the fill's mean colour vs the ground truth's over
the hole, in levels of 255).

Targets: the model beats both biharmonic and Telea in mean PSNR and mean SSIM overall and in every
bin from 10% up; no systematic colour shift: the mean signed difference between the fill's mean colour and
the ground truth's (over pairs) within 3 levels of 255 in each channel (the mean absolute per-pair shift is
reported too: it also counts what no method can know, the content hidden in the hole). Writes ``OUT/results.json`` and ``OUT/results.md``
(per-bin table of all methods, targets met or not) plus each method's folder (per_image.csv,
summary.json, sheet.png); exit code 0 when every target is met.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

from _provenance import git_commit  # benchmarks/_provenance.py (the script's folder is on sys.path)

BINS = ("0-10%", "10-20%", "20-30%", "30-40%", "40-50%")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=None, help="generator (default: the shipped weights)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--methods", default="biharmonic,telea,pushpull", help="classical methods to compare")
    ap.add_argument("--out", default="bench_results/inpaint_quality")
    ap.add_argument("--sheet", default=None, help="copy the model's worst/best sheet here (e.g. docs/...png)")
    args = ap.parse_args(argv)

    import torch
    from attnorm.checkpoints import DEFAULT_INPAINT_WEIGHTS, load_inpaint_generator
    from attnorm.data.masks import write_eval_masks
    from attnorm.evaluation.inpaint import evaluate_inpaint, generator_method, load_eval_images, make_method

    torch.set_num_threads(1)
    out = Path(args.out)
    masks = out / "masks"
    if not (masks / "masks.json").is_file():
        write_eval_masks(masks, args.n, args.size, "binned", seed=0)
    images, names, desc = load_eval_images(None, args.size)
    ckpt = Path(args.ckpt) if args.ckpt else DEFAULT_INPAINT_WEIGHTS
    methods = {"model": generator_method(load_inpaint_generator(ckpt))}
    for m in [m for m in args.methods.split(",") if m]:
        methods[m] = make_method(m)
    summaries = {}
    for name, fn in methods.items():
        t0 = time.time()
        res = evaluate_inpaint(fn, images, masks, out / name, image_names=names, method_name=name,
                               protocol={"data": desc})
        summaries[name] = res["summary"]
        print(f"{name}: PSNR {res['summary']['total']['psnr']:.2f} SSIM {res['summary']['total']['ssim']:.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)

    def val(method, key, b=None):
        s = summaries[method]
        agg = s["total"] if b is None else s["per_bin"][b]
        return agg.get(key)

    targets = {}
    for base in [m for m in ("biharmonic", "telea") if m in summaries]:
        for key in ("psnr", "ssim"):
            for b in [None, *BINS[1:]]:
                label = f"{key} {'all' if b is None else b} > {base}"
                targets[label] = {"model": val("model", key, b), base: val(base, key, b),
                                  "met": val("model", key, b) > val(base, key, b)}
    bias = [val("model", k) for k in ("bias_r", "bias_g", "bias_b")]
    targets["systematic colour shift |mean bias| <= 3 per channel"] = {
        "model": bias, "met": all(abs(b) <= 3.0 for b in bias)}
    targets["(reported) mean |colour shift| per pair, vs Telea"] = {
        "model": val("model", "color_shift"), "telea": val("telea", "color_shift") if "telea" in summaries else None,
        "met": "telea" not in summaries or val("model", "color_shift") <= val("telea", "color_shift")}

    cols = list(summaries)
    lines = [f"Held-out photos ({desc}), {args.n} binned masks at {args.size} px; model: {ckpt.name}", "",
             "| hole area | n | " + " | ".join(f"{m} PSNR / SSIM" for m in cols) + " |",
             "| --- | --- | " + " | ".join("---" for _ in cols) + " |"]
    for b in [*BINS, None]:
        n = summaries["model"]["total" if b is None else "per_bin"]
        n = n["count"] if b is None else n[b]["count"]
        cells = [f"{val(m, 'psnr', b):.2f} / {val(m, 'ssim', b):.4f}" for m in cols]
        lines.append(f"| {'all' if b is None else b} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "| fill colour vs ground truth over the hole (levels of 255) | " + " | ".join(cols) + " |",
              "| --- | " + " | ".join("---" for _ in cols) + " |",
              "| mean abs. shift per pair | " + " | ".join(f"{val(m, 'color_shift'):.2f}" for m in cols) + " |",
              "| systematic shift (mean signed R, G, B) | " + " | ".join(
                  ", ".join(f"{val(m, k):+.2f}" for k in ("bias_r", "bias_g", "bias_b")) for m in cols) + " |", "",
              f"Targets met: {sum(t['met'] for t in targets.values())} of {len(targets)}"]
    lines += [f"- NOT met: {k}" for k, t in targets.items() if not t["met"]]
    md = "\n".join(lines) + "\n"
    report = {"checkpoint": str(ckpt), "n_masks": args.n, "size": args.size, "data": desc,
              "summaries": {m: {"total": s["total"], "per_bin": s["per_bin"]} for m, s in summaries.items()},
              "targets": targets, "machine": platform.platform(), "torch": torch.__version__,
              "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "results.md").write_text(md)
    if args.sheet:
        Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "model" / "sheet.png", args.sheet)
    print(md)
    return 0 if all(t["met"] for t in targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
