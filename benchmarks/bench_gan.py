"""GAN benchmark: training-step cost of AN vs the no-attention and SA baselines, and the SSR ablation.

    python benchmarks/bench_gan.py                               # both parts, CPU defaults below
    python benchmarks/bench_gan.py --skip-ssr --repeats 9        # speed only
    python benchmarks/bench_gan.py --skip-speed --ssr-steps 200  # SSR ablation only
    python benchmarks/bench_gan.py --device cuda --batch 64      # on a GPU (times are synchronised)

(a) Training-step time. For each resolution (``--res``, default 32 and 64) the class-conditional
    G/D pair of :mod:`attnorm.models.gan` is built with ``attention`` = ``"an"``, ``"none"`` and
    ``"sa"`` at the same width (``--ch``), each with its own Adam optimisers and hinge loss
    (:class:`attnorm.losses.gan.HingeGANLoss`, orthogonality penalty included). One step is
    :meth:`attnorm.training.loop.TrainingLoop.train_step` of the real training loop: one D step
    on a fixed real batch of ``--batch`` images plus ``--batch`` fakes, then one G step with
    ``--batch`` fakes (no EMA). The three models run round-robin in one process (``--warmup``
    rounds untimed, then ``--repeats`` timed rounds), so a load change on a shared machine hits
    them alike; the table reports medians and the ratios AN/none (target <= 1.2) and AN/SA
    (target < 1 at 64 px).
(b) Self-sampling regularisation (SSR) ablation. Two AN GANs at ``--ssr-res`` px are trained
    with :class:`attnorm.training.gan.GANTraining` on the procedural shapes from the same seed,
    for the same ``--ssr-steps`` steps and batch, one with ``an_kwargs={"self_sampling": true}``
    and one with ``false``. Then ``--ssr-batches`` batches of ``--ssr-batch`` images (random
    classes, fixed latent seed, the EMA generator in eval mode as ``attnorm layouts`` uses it)
    are generated, and for each AN layer of G the number of entities that are the argmax for
    >= 2% of a batch's pixels (:func:`attnorm.viz.grid.entity_usage`) is averaged over batches.
    The paper reports that without SSR most entities go unused.

Prints two tables and writes everything to ``bench_results/gan.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from attnorm.bench import count_dispatches
from attnorm.provenance import git_commit

KINDS = ("an", "none", "sa")


# ---------------------------------------------------------------------------- (a) step time
class _FixedBatch:
    """Data stream returning the same real batch every time (state-free)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.batch = (x, y)

    def next(self):
        return self.batch

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def make_step(kind: str, res: int, ch: int, batch: int, num_classes: int, device: torch.device, seed: int = 0,
              compile_mode: str | None = None, channels_last: bool = True):
    """A zero-argument callable running one D step + one G step of the real training loop.
    ``channels_last``: G and D in channels-last memory format, as ``attnorm train-gan`` has them by default.
    ``compile_mode``: the loss calls ``torch.compile(G / D, mode=compile_mode)`` (the optimisers
    see the same parameters); with ``"reduce-overhead"`` (CUDA graphs) each step is marked as a
    new one for the graph trees."""
    from attnorm.losses.gan import HingeGANLoss
    from attnorm.models.gan import build_gan
    from attnorm.training.loop import Phase, TrainingLoop

    torch.manual_seed(seed)
    g, d = build_gan(resolution=res, ch=ch, num_classes=num_classes, attention=kind)
    mf = torch.channels_last if channels_last else torch.contiguous_format
    g.to(device, memory_format=mf), d.to(device, memory_format=mf)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, 3, res, res, generator=gen) * 2 - 1).to(device)
    y = torch.randint(num_classes, (batch,), generator=gen).to(device)
    run_g, run_d = (g, d) if not compile_mode else \
        (torch.compile(m, mode=compile_mode, dynamic=False) for m in (g, d))  # as train-gan compile=MODE
    loss = HingeGANLoss(run_g, run_d, z_dim=g.z_dim, num_classes=num_classes, batch_size=batch, device=device)
    phases = [Phase("D", d, torch.optim.Adam(d.parameters(), lr=4e-4, betas=(0.0, 0.999), foreach=True)),
              Phase("G", g, torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.0, 0.999), foreach=True),
                    needs_data=False)]  # foreach as in attnorm.training
    loop = TrainingLoop(phases, loss, _FixedBatch(x, y), run_dir=tempfile.gettempdir(), total_steps=1,
                        is_main=False)
    params = sum(p.numel() for p in g.parameters()) + sum(p.numel() for p in d.parameters())
    if compile_mode == "reduce-overhead":
        def graphed_step():
            torch.compiler.cudagraph_mark_step_begin()
            return loop.train_step()
        return graphed_step, params
    return loop.train_step, params


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def speed(resolutions, ch: int, batch: int, repeats: int, warmup: int, num_classes: int,
          device: torch.device, log=print, compile_mode: str | None = None, channels_last: bool = True) -> list[dict]:
    rows = []
    for res in resolutions:
        steps, params = {}, {}
        for kind in KINDS:
            steps[kind], params[kind] = make_step(kind, res, ch, batch, num_classes, device,
                                                  compile_mode=compile_mode, channels_last=channels_last)
        times: dict[str, list[float]] = {k: [] for k in KINDS}
        for rnd in range(warmup + repeats):
            for kind in KINDS:  # round-robin: every model sees the same machine load
                _sync(device)
                t0 = time.perf_counter()
                steps[kind]()
                _sync(device)
                dt = time.perf_counter() - t0
                if rnd >= warmup:
                    times[kind].append(dt)
        for kind in KINDS:
            med = statistics.median(times[kind])
            # on a GPU each is a kernel launch (a compiled step's fused kernels are not aten ops)
            ops = None if compile_mode else count_dispatches(steps[kind])
            rows.append({"res": res, "attention": kind, "ch": ch, "batch": batch, "params": params[kind],
                         "compile": compile_mode, "channels_last": channels_last,
                         "median_s": med, "times_s": times[kind], "dispatched_ops": ops})
            log(f"  {res:>3} px {kind:>4}: median {med * 1e3:8.1f} ms over {len(times[kind])} steps"
                + ("" if ops is None else f", {ops} aten ops per step"))
    return rows


def speed_ratios(rows: list[dict]) -> list[dict]:
    by = {(r["res"], r["attention"]): r["median_s"] for r in rows}
    out = []
    for res in sorted({r["res"] for r in rows}):
        an = by.get((res, "an"))
        for base, target, ok in (("none", "<= 1.2", lambda q: q <= 1.2), ("sa", "< 1 (at 64)", lambda q: q < 1.0)):
            if an is None or (res, base) not in by:
                continue
            q = an / by[(res, base)]
            out.append({"res": res, "ratio": f"AN/{base}", "value": q, "target": target,
                        "met": ok(q) if (base == "none" or res == 64) else None})
    return out


# ---------------------------------------------------------------------------- (b) SSR ablation
@torch.no_grad()
def entity_usage_of(G, batches: int, batch: int, seed: int, device: torch.device, threshold: float = 0.02):
    """Per AN layer of G: mean over batches of the number of entities that are argmax for >= threshold."""
    from attnorm.viz.grid import entity_usage

    G.eval()
    gen = torch.Generator().manual_seed(seed)
    per_layer: list[list[int]] = []
    sizes: list[int] = []
    for _ in range(batches):
        z = torch.randn(batch, G.z_dim, generator=gen).to(device)
        y = torch.randint(G.num_classes, (batch,), generator=gen).to(device)
        _, layouts = G(z, y, return_layouts=True)
        for j, s in enumerate(layouts):
            if len(per_layer) <= j:
                per_layer.append([])
                sizes.append(int(s.shape[-1]))
            per_layer[j].append(entity_usage(s.float(), threshold)[0])
    return [{"layer": j, "size": sizes[j], "used_per_batch": u, "mean_used": sum(u) / len(u),
             "num_entities": G.config["num_entities"]} for j, u in enumerate(per_layer)]


def ssr_ablation(res: int, ch: int, steps: int, batch: int, eval_batches: int, eval_batch: int,
                 threads: int, device: torch.device, seed: int = 0, log=print) -> list[dict]:
    from attnorm.training.gan import GANTraining, resolve_config

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ssr in (True, False):
            cfg = resolve_config(overrides=dict(
                resolution=res, ch=ch, batch_size=batch, steps=steps, seed=seed, attention="an",
                an_kwargs={"self_sampling": ssr}, device=str(device), threads=threads,
                log_every=max(steps // 4, 1), ckpt_every=0, sample_every=0, samples_per_class=1))
            run_dir = Path(tmp) / f"ssr_{ssr}"
            trainer = GANTraining(cfg, run_dir)
            t0 = time.perf_counter()
            loop = trainer.run()
            train_s = time.perf_counter() - t0
            usage = entity_usage_of(trainer.ema.shadow, eval_batches, eval_batch, seed + 777, device)
            from attnorm.training.loop import read_stats
            last = read_stats(run_dir / "stats.jsonl")[-1]
            rows.append({"self_sampling": ssr, "res": res, "ch": ch, "steps": loop.step, "batch": batch,
                         "train_s": train_s, "layers": usage,
                         "final_losses": {k: v for k, v in last.items() if "/" in k and "grad_norm" not in k}})
            log(f"  self_sampling={ssr}: {loop.step} steps in {train_s:.0f} s; entities used per AN layer: "
                + ", ".join(f"{u['mean_used']:.2f}/{u['num_entities']}" for u in usage))
    return rows


# ---------------------------------------------------------------------------- report
def format_tables(report: dict) -> str:
    lines = []
    sp = report.get("speed")
    if sp:
        a = report["args"]
        lines.append(f"(a) training step (1 D + 1 G step, hinge, batch {a['batch']}, ch {a['ch']}, "
                     f"{a['device']}, {a['threads']} thread(s)), median of {a['repeats']} after {a['warmup']} warm-up")
        lines.append(f"{'res':>4} {'attention':>9} {'params':>9} {'median ms':>10}")
        for r in sp:
            lines.append(f"{r['res']:>4} {r['attention']:>9} {r['params'] / 1e6:>8.3f}M {r['median_s'] * 1e3:>10.1f}")
        lines.append(f"{'res':>4} {'ratio':>9} {'value':>7}  target       met")
        for q in report["speed_ratios"]:
            met = "-" if q["met"] is None else ("yes" if q["met"] else "NO")
            lines.append(f"{q['res']:>4} {q['ratio']:>9} {q['value']:>7.3f}  {q['target']:<12} {met}")
    ssr = report.get("ssr")
    if ssr:
        a = report["args"]
        if lines:
            lines.append("")
        lines.append(f"(b) SSR ablation: {a['ssr_res']} px, ch {a['ch']}, {a['ssr_steps']} steps x batch "
                     f"{a['ssr_train_batch']}, seed {a['seed']}; entities argmax for >= 2% of pixels, mean over "
                     f"{a['ssr_batches']} batches of {a['ssr_batch']} (EMA G, eval)")
        lines.append(f"{'SSR':>5} {'train s':>8} {'layer':>5} {'size':>5} {'used':>11}  per batch")
        for r in ssr:
            for u in r["layers"]:
                lines.append(f"{'on' if r['self_sampling'] else 'off':>5} {r['train_s']:>8.0f} {u['layer']:>5} "
                             f"{u['size']:>5} {u['mean_used']:>6.2f} / {u['num_entities']:<2}  {u['used_per_batch']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--glibc-default-malloc", action="store_true",
                   help="keep glibc's default trimming (training keeps freed memory: attnorm.training.allocator)")
    p.add_argument("--res", type=int, nargs="+", default=[32, 64], help="resolutions of (a) (default 32 64)")
    p.add_argument("--ch", type=int, default=16, help="width unit of G and D, both parts (default 16)")
    p.add_argument("--batch", type=int, default=16, help="(a) real batch = fake batch (default 16)")
    p.add_argument("--repeats", type=int, default=7, help="(a) timed rounds (default 7)")
    p.add_argument("--warmup", type=int, default=2, help="(a) untimed rounds (default 2)")
    p.add_argument("--compile", default=None, metavar="MODE",
                   help="(a) torch.compile G and D with this mode (default, reduce-overhead, ...); "
                        "give --warmup >= 3 so compiling and graph recording are not timed")
    p.add_argument("--triton", action="store_true",
                   help="(a) AN's Triton statistics and pixel sums, as train-gan triton=true (CUDA only)")
    p.add_argument("--nchw", action="store_true",
                   help="(a) G and D in the usual NCHW layout (default: channels-last, as train-gan trains)")
    p.add_argument("--num-classes", type=int, default=10, help="(a) classes (default 10)")
    p.add_argument("--ssr-res", type=int, default=32, help="(b) resolution (default 32)")
    p.add_argument("--ssr-steps", type=int, default=1500, help="(b) training steps per model (default 1500)")
    p.add_argument("--ssr-train-batch", type=int, default=16, help="(b) training batch (default 16)")
    p.add_argument("--ssr-batches", type=int, default=8, help="(b) generated batches (default 8)")
    p.add_argument("--ssr-batch", type=int, default=32, help="(b) images per generated batch (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-ssr", action="store_true")
    p.add_argument("--json", default="bench_results/gan.json", help="output JSON (default bench_results/gan.json)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    from attnorm.training.config import use_triton
    triton_on = use_triton(args.triton, device)  # what a run's triton key does; on the CPU it says it does not apply
    from attnorm.training.allocator import retain_freed_memory_on
    retained = not args.glibc_default_malloc and retain_freed_memory_on(device)  # what training does on the CPU
    report: dict = {"args": {**vars(args), "device": str(device)}, "retain_freed_memory": retained, "triton": triton_on,
                    "env": {"torch": torch.__version__, "code": git_commit(), "python": platform.python_version(),
                            "machine": platform.machine(), "cpu_count": os.cpu_count(),
                            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
                    "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not args.skip_speed:
        print("(a) training step time")
        report["speed"] = speed(args.res, args.ch, args.batch, args.repeats, args.warmup, args.num_classes, device,
                                compile_mode=args.compile, channels_last=not args.nchw)
        report["speed_ratios"] = speed_ratios(report["speed"])
    if not args.skip_ssr:
        print("(b) SSR ablation")
        report["ssr"] = ssr_ablation(args.ssr_res, args.ch, args.ssr_steps, args.ssr_train_batch, args.ssr_batches,
                                     args.ssr_batch, args.threads, device, seed=args.seed)
    print()
    print(format_tables(report))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
