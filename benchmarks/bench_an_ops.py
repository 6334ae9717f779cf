"""Where the AN layer's forward time goes on the CPU, op by op, at small channel counts (issue 13).

    OMP_NUM_THREADS=1 python benchmarks/bench_an_ops.py --shapes 16x16x32,32x32x16,8x128x32 \\
        --out benchmarks/results/an_ops_cpu_s24

The CPU preset (``configs/gan_cpu_small.json``) runs AN at c 16 (G, 32x32) and c 32 (D, 16x16), where
the train step with AN costs 1.23x the step without attention against 1.07x in matrix-product FLOPs
(session 22). This times each op of the forward on its own (the same calls as
``attnorm.layers.attentive._AttentiveNormFn``, SSR left out; the output the ops compose is checked
against the layer's) and the whole layer's eval forward: medians of ``--repeats`` calls after a
warm-up, freed memory retained as training does. Repeating one op keeps its operands in cache, so
the single times are lower bounds (most for the elementwise ops); the whole layer's time is the
check on their sum. It also times the value/layout projection ``[E; W_v] X`` in other forms a CPU
library might run faster (a grouped 1x1 convolution through oneDNN, the channels-last product
``X^T W^T``, per-sample ``mm``), with each form's multiply-add rate. Writes ``OUT/results.json``
and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import cpu_model, git_commit  # noqa: E402

from attnorm.bench import time_variant  # noqa: E402
from attnorm.io import write_json, write_text  # noqa: E402
from attnorm.layers import AttentiveNorm  # noqa: E402
from attnorm.layers.regional import statistics_forward  # noqa: E402
from attnorm.training.allocator import retain_freed_memory  # noqa: E402


def median_us(fn, repeats: int) -> float:
    return statistics.median(time_variant(fn, "cpu", 5, repeats)) * 1e6


def forward_ops(b: int, c: int, side: int, n: int, repeats: int) -> tuple[dict[str, float], float]:
    """Microseconds of each op of AN's forward (algorithm1 variance, no SSR: eval mode) on (b, c, side^2)
    maps, and the largest difference between the output these ops compose and the layer's own output
    (the check that the ops timed are the layer's)."""
    hw = side * side
    torch.manual_seed(0)
    layer = AttentiveNorm(c, n, self_sampling=False).eval()
    with torch.no_grad():
        layer.sigma.fill_(0.5)
        layer.rn_weight.uniform_(0.5, 1.5)
        layer.rn_bias.uniform_(-0.5, 0.5)
    x = torch.randn(b, c, side, side)
    x3 = x.flatten(2)
    with torch.no_grad():
        expected = layer(x).flatten(2)
        value_of_mean = x3.mean(-1) @ layer.value.t()
        weight = torch.cat([layer.entities / layer.temperature, layer.value]).expand(b, n + c, c)
        bias = torch.cat([torch.zeros(b, n), -value_of_mean], dim=1).unsqueeze(-1)
        out = torch.bmm(weight, x3).add_(bias)
        logits, vc = out[:, :n], out[:, n:]
        ss = torch.empty(b, 2 * n, hw)
        s, s2 = ss[:, :n], ss[:, n:]
        s.copy_(torch.softmax(logits, dim=1))
        torch.mul(s, s, out=s2)
        vv = vc * vc
        m, a, ssum = torch.bmm(vc, ss.transpose(1, 2)), torch.bmm(vv, s2.transpose(1, 2)), ss.sum(-1).unsqueeze(1)
        shift = (value_of_mean + layer.value_bias).unsqueeze(-1)
        p, q, _ = statistics_forward(m[..., :n], m[..., n:], a, shift, ssum[..., :n], ssum[..., n:], layer.rn_weight,
                                     layer.rn_bias, layer.sigma, layer.eps, hw)
        t = torch.bmm(p, s)
        y = torch.addcmul(x3, vc, t).baddbmm_(q, s, alpha=-1.0)
        parity = (y - expected).abs().max().item()
        ops = {
            "projection [E/tau; W_v] X + bias (bmm, add_)": lambda: torch.bmm(weight, x3).add_(bias),
            "softmax over entities": lambda: torch.softmax(logits, dim=1),
            "  of which exp": lambda: torch.exp(logits),
            "S into [S; S^2] (copy_)": lambda: s.copy_(logits),
            "S^2 (mul, out=)": lambda: torch.mul(s, s, out=s2),
            "Vc^2 (mul)": lambda: vc * vc,
            "pixel sums Vc [S; S^2]^T (bmm)": lambda: torch.bmm(vc, ss.transpose(1, 2)),
            "pixel sums Vc^2 (S^2)^T (bmm)": lambda: torch.bmm(vv, s2.transpose(1, 2)),
            "sum_p [S; S^2]": lambda: ss.sum(-1),
            "statistics (b, c, n)": lambda: statistics_forward(m[..., :n], m[..., n:], a, shift, ssum[..., :n],
                                                               ssum[..., n:], layer.rn_weight, layer.rn_bias,
                                                               layer.sigma, layer.eps, hw),
            "P S (bmm)": lambda: torch.bmm(p, s),
            "X + Vc (P S) (addcmul)": lambda: torch.addcmul(x3, vc, t),
            "- Q S (baddbmm_)": lambda: y.baddbmm_(q, s, alpha=-1.0),
        }
        times = {name: median_us(fn, repeats) for name, fn in ops.items()}
        times["the whole layer (eval forward)"] = median_us(lambda: layer(x), repeats)
    return times, parity


def projection_forms(b: int, c: int, side: int, n: int, repeats: int) -> dict[str, dict]:
    """The projection (b, n + c, c) x (b, c, hw) in several forms: time and multiply-add rate; each
    form is checked against ``torch.bmm`` first."""
    hw, m = side * side, n + c
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, c, hw, generator=g)
    w = torch.randn(b, m, c, generator=g)
    x4, w4 = x.view(1, b * c, side, side), w.reshape(b * m, c, 1, 1)
    xt = x.transpose(1, 2).contiguous()
    ref = torch.bmm(w, x)
    forms = {
        "bmm W X (the layer's)": (lambda: torch.bmm(w, x), lambda r: r),
        "grouped 1x1 conv (oneDNN)": (lambda: F.conv2d(x4, w4, groups=b), lambda r: r.view(b, m, hw)),
        "channels-last X^T W^T (bmm)": (lambda: torch.bmm(xt, w.transpose(1, 2)), lambda r: r.transpose(1, 2)),
        "per-sample mm": (lambda: torch.stack([w[i] @ x[i] for i in range(b)]), lambda r: r),
    }
    macs = b * m * c * hw
    result = {}
    for name, (fn, back) in forms.items():
        err = (back(fn()) - ref).abs().max().item()
        if err > 1e-3 * ref.abs().max().item():
            raise SystemExit(f"bench_an_ops: form {name!r} disagrees with bmm by {err}")
        us = median_us(fn, repeats)
        result[name] = {"us": us, "gmac_per_s": macs / us / 1e3}
    return result


def to_markdown(report: dict) -> str:
    lines = [f"# AN's forward op by op on the CPU ({report['threads']} thread(s))", "",
             f"{report['cpu']}, torch {report['torch']}, code {report['commit']}; median of {report['repeats']} calls, us", ""]
    for case in report["cases"]:
        b, c, side, n = case["b"], case["c"], case["side"], case["n"]
        parts = {k: v for k, v in case["ops"].items() if not k.startswith("the whole")}
        total = sum(v for k, v in parts.items() if not k.startswith("  "))
        whole = case["ops"]["the whole layer (eval forward)"]
        lines += [f"## b {b}, c {c}, {side}x{side}, n {n}: the ops sum to {total:.0f} us, the whole layer's eval "
                  f"forward takes {whole:.0f} (composed output vs the layer's: {case['parity_max_abs']:.1e})", "",
                  "| op | us | share of the ops |", "| --- | --- | --- |"]
        lines += [f"| {k.strip()} | {v:.0f} | {v / total:.0%} |" for k, v in parts.items()]
        lines += ["", "| projection form | us | GMAC/s |", "| --- | --- | --- |"]
        lines += [f"| {k} | {v['us']:.0f} | {v['gmac_per_s']:.0f} |" for k, v in case["projection"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="16x16x32,32x32x16,8x128x32", help="BATCHxCHANNELSxSIDE cases, comma-separated")
    ap.add_argument("--entities", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="folder for results.json and results.md")
    args = ap.parse_args(argv)
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        if any(len(s) != 3 or min(s) < 1 for s in shapes):
            raise ValueError
    except ValueError:
        ap.error(f"--shapes {args.shapes!r}: give BATCHxCHANNELSxSIDE cases, e.g. 16x16x32,32x32x16")
    torch.set_num_threads(args.threads)
    retain_freed_memory()
    cases = []
    for b, c, side in shapes:
        ops, parity = forward_ops(b, c, side, args.entities, args.repeats)
        case = {"b": b, "c": c, "side": side, "n": args.entities, "ops": ops, "parity_max_abs": parity,
                "projection": projection_forms(b, c, side, args.entities, args.repeats)}
        cases.append(case)
    report = {"cpu": cpu_model(), "machine": platform.machine(), "torch": torch.__version__, "commit": git_commit(),
              "threads": args.threads, "repeats": args.repeats, "cases": cases}
    out = Path(args.out)
    write_json(out / "results.json", report)
    text = to_markdown(report)
    write_text(out / "results.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
