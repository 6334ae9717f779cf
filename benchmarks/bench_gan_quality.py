"""GAN quality benchmark: train with a recipe for a wall-clock budget, then score it with `attnorm evaluate gan`.

    python benchmarks/bench_gan_quality.py demo                      # `attnorm demo` as shipped (5 min, or 2000 steps where longer), n=2000
    python benchmarks/bench_gan_quality.py demo --minutes 5 --n 2000 --out bench_results/gan_demo
    python benchmarks/bench_gan_quality.py ckpt attnorm/weights/gan_procedural32.safetensors   # score a file
    python benchmarks/bench_gan_quality.py ckpt RUN/generator.safetensors --draws 5   # means of 5 draws, with spread

What it runs (each a real command, so the numbers are what a user gets):

1. ``demo``: ``attnorm demo --out OUT/run [--minutes M]`` on a fresh run folder (the shipped preset,
   the demo's default threads), then ``attnorm evaluate gan --ckpt OUT/run/generator.safetensors
   --metrics acc,pr,fid,kid --n N --floor``. ``ckpt``: only the evaluation, of the given checkpoint.
2. The evaluation uses the shipped procedural-shapes classifier (features for FID/KID/PR, logits
   for the class accuracy) and reports the real-vs-real floor beside every metric: a second real
   set of the same size, scored against the same reference.

Writes ``OUT/results.json`` (targets, measured values, floors, the protocol, machine, torch
version, git commit) and ``OUT/results.md`` (a table), and prints the table.
Targets (issue 8): demo: accuracy >= 0.70, recall >= 0.30. Shipped weights: accuracy >= 0.95,
precision >= 0.7, recall >= 0.5, FID <= 3x the real-vs-real floor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from _provenance import git_commit  # benchmarks/_provenance.py (the script's folder is on sys.path)

TARGETS = {
    "demo": {"acc": (">=", 0.70), "recall": (">=", 0.30)},
    "ckpt": {"acc": (">=", 0.95), "precision": (">=", 0.70), "recall": (">=", 0.50), "fid_over_floor": ("<=", 3.0)},
}


def _run(cmd: list[str]) -> None:
    """Run an attnorm command; if it fails (it has printed its own one-line error), stop with one line."""
    print("+", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise SystemExit(f"bench_gan_quality: `attnorm {cmd[3]}` failed with exit status {rc} (its error is above)")


# (reported name, metric in the `attnorm evaluate gan` JSON, its number's key there)
FIELDS = (("acc", "acc", "value"), ("precision", "pr", "precision"), ("recall", "pr", "recall"),
          ("fid", "fid", "value"), ("kid", "kid", "mean"))


def measured_values(result: dict) -> dict:
    """Flatten `attnorm evaluate gan` JSON to {name: (value, floor)}."""
    m, out = result["metrics"], {}
    for name, metric, key in FIELDS:
        if metric in m:
            out[name] = (m[metric][key], (m[metric].get("floor") or {}).get(key))
    if "fid" in out and out["fid"][1]:
        out["fid_over_floor"] = (out["fid"][0] / out["fid"][1], None)
    return out


def spreads(result: dict) -> dict:
    """{name: standard deviation over the draws} of an `attnorm evaluate gan --draws K` result (K > 1)."""
    m, out = result["metrics"], {}
    for name, metric, key in FIELDS:
        od = (m.get(metric) or {}).get("over_draws") or {}
        if key in od:
            out[name] = od[key]["std"]
    return out


def check(values: dict, targets: dict) -> dict:
    res = {}
    for k, (op, t) in targets.items():
        v = values.get(k, (None, None))[0]
        ok = v is not None and (v >= t if op == ">=" else v <= t)
        res[k] = {"target": f"{op} {t}", "value": v, "met": bool(ok)}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["demo", "ckpt"])
    ap.add_argument("ckpt", nargs="?", help="checkpoint to score (what=ckpt)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="demo: its --minutes (default: the demo's own budget, 5 min or 2000 steps where that is longer)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--draws", type=int, default=1,
                    help="score this many draws (`attnorm evaluate gan --draws`) and judge their means; "
                         "the table then shows each number's spread over the draws")
    ap.add_argument("--out", default=None)
    ap.add_argument("--demo-args", default="", help="extra arguments for attnorm demo (quoted)")
    ap.add_argument("--reuse", action="store_true",
                    help="demo: score the run already in OUT/run (and its evaluation.json if present)")
    args = ap.parse_args(argv)
    out = Path(args.out or f"bench_results/gan_{args.what}_{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "attnorm.cli"]
    t0 = time.time()
    if args.what == "demo":
        run = out / "run"
        if not args.reuse:
            minutes = [] if args.minutes is None else ["--minutes", str(args.minutes)]
            _run(exe + ["demo", "--out", str(run)] + minutes + args.demo_args.split())
        ckpt = run / "generator.safetensors"  # the demo's EMA G with standing statistics (what drew samples.png)
    else:
        if not args.ckpt:
            ap.error("what=ckpt needs a checkpoint path")
        ckpt = Path(args.ckpt)
        if not ckpt.is_file():
            ap.error(f"checkpoint {ckpt} not found; pass a train-gan checkpoint or an exported .safetensors file")
    train_s = time.time() - t0
    ev = out / "evaluation.json"
    if not (args.reuse and ev.is_file()):
        _run(exe + ["evaluate", "gan", "--ckpt", str(ckpt), "--metrics", "acc,pr,fid,kid", "--n", str(args.n),
                    "--floor", "--draws", str(args.draws), "--out", str(ev)])
    result = json.loads(ev.read_text())
    values = measured_values(result)
    report = {
        "what": args.what, "checkpoint": str(ckpt), "n": args.n, "draws": args.draws,
        "spread_over_draws": spreads(result),
        "minutes": args.minutes if args.what == "demo" else None,
        "wall_seconds_training": round(train_s, 1) if args.what == "demo" else None,
        "values": {k: {"value": v, "floor": f} for k, (v, f) in values.items()},
        "targets": check(values, TARGETS[args.what]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count()},
        "torch": __import__("torch").__version__, "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.what == "demo":
        rep = json.loads((out / "run" / "report.json").read_text())
        report["steps"] = rep.get("steps")
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    sp = report["spread_over_draws"]
    lines = ["| metric | value | real-vs-real floor | target | met |", "| --- | --- | --- | --- | --- |"]
    for k, (v, f) in values.items():
        t = report["targets"].get(k)
        spread = f" (sd {sp[k]:.2g})" if k in sp else ""
        lines.append(f"| {k} | {v:.4g}{spread} | {'' if f is None else f'{f:.4g}'} | {t['target'] if t else ''} | "
                     f"{('yes' if t['met'] else 'NO') if t else ''} |")
    draws = f", means over {args.draws} draws (sd: their spread)" if args.draws > 1 else ""
    md = (f"{args.what}: {ckpt} (n={args.n}{draws}, commit {report['commit']}, {report['date']})\n\n"
          + "\n".join(lines) + "\n")
    (out / "results.md").write_text(md)
    print(md)
    return 0 if all(t["met"] for t in report["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
