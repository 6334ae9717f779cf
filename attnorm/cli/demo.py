"""The ``demo`` command: train the small AN-GAN preset and write every figure into one folder."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from .common import intermixed, parse_overrides, positive_int, user_errors


# Batches over which the exported generator's batch-norm statistics are recomputed (each of the training batch
# size, export_gan_generator's default). Measured on session 12's demo run (2091 steps, n = 2000): the EMA G with its
# running averages scored class accuracy 0.824, recall 0.093, FID 15.2; with the statistics of 200 batches of 16
# 0.853, 0.112, 11.3. Session 15: batches of 32 (the training batch) against 16 lowered FID on three generators of
# three (two demo runs 4.54 -> 4.49, 6.21 -> 5.96; a 17000-step run 0.420 -> 0.388), recall level.
STANDING_BATCHES = 200

# The steps at which the demo's figures in the README were measured: twelve seeds on a 2-core Intel Xeon made
# 2924-3293 steps in 300 s (class accuracy 0.926 +- 0.013, recall 0.334 +- 0.040; EMA 0.995, before session 23).
# Accuracy and FID grow with steps; on session 21's 2-core AMD EPYC the same command made 1810-2108 steps, and at
# 2900-3072 steps its recall was 0.271 +- 0.045 (nine runs), lower at equal steps too (README, "On another host the
# demo misses its recall target"); session 23's preset (EMA 0.998) made 1993-2076 steps there (README, "Session 23"),
# session 31's (the mode-seeking term per pair) 2077-2414, eight seeds (benchmarks/results/gan_demo_s31/); session 37's
# (the learned sub-pixel doubling) 2124-2412, eight seeds over sessions 37-38 (benchmarks/results/gan_demo_s38/),
# session 39's (D's stddev in four channels) 2084-2351, eight seeds (benchmarks/results/gan_demo_s39/).
MEASURED_STEPS = 2900

# The fewest steps the demo trains when the five minutes give fewer and --minutes is not given (at most MAX_MINUTES of
# training in all). At 2000 steps the preset's one-thread screens on session 39's AMD EPYC scored recall 0.325-0.394 and
# accuracy 0.91-0.95 over four seeds (benchmarks/results/gan_demo_s39/); a 2-core AVX2 host without bf16 makes about
# 620 steps in five minutes (session 40: accuracy 0.11, recall 0.07, the samples coloured noise).
MIN_STEPS = 2000
MAX_MINUTES = 30.0

# The README's figures that slow_machine_note quotes (tests/test_gan_cli.py checks each is in the README).
FAST_HOST = {"steps": ("2924", "3293"), "accuracy": "0.926", "recall": "0.334"}
SLOW_HOST = {"steps": ("2084", "2351"), "accuracy": ("0.899", "0.962"), "recall": ("0.378", "0.480")}


def slow_machine_note(steps: int, seconds: float) -> str | None:
    """One line for a run that the time limit stopped short of the steps the README's figures were
    measured at: how many it made, what a slower host measured, and the ``--minutes`` that reach them here."""
    if steps >= MEASURED_STEPS or steps <= 0 or seconds <= 0:
        return None
    minutes = math.ceil(MEASURED_STEPS * seconds / steps / 60)
    fast, slow = FAST_HOST, SLOW_HOST
    return (f"this machine trained {steps} steps in {seconds / 60:.1f} min, fewer than the "
            f"{'-'.join(fast['steps'])} at which the README's demo figures were measured on a 2-core Intel Xeon "
            f"(class accuracy {fast['accuracy']}, recall {fast['recall']}); expect less here (a 2-core AMD EPYC at "
            f"{'-'.join(slow['steps'])} steps: accuracy {'-'.join(slow['accuracy'])}, recall "
            f"{'-'.join(slow['recall'])}). `attnorm demo --minutes {minutes}` gives about {MEASURED_STEPS} steps "
            f"on this machine.")


def demo_budget(args: argparse.Namespace) -> tuple[float, int]:
    """(minutes, min_steps): the time budget (5 without ``--minutes``) and the steps to train on to when it ends
    first (``--min-steps``; without it MIN_STEPS when ``--minutes`` is not given, else 0), at most ``--steps``."""
    minutes = 5.0 if args.minutes is None else args.minutes
    min_steps = args.min_steps if args.min_steps is not None else (MIN_STEPS if args.minutes is None else 0)
    return minutes, max(0, min(min_steps, args.steps))


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="run folder (default: runs/demo-<time>)")
    p.add_argument("--minutes", type=float, default=None,
                   help="training time budget (stops early at --steps); default 5, and where five minutes give fewer "
                        f"than --min-steps steps the demo goes on to them (at most {MAX_MINUTES:g} minutes)")
    p.add_argument("--min-steps", type=int, default=None,
                   help=f"keep training to this many steps when the time budget ends first, up to {MAX_MINUTES:g} "
                        f"minutes in all (default {MIN_STEPS} without --minutes, else 0: stop at the budget)")
    p.add_argument("--steps", type=int, default=4000, help="maximum training steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: the idle cores, i.e. the cores minus those other processes keep "
                        "busy over half a second, at least 1; two threads beside a busy core make a step "
                        "several times slower)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="skip the comparison figures from the shipped pretrained weights")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="train-gan config overrides")
    intermixed(p)


def demo(args: argparse.Namespace) -> int:
    """Train the demo preset (AN generator, light conv D) on centred procedural shapes; write every figure.

        attnorm demo                        # 5 minutes on 2 CPU cores, or 2000 steps where that is longer -> runs/demo-<time>/
        attnorm demo --out runs/demo --minutes 2

    The folder gets the training run (config.json, stats.jsonl, samples/, checkpoints/),
    generator.safetensors (the EMA generator with standing batch-norm statistics, which draws the
    figures; `attnorm sample --ckpt` and `attnorm evaluate gan --ckpt` take it), samples.png (a row
    per class), interpolation.png (class 0 -> 1, fixed z per row),
    layouts.png (AN argmax layout + entity maps), loss_curve.png and report.md/report.json
    (final losses, entity usage, timings). When the run has the shipped weights' classes (the
    default procedural shapes), pretrained_samples.png, pretrained_interpolation.png and
    pretrained_layouts.png show the same figures (same z) from the shipped pretrained weights
    (session 13's version of this recipe, trained for about 110 minutes on one CPU thread, the last
    80 at a quarter of the learning rate: configs/gan_centred16.json; --no-pretrained skips them).
    The preset is attnorm.training.gan.DEMO_CONFIG (= configs/gan_demo.json); key=value overrides it.
    """
    from attnorm.checkpoints import DEFAULT_GAN_WEIGHTS, export_gan_generator, load_gan_generator
    from attnorm.inference import interpolation_images, layout_figure, sample_images
    from attnorm.io import to_uint8
    from attnorm.training.gan import DEMO_CONFIG, GANTraining, resolve_config
    from attnorm.training.config import idle_cpu_threads
    from attnorm.training.loop import read_stats
    from attnorm.viz.grid import make_grid, save_image, save_line_plot

    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    threads = args.threads or idle_cpu_threads()
    minutes, min_steps = demo_budget(args)
    # The demo preset (DEMO_CONFIG: centred shapes, the light conv D) with a wall-clock budget.
    overrides = {"steps": args.steps, "seed": args.seed, "max_seconds": minutes * 60, "threads": threads,
                 "log_every": 50, "ckpt_every": 500, "sample_every": 500}
    overrides.update(parse_overrides(args.overrides))
    with user_errors():
        cfg = resolve_config(overrides=overrides, base=DEMO_CONFIG)
    print(f"demo: training the demo preset ({cfg['resolution']} px, ch {cfg['ch']}, attention {cfg['attention']!r}, "
          f"D {cfg['d_arch']!r}) on {cfg['procedural_pose']} procedural shapes for up to {minutes:g} min"
          + (f" (or {min_steps} steps, at most {MAX_MINUTES:g} min)" if min_steps else "") + ", "
          f"{cfg['threads']} CPU thread{'s' if cfg['threads'] != 1 else ''}"
          f"{', bf16 autocast (native on this CPU)' if cfg['amp'] else ''} -> {out}")
    t0 = time.perf_counter()
    trainer = GANTraining(cfg, out)
    loop = trainer.run()
    extended = None
    if loop.stop_reason.startswith("time limit") and loop.step < min_steps:
        budget = max(MAX_MINUTES, minutes) * 60
        rate = loop.step / max(loop.elapsed, 1e-9)
        extended = {"budget_steps": loop.step, "min_steps": min_steps, "max_seconds": budget}
        print(f"demo: {minutes:g} min gave {loop.step} steps on this machine ({rate:.2f} steps/s); the preset needs "
              f"about {min_steps} for class-correct samples, so it trains on to {min_steps} steps (about "
              f"{math.ceil(min((min_steps - loop.step) / max(rate, 1e-9), budget - loop.elapsed) / 60)} more min, "
              f"at most {budget / 60:g} in all; --min-steps 0 stops at the time budget)", flush=True)
        loop.total_steps, loop.max_seconds = min_steps, budget
        loop = trainer.run()  # continues in memory
    train_s = time.perf_counter() - t0

    ckpt = loop.checkpoint_path
    # The EMA generator with BigGAN's standing statistics (its batch norms' averages recomputed over
    # STANDING_BATCHES fresh batches), exported as the shipped weights are: it draws every figure and
    # is what `attnorm evaluate gan --ckpt OUT/generator.safetensors` scores.
    generator_file = export_gan_generator(ckpt, out / "generator.safetensors", standing_stats=STANDING_BATCHES)
    g, extra = load_gan_generator(generator_file)
    classes = extra["classes"]
    n = 8
    scale = max(1, 128 // g.resolution)

    def figures(gen, prefix: str) -> dict:
        """samples, interpolation and (AN) layouts of ``gen``, with the same z for every generator."""
        x, _ = sample_images(gen, list(range(len(classes))), n, seed=1)
        files = {"samples": save_image(make_grid(to_uint8(x), ncol=n), out / f"{prefix}samples.png", scale=scale)}
        xi = interpolation_images(gen, 0, 1, steps=8, rows=4, seed=2)
        files["interpolation"] = save_image(make_grid(to_uint8(xi), ncol=8), out / f"{prefix}interpolation.png",
                                            scale=scale)
        if gen.config.get("attention") == "an":
            grid, _ = layout_figure(gen, list(range(min(4, len(classes)))), n=2, seed=3)
            files["layouts"] = save_image(grid, out / f"{prefix}layouts.png", scale=max(1, scale // 2))
        return files

    paths = figures(g, "")
    report: dict = {"steps": loop.step, "stop_reason": loop.stop_reason, "train_seconds": round(train_s, 1),
                    "extended": extended,
                    "classes": classes, "generator": generator_file.name, "standing_batches": STANDING_BATCHES,
                    "config": cfg}
    pretrained = None
    if args.pretrained and DEFAULT_GAN_WEIGHTS.is_file():
        gp, extra_p = load_gan_generator(None)
        if list(extra_p.get("classes") or []) == list(classes) and gp.resolution == g.resolution:
            pretrained = figures(gp, "pretrained_")
            report["pretrained"] = {"weights": DEFAULT_GAN_WEIGHTS.name,
                                    "steps": (extra_p.get("meta") or {}).get("source_step"),
                                    "files": {k: p.name for k, p in pretrained.items()}}
    if cfg["attention"] == "an":
        # usage over more images: 8 per class
        _, usage_all = layout_figure(g, list(range(len(classes))), n=8, seed=4)
        report["entity_usage"] = [{k: u[k] for k in ("layer", "size", "used", "num_entities", "fractions")}
                                  for u in usage_all]
    stats = read_stats(out / "stats.jsonl")
    paths["loss_curve"] = out / "loss_curve.png"
    save_line_plot(stats, ["D/loss", "G/loss"], paths["loss_curve"])
    last = stats[-1]
    report["final"] = {k: round(v, 4) for k, v in last.items() if isinstance(v, float)}
    first_window = stats[0]
    report["first"] = {k: round(v, 4) for k, v in first_window.items() if isinstance(v, float)}
    # Only for the preset as shipped: overrides change what the README's figures describe.
    if loop.stop_reason.startswith("time limit") and not args.overrides:
        note = slow_machine_note(loop.step, train_s)
        if note:
            report["slow_machine"] = note
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    lines = [f"# attnorm demo: {out}", "",
             f"- trained {loop.step} steps in {train_s:.0f} s ({loop.stop_reason}"
             + (f"; the {minutes:g}-minute budget gave {extended['budget_steps']} steps, extended to "
                f"{extended['min_steps']}" if extended else "") + "); "
             f"{cfg['resolution']} px, ch {cfg['ch']}, batch {cfg['batch_size']}, "
             f"D {cfg['d_arch']!r}" + (f" (projection term {'on' if cfg['d_projection'] else 'off'})"
                                        if cfg['d_arch'] == "resblock" else "") + ", "
             f"{len(classes)} procedural classes ({cfg['procedural_pose']} pose): {', '.join(classes)}",
             f"- losses, first log window -> last: D {report['first'].get('D/loss')} -> "
             f"{report['final'].get('D/loss')}, G {report['first'].get('G/loss')} -> {report['final'].get('G/loss')}"
             f" (D(real) {report['final'].get('D/real')}, D(fake) {report['final'].get('D/fake')})"]
    if report.get("slow_machine"):
        lines.append(f"- note: {report['slow_machine']}")
    for u in report.get("entity_usage", []):
        lines.append(f"- AN layer {u['layer']} ({u['size']}x{u['size']}): {u['used']} of {u['num_entities']} "
                     f"entities are the argmax for >= 2% of pixels ({8 * len(classes)} generated images)")
    lines += ["", "Files:"] + [f"- {k}: {p.name}" for k, p in paths.items()]
    if pretrained:
        lines += [f"- the same figures from the shipped pretrained weights ({DEFAULT_GAN_WEIGHTS.name}, "
                  f"{report['pretrained']['steps']} training steps; recipe: README, \"Shipped weights\"): "
                  + ", ".join(p.name for p in pretrained.values())]
    lines += [f"- generator (EMA, batch-norm statistics over {STANDING_BATCHES} batches; it drew the figures): "
              f"{generator_file.name} (`attnorm evaluate gan --ckpt {generator_file}`, `attnorm sample --ckpt ...`)",
              f"- checkpoint: {ckpt.relative_to(out)}", "- per-step statistics: stats.jsonl",
              "- training-time sample grids: samples/", "",
              "Re-create figures: `attnorm sample --ckpt " + str(ckpt) + " --n 8 --out grid.png`, "
              "`attnorm interpolate --ckpt ... --from 0 --to 1`, `attnorm layouts --ckpt ... --classes 0,1`."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nreport: {out / 'report.md'}")
    return 0
