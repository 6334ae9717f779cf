"""The paper's attention ablation at CPU scale: AN, AN without SSR, SAGAN self-attention, none.

    python benchmarks/ablation_gan.py                              # 4 variants x 3 seeds, 300 s each
    python benchmarks/ablation_gan.py --seconds 300 --seeds 0,1,2 --jobs 2 --n 1000 --out benchmarks/results/ablation
    python benchmarks/ablation_gan.py --variants an,none --seeds 0 --seconds 60     # a quick look
    python benchmarks/ablation_gan.py --data digits --jobs 2 --out benchmarks/results/ablation_digits

Protocol (written into the results file):

* Every run is ``attnorm train-gan --config CONFIG`` (default ``configs/gan_demo.json``, the recipe
  ``attnorm demo`` trains; ``--config default`` for the older CPU preset ``DEFAULT_CONFIG``, which the
  tables before session 10 used) and only the attention changed: ``attention=an``, ``an`` with
  ``an_kwargs={"self_sampling": false}``, ``sa`` and ``none``; the same wall-clock budget
  (``max_seconds``, one thread each), seeds 0, 1, 2. Equal time, not equal steps: a cheaper
  layer gets more steps, which is the trade a user makes.
* Each checkpoint (EMA generator, as ``attnorm sample`` uses it) is scored by
  ``attnorm evaluate gan --metrics acc,pr,fid --n N`` with the shipped procedural-shapes
  classifier (class accuracy from its logits; FID and precision/recall (k=3) on its features),
  and the real-vs-real floor once (a second real set of the same size).
* Entity usage (AN variants): over 8 samples per class, the number of the 16 entities that are
  the argmax for >= 2% of the pixels of G's AN layer.
* ``--data digits``: the same runs on scikit-learn's handwritten digits as a 32x32 class folder
  (the train half; ``bench_gan_digits.prepare_digits``), scored by that benchmark's judge (a
  logistic regression fitted on the train half's 8x8 originals, independent of G and D) on N
  samples of the EMA G; its floor is the judge on the held-out real half. FID and
  precision/recall are not reported there: the shipped classifier's features describe the
  procedural shapes, not digits.
* Layout pictures of seed 0 of AN and AN-without-SSR (the supplement's Figure 5):
  ``OUT/layouts_<variant>.png`` (image, argmax layout, then each entity's map).

Writes ``OUT/results.json`` (every run, the protocol, machine, torch, commit) and ``OUT/results.md``
(mean +- std over seeds per variant), and prints the table. Runs already finished in OUT are reused
(``--fresh`` retrains them), so a killed ablation resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _provenance import git_commit  # benchmarks/_provenance.py (the script's folder is on sys.path)

VARIANTS = {
    "an": ["attention=\"an\""],
    "an_no_ssr": ["attention=\"an\"", "an_kwargs={\"self_sampling\": false}"],
    "sa": ["attention=\"sa\""],
    "none": ["attention=\"none\""],
}
LABELS = {"an": "AN", "an_no_ssr": "AN without SSR", "sa": "SAGAN self-attention", "none": "no attention"}
METRICS = ("acc", "fid", "precision", "recall", "entities_used", "steps")


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as f:
        f.write("+ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})


def entity_usage_and_layout(ckpt: Path, picture: Path | None) -> int | None:
    """Entities used (>= 2% of argmax pixels) in G's first AN layer over 8 samples per class;
    optionally save the layout figure of 2 samples for classes 0-3."""
    from attnorm.checkpoints import load_gan_generator
    from attnorm.inference import layout_figure
    from attnorm.viz.grid import save_image
    g, extra = load_gan_generator(ckpt)
    if g.config.get("attention") != "an":
        return None
    classes = list(range(len(extra["classes"])))
    _, usage = layout_figure(g, classes, n=8, seed=4)
    if picture is not None:
        grid, _ = layout_figure(g, classes[:4], n=2, seed=3)
        save_image(grid, picture, scale=2)
    return int(usage[0]["used"])


def one_run(variant: str, seed: int, args, out: Path) -> dict:
    run = out / f"{variant}_s{seed}"
    done = run / "result.json"
    if done.is_file() and not args.fresh:
        return json.loads(done.read_text())
    exe = [sys.executable, "-m", "attnorm.cli"]
    log = out / f"{variant}_s{seed}.log"
    if run.exists():
        import shutil
        shutil.rmtree(run)
    t0 = time.time()
    data = [f"data=\"{args.digits[0]}\"", "cache_images=true"] if args.data == "digits" else []
    config = [] if args.config == "default" else ["--config", args.config]
    _run(exe + ["train-gan", "--out", str(run), "--seed", str(seed)] + config + ["steps=1000000",
                f"max_seconds={args.seconds}", "threads=1", "log_every=50", "ckpt_every=1000000",
                "sample_every=1000000"] + VARIANTS[variant] + data + args.extra, log)
    ckpt = run / "checkpoints" / "latest.pt"
    if args.data == "digits":
        from attnorm.checkpoints import load_gan_generator
        from bench_gan_digits import judge_accuracy
        g, extra = load_gan_generator(ckpt)
        m = {"acc": {"value": judge_accuracy(g, extra["classes"], args.digits[1], args.n)},
             "fid": {"value": None}, "pr": {"precision": None, "recall": None}}
    else:
        ev = run / "evaluation.json"
        _run(exe + ["evaluate", "gan", "--ckpt", str(ckpt), "--metrics", "acc,pr,fid", "--n", str(args.n),
                    "--no-floor", "--out", str(ev), "--quiet"], log)
        m = json.loads(ev.read_text())["metrics"]
    from attnorm.training.loop import read_stats
    stats = read_stats(run / "stats.jsonl")
    picture = out / f"layouts_{variant}.png" if seed == args.seeds[0] and variant.startswith("an") else None
    res = {"variant": variant, "seed": seed, "steps": stats[-1]["step"], "train_seconds": stats[-1]["time"],
           "wall_seconds": round(time.time() - t0, 1),
           "acc": m["acc"]["value"], "fid": m["fid"]["value"],
           "precision": m["pr"]["precision"], "recall": m["pr"]["recall"],
           "entities_used": entity_usage_and_layout(ckpt, picture)}
    done.write_text(json.dumps(res, indent=2) + "\n")
    print(f"{variant} seed {seed}: " + ", ".join(f"{k} {res[k]}" for k in METRICS), flush=True)
    return res


def floor(args, out: Path) -> dict:
    """Real-vs-real floor of the same metrics at the same n (evaluate gan --floor on one run)."""
    path = out / "floor.json"
    if path.is_file():
        return json.loads(path.read_text())
    if args.data == "digits":  # the judge on the held-out real half
        f = {"acc": args.digits[2], "fid": None, "precision": None, "recall": None}
        path.write_text(json.dumps(f, indent=2) + "\n")
        return f
    ckpt = out / f"{args.variants[0]}_s{args.seeds[0]}" / "checkpoints" / "latest.pt"
    ev = out / "floor_evaluation.json"
    _run([sys.executable, "-m", "attnorm.cli", "evaluate", "gan", "--ckpt", str(ckpt), "--metrics", "acc,pr,fid",
          "--n", str(args.n), "--floor", "--out", str(ev), "--quiet"], out / "floor.log")
    m = json.loads(ev.read_text())["metrics"]
    f = {"acc": m["acc"]["floor"]["value"], "fid": m["fid"]["floor"]["value"],
         "precision": m["pr"]["floor"]["precision"], "recall": m["pr"]["floor"]["recall"]}
    path.write_text(json.dumps(f, indent=2) + "\n")
    return f


def mean_std(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def table(results: list[dict], fl: dict, args) -> str:
    head = "| variant | class acc ↑ | FID ↓ | precision ↑ | recall ↑ | entities used (of 16) | steps |"
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- |"]
    for v in args.variants:
        rs = [r for r in results if r["variant"] == v]
        lines.append(f"| {LABELS[v]} | " + " | ".join(mean_std([r[k] for r in rs]) for k in METRICS) + " |")
    lines.append("| real-vs-real floor | " + " | ".join("-" if fl[k] is None else f"{fl[k]:.3g}"
                                                      for k in ("acc", "fid", "precision", "recall")) + " | | |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--seconds", type=float, default=300.0, help="training wall-clock budget per run")
    ap.add_argument("--n", type=int, default=1000, help="samples per evaluation")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (one thread each)")
    ap.add_argument("--out", default="benchmarks/results/ablation")
    ap.add_argument("--fresh", action="store_true", help="retrain runs already finished in OUT")
    ap.add_argument("--data", choices=("procedural", "digits"), default="procedural",
                    help="procedural shapes (shipped classifier) or scikit-learn's digits (logistic-regression judge)")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "gan_demo.json"),
                    help="train-gan config file for every run (default: the demo's recipe); 'default' = DEFAULT_CONFIG")
    ap.add_argument("extra", nargs="*", metavar="key=value", help="config overrides for every run")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.digits = None
    if args.data == "digits":
        from bench_gan_digits import prepare_digits
        folder, judge, held_out_accuracy = prepare_digits(out)
        args.digits = (folder.resolve(), judge, held_out_accuracy)
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda vs: one_run(vs[0], vs[1], args, out), jobs))
    fl = floor(args, out)
    evaluation = ("attnorm evaluate gan --metrics acc,pr,fid (shipped classifier, EMA G)" if args.data == "procedural"
                  else "bench_gan_digits judge (logistic regression on the train half's 8x8 digits), EMA G; "
                       "floor: the judge on the held-out half")
    recipe = ("attnorm.training.gan.DEFAULT_CONFIG (the CPU preset)" if args.config == "default"
              else os.path.relpath(args.config, Path(__file__).resolve().parent.parent))
    report = {"protocol": {"recipe": recipe, "data": args.data,
                           "overrides": args.extra, "seconds_per_run": args.seconds, "threads_per_run": 1,
                           "jobs_at_once": args.jobs, "seeds": args.seeds, "n": args.n,
                           "evaluation": evaluation,
                           "entities_used": "entities that are the argmax for >= 2% of pixels, 8 samples/class"},
              "runs": results, "floor": fl,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "torch": __import__("torch").__version__, "commit": git_commit(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    extra = f" with {' '.join(args.extra)}" if args.extra else ""
    md = (f"GAN attention ablation ({args.data}, recipe {recipe}{extra}): {args.seconds:g} s per run, one thread, {args.jobs} run(s) at once, seeds "
          f"{args.seeds}, n={args.n}, commit {report['commit']}, {report['date']}\n\n" + table(results, fl, args) + "\n")
    (out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
