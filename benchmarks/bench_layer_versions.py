"""The AN layer at two code versions, side by side in one process: the working tree's against a git revision's.

    OMP_NUM_THREADS=1 python benchmarks/bench_layer_versions.py --baseline HEAD~1 --sizes 32,64 \\
        --out benchmarks/results/layer_versions_s18

A change to the layer's fast path is worth a few percent at a time, less than separate runs of
``attnorm bench`` can resolve on a small shared machine (their AN / conv1x1+IN ratios move by 5-10%
from run to run). Here the revision's ``attnorm/layers`` (extracted with ``git archive`` into a
temporary package) and the working tree's run in one process with the same weights and inputs,
interleaved within every round together with conv1x1+InstanceNorm as the yardstick, timed two ways:

* cold: each timed forward+backward right after a SAGAN step on the same input (``attnorm bench``
  times its variants round-robin, so each runs after the others have filled the cache);
* warm: each right after an untimed forward+backward of the same module.

Before timing, both versions' outputs and gradients (input and every parameter) are compared on the
same SSR positions; the largest differences are reported. The figures: each version's median time,
the median over rounds of its time over the baseline's in that round, and its median over
conv1x1+IN's. Writes ``OUT/results.json`` (every time, the machine, torch and both code states) and
``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import nullcontext
from io import BytesIO
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import cpu_model, git_commit  # noqa: E402

from attnorm.bench import layer_module  # noqa: E402  (the modules attnorm bench times)
from attnorm.io import write_json, write_text  # noqa: E402
from attnorm.training.allocator import retain_freed_memory  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def load_layers_at(revision: str, into: Path):
    """``attnorm/layers`` as it was at ``revision``, imported as a package of its own (its imports
    are relative); SystemExit with one line if git does not know the revision."""
    proc = subprocess.run(["git", "-C", str(REPO), "archive", revision, "attnorm/layers"], capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: git archive {revision} attnorm/layers failed: "
                         f"{proc.stderr.decode().strip().splitlines()[0] if proc.stderr else 'no output'}")
    with tarfile.open(fileobj=BytesIO(proc.stdout)) as tar:
        tar.extractall(into, filter="data")
    name = "baseline_layers"
    (into / "attnorm" / "layers").rename(into / name)
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]  # an earlier call's revision
    sys.path.insert(0, str(into))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(into))


def revision_name(revision: str) -> str:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", revision], capture_output=True, text=True)
    return out.stdout.strip() or revision


def autocast_for(x: torch.Tensor):
    """bf16 autocast for a bf16 input (as training runs it), else nothing."""
    return torch.autocast(x.device.type, dtype=torch.bfloat16) if x.dtype == torch.bfloat16 else nullcontext()


def parity(new: nn.Module, old: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> dict:
    """Largest differences of output, input gradient and parameter gradients (relative to each
    gradient's largest entry, or 1e-3 of the largest gradient where that is more) between the two
    versions on the same SSR positions."""
    results = []
    for module in (new, old):
        xi = x.detach().clone().requires_grad_()
        module.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        with autocast_for(x):
            y = module(xi)
        y.backward(grad)
        results.append((y.detach(), xi.grad, {k: p.grad for k, p in module.named_parameters()}))
    (y1, gx1, gp1), (y2, gx2, gp2) = results
    # each relative to its own largest entry, floored at 1e-3 of the largest of all: a gradient that is zero in
    # exact arithmetic (the SSR key bias's: it shifts every entity's logit alike) is rounding on both sides
    floor = 1e-3 * max(g.abs().max().item() for g in gp1.values())
    param = max(((gp1[k] - gp2[k]).abs().max() / gp1[k].abs().max().clamp_min(max(floor, 1e-30))).item() for k in gp1)
    return {"output_max_abs": (y1 - y2).abs().max().item(), "input_grad_max_abs": (gx1 - gx2).abs().max().item(),
            "param_grad_max_rel": param}


def measure(modules: dict, size: int, batch: int, channels: int, rounds: int, channels_last: bool = False,
            dtype: torch.dtype = torch.float32) -> dict:
    """Parity and timings on one input; ``channels_last`` / ``dtype``: the input's (and its gradient's)
    memory format and dtype (a channels-last bf16 map is what AN gets inside the GAN presets' training)."""
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, channels, size, size, generator=g).to(dtype).contiguous(memory_format=fmt).requires_grad_()
    grad = torch.randn(batch, channels, size, size, generator=g).to(dtype).contiguous(memory_format=fmt)
    sa = layer_module("sa", channels, 1)

    def step(module):
        x.grad = None
        with autocast_for(x):
            y = module(x)
        y.backward(grad)

    out = {"parity": parity(modules["working tree"], modules["baseline"], x, grad)}
    for mode in ("cold", "warm"):
        times = {k: [] for k in modules}
        for _ in range(rounds):
            for name, module in modules.items():
                step(sa if mode == "cold" else module)
                t0 = time.perf_counter()
                step(module)
                times[name].append(time.perf_counter() - t0)
        kept = {k: v[2:] for k, v in times.items()}  # the first two rounds warm up
        out[mode] = {
            name: {"median_ms": 1e3 * statistics.median(v),
                   "over_baseline": statistics.median(a / b for a, b in zip(v, kept["baseline"])),
                   "over_conv_in": statistics.median(v) / statistics.median(kept["conv1x1+IN"]),
                   "times_ms": [1e3 * t for t in times[name]]}
            for name, v in kept.items()}
    return out


def format_md(report: dict) -> str:
    c = report["config"]
    lines = [f"# AN layer: working tree ({c['code']}) against {c['baseline']}", "",
             f"{c['machine']}, {c['threads']} thread(s), torch {c['torch']}, b {c['batch']}, c {c['channels']}, "
             f"n {c['entities']}, input {c.get('input', 'float32 NCHW')}, {c['rounds']} rounds (first 2 dropped), "
             f"{c['started']}", ""]
    for size, res in report["sizes"].items():
        p = res["parity"]
        lines += [f"## {size}x{size}", "",
                  f"parity: output {p['output_max_abs']:.2e}, input gradient {p['input_grad_max_abs']:.2e}, "
                  f"parameter gradients (relative) {p['param_grad_max_rel']:.2e}", "",
                  "| timing | version | median ms | / baseline (median of rounds) | / conv1x1+IN |",
                  "| --- | --- | --- | --- | --- |"]
        for mode in ("cold", "warm"):
            for name, r in res[mode].items():
                lines.append(f"| {mode} | {name} | {r['median_ms']:.2f} | {r['over_baseline']:.3f} | {r['over_conv_in']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="HEAD", help="git revision whose attnorm/layers is the baseline (default HEAD)")
    ap.add_argument("--sizes", default="32,64", help="feature-map sides, comma-separated")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--entities", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=21, help="timed rounds per way of timing (the first two are dropped)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--channels-last", action="store_true", help="the input and its gradient in channels-last memory")
    ap.add_argument("--bf16", action="store_true", help="the input and its gradient in bfloat16 (as under autocast)")
    ap.add_argument("--out", required=True, help="folder for results.json and results.md")
    args = ap.parse_args(argv)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    layout = f"{'bfloat16' if args.bf16 else 'float32'} {'channels-last' if args.channels_last else 'NCHW'}"
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        raise SystemExit(f"error: --sizes must be integers separated by commas, got {args.sizes!r}")
    if args.rounds < 3:
        raise SystemExit(f"error: --rounds must be >= 3 (the first two are dropped), got {args.rounds}")
    torch.set_num_threads(args.threads)
    retain_freed_memory()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    with tempfile.TemporaryDirectory() as tmp:
        old_layers = load_layers_at(args.baseline, Path(tmp))
        torch.manual_seed(0)
        new = layer_module("an", args.channels, args.entities).train()  # sigma 0.5, as attnorm bench times it
        old = old_layers.AttentiveNorm(args.channels, args.entities).train()
        old.load_state_dict(new.state_dict())
        conv = layer_module("conv_in", args.channels, args.entities)
        modules = {"baseline": old, "working tree": new, "conv1x1+IN": conv}
        report = {"config": {"baseline": f"{args.baseline} ({revision_name(args.baseline)})", "code": git_commit(),
                             "batch": args.batch, "channels": args.channels, "entities": args.entities,
                             "input": layout, "rounds": args.rounds, "threads": torch.get_num_threads(), "torch": torch.__version__,
                             "machine": cpu_model(), "started": started},
                  "sizes": {}}
        for size in sizes:
            report["sizes"][str(size)] = measure(modules, size, args.batch, args.channels, args.rounds,
                                                   args.channels_last, dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", report)
    md = format_md(report)
    write_text(out / "results.md", md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
