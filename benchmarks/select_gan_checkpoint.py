"""Choose a GAN run's checkpoint to ship: score every kept checkpoint, pick the best, confirm it on other latents.

    attnorm train-gan --config configs/gan_centred16.json --out RUN keep_every=2000     # keeps step_XXXXXXX.pt
    python benchmarks/select_gan_checkpoint.py RUN --from 20000 --out RESULTS
    python benchmarks/select_gan_checkpoint.py RUN --n 2000 --standing-stats 200 --confirm-seed 1 --out RESULTS

A long GAN run's quality moves from checkpoint to checkpoint (session 15: FID 0.22-0.32 over five
checkpoints 2000 steps apart, as much as the gain of a better recipe), so which one ships is part of
the figure. Protocol (written into the results file):

* Candidates: ``RUN/checkpoints/step_XXXXXXX.pt`` (the run's ``keep_every``) and ``latest.pt``, from
  step ``--from`` on; one per step.
* Each is exported as ``attnorm export-gan CKPT OUT/step_XXXXXXX.safetensors --standing-stats S``
  would (EMA generator, batch-norm statistics recomputed over S batches of the run's batch size),
  then scored as ``attnorm evaluate gan --metrics acc,pr,fid --n N --seed 0`` (shipped classifier;
  the reference is the run's own data), with the real-vs-real floor scored once.
* The best by FID is chosen, then scored again on other latents (``--confirm-seed``): picking the
  best of several on one latent set favours that set, and the second score says by how much.

Writes ``OUT/results.json`` (every score, the choice, the protocol, machine, torch, commit) and
``OUT/results.md`` (a table), and prints the table. Scores already in OUT (``OUT/step_XXXXXXX.json``)
are reused, so a killed selection resumes (an OUT holds one ``--n`` / ``--standing-stats``; other
settings are refused there). Copy the chosen file with ``cp OUT/step_XXXXXXX.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import git_commit  # noqa: E402
from bench_gan_quality import measured_values  # noqa: E402

from attnorm.checkpoints import export_gan_generator, load_checkpoint  # noqa: E402
from attnorm.evaluation.gan import evaluate_gan  # noqa: E402
from attnorm.io import atomic_write, write_json  # noqa: E402

METRICS = "acc,pr,fid"


def candidates(run: Path, first_step: int = 0, snapshot_dir: Path | None = None) -> dict[int, Path]:
    """{step: checkpoint} of the kept checkpoints and ``latest.pt``, from ``first_step`` on.

    With ``snapshot_dir``, ``latest.pt`` is first copied there and the copy is the candidate: a run
    still training replaces ``latest.pt`` every ``ckpt_every`` steps, and a later export of the
    original would hold a newer step than the one it is labelled with (session 18 found a "step
    13000" score that was step 14000's)."""
    ck = run / "checkpoints"
    found: dict[int, Path] = {}
    for path in sorted(ck.glob("step_*.pt")):
        m = re.fullmatch(r"step_(\d+)\.pt", path.name)
        if m:
            found[int(m.group(1))] = path
    latest = ck / "latest.pt"
    if latest.is_file():
        if snapshot_dir is not None:  # the trainer replaces latest.pt by a rename: a copy is one whole checkpoint
            snapshot_dir.mkdir(parents=True, exist_ok=True)
            latest = atomic_write(snapshot_dir / "latest_snapshot.pt", lambda tmp: shutil.copyfile(ck / "latest.pt", tmp))
        step = int(load_checkpoint(latest)["step"])
        found.setdefault(step, latest)
    return {s: p for s, p in sorted(found.items()) if s >= first_step}


def scores(result: dict) -> dict:
    """The numbers of an ``evaluate_gan`` result: acc, precision, recall, fid (and their floors where scored)."""
    values = measured_values(result)  # bench_gan_quality's reading of the result: {name: (value, floor)}
    names = ("acc", "precision", "recall", "fid")
    row = {k: values[k][0] for k in names}
    if values["fid"][1] is not None:
        row["floor"] = {k: values[k][1] for k in names}
    return row


def score(path: Path, out: Path, name: str, n: int, seed: int, floor: bool, batch_size: int) -> dict:
    """Scores of the generator file ``path``, cached in ``out/name.json``."""
    cached = out / f"{name}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    row = scores(evaluate_gan(checkpoint=path, metrics=METRICS, n=n, seed=seed, floor=floor, batch_size=batch_size))
    row.update({"file": str(path), "seed": seed, "n": n})
    write_json(cached, row)  # atomic: a killed selection leaves no torn cache file
    return row


def select(run: Path, out: Path, first_step: int = 0, n: int = 2000, standing_stats: int = 200,
           confirm_seed: int = 1, batch_size: int = 100, log=print) -> dict:
    """Export and score every candidate of ``run`` (see the module doc); returns the report."""
    found = candidates(run, first_step, snapshot_dir=out)
    if not found:
        raise SystemExit(f"select_gan_checkpoint: no checkpoint of {run} at or after step {first_step} "
                         "(train with keep_every=N to keep them)")
    out.mkdir(parents=True, exist_ok=True)
    settings, saved = {"n": n, "standing_stats": standing_stats}, out / "settings.json"
    if saved.is_file() and json.loads(saved.read_text()) != settings:
        raise SystemExit(f"select_gan_checkpoint: {out} holds scores made with {json.loads(saved.read_text())}, not "
                         f"{settings}; give another --out for other settings")
    write_json(saved, settings)
    rows, floor = {}, None
    for i, (step, ck) in enumerate(found.items()):
        name = f"step_{step:07d}"
        exported = out / f"{name}.safetensors"
        if not exported.is_file():
            export_gan_generator(ck, exported, standing_stats=standing_stats)
        row = score(exported, out, name, n, seed=0, floor=i == 0, batch_size=batch_size)
        floor = floor or row.get("floor")
        rows[step] = row
        log(f"step {step}: acc {row['acc']:.3f} precision {row['precision']:.3f} recall {row['recall']:.3f} "
            f"FID {row['fid']:.3f}")
    if floor is None:  # the first candidate was scored without it by an earlier call with another --from
        first = next(iter(found))
        floor = score(out / f"step_{first:07d}.safetensors", out, f"step_{first:07d}_floor", n, seed=0, floor=True,
                      batch_size=batch_size)["floor"]
    best = min(rows, key=lambda s: rows[s]["fid"])
    name = f"step_{best:07d}"
    confirm = score(out / f"{name}.safetensors", out, f"{name}_seed{confirm_seed}", n, seed=confirm_seed,
                    floor=False, batch_size=batch_size)
    return {
        "run": str(run), "best_step": best, "best_file": str(out / f"{name}.safetensors"),
        "rows": {str(s): r for s, r in rows.items()}, "confirm": confirm, "floor": floor,
        "protocol": {"metrics": METRICS, "n": n, "latent_seed": 0, "confirm_seed": confirm_seed,
                     "standing_stats": standing_stats, "first_step": first_step,
                     "choice": "lowest FID on latent seed 0, re-scored on confirm_seed"},
        "env": {"torch": torch.__version__, "code": git_commit(), "python": platform.python_version(),
                "machine": platform.machine(), "cpu_count": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def to_markdown(report: dict) -> str:
    floor = report["floor"] or {}
    p = report["protocol"]
    lines = [f"Checkpoints of {report['run']} (n={p['n']}, standing statistics {p['standing_stats']} batches, "
             f"commit {report['env']['code']}, {report['date']}); chosen: step {report['best_step']}", "",
             "| step | class acc | precision | recall | FID | FID / floor |", "| --- | --- | --- | --- | --- | --- |"]

    def line(label, r):
        ratio = f"{r['fid'] / floor['fid']:.1f}" if floor.get("fid") else ""
        return f"| {label} | {r['acc']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['fid']:.3f} | {ratio} |"
    for step, r in report["rows"].items():
        lines.append(line(f"**{step}** (chosen)" if int(step) == report["best_step"] else step, r))
    lines.append(line(f"{report['best_step']}, latents seed {p['confirm_seed']}", report["confirm"]))
    if floor:
        lines.append(f"| real-vs-real floor | {floor['acc']:.3f} | {floor['precision']:.3f} | {floor['recall']:.3f} | "
                     f"{floor['fid']:.3f} | 1.0 |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a train-gan run folder")
    ap.add_argument("--from", dest="first_step", type=int, default=0, help="first step to consider")
    ap.add_argument("--n", type=int, default=2000, help="samples per score")
    ap.add_argument("--standing-stats", type=int, default=200, help="batches for the exported G's BN statistics")
    ap.add_argument("--confirm-seed", type=int, default=1, help="latent seed of the chosen one's second score")
    ap.add_argument("--batch-size", type=int, default=100, help="generation batch of the evaluation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="default: RUN/selection")
    args = ap.parse_args(argv)
    run = Path(args.run)
    if not (run / "checkpoints").is_dir():
        raise SystemExit(f"select_gan_checkpoint: {run} is not a train-gan run folder (no checkpoints/ in it)")
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else run / "selection"
    report = select(run, out, args.first_step, args.n, args.standing_stats, args.confirm_seed, args.batch_size)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    md = to_markdown(report)
    (out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
