"""Inpainting benchmark: AN vs self-attention generator cost, and quality per mask-area bin.

    python benchmarks/bench_inpaint.py                            # everything, defaults below
    python benchmarks/bench_inpaint.py --sizes 256 512 --n-masks 8 # quicker
    python benchmarks/bench_inpaint.py --ckpt runs/g.pt            # also score a trained generator
    python benchmarks/bench_inpaint.py --skip-speed                # quality only

(a) Speed and memory. ``InpaintGenerator(attention="an")`` and the same network with
    ``attention="sa"`` (SAGAN self-attention in the attentive branch) at 256, 512,
    1024 and 2048 pixels a side: batch 1, eval mode, ``torch.no_grad()``, a centred
    half-size hole, random input. Each case runs in a fresh subprocess (environment
    ``MALLOC_MMAP_THRESHOLD_=65536``, so freed large blocks go back to the OS) that
    builds the model, runs one warm-up forward at the same size, writes "5" to
    ``/proc/self/clear_refs`` (resets the peak resident set), reads ``VmRSS``, runs the
    timed forwards and reports ``VmHWM - VmRSS`` (the forward's own peak memory) and
    the process's whole ``VmHWM``. Time is the median of the timed forwards (3 at
    <= 512 px, 1 above unless ``--repeats``); time per megapixel makes linear
    (constant s/MP) vs quadratic (growing s/MP) growth visible. An SA case is skipped
    when its attention logits + softmax, ``2 x 4 B x hw x hw/4`` at the branch's
    1/4 resolution, exceed ``--max-mem-gb`` (default 60% of MemAvailable).
(b) Quality. PSNR / SSIM / L1 per hole-area bin (:func:`attnorm.evaluation.inpaint.evaluate_inpaint`,
    8-bit composites, data_range 1, PSNR capped at 100 dB) on the held-out skimage
    photos (centre crop 256) with a fixed mask set written to a temporary folder by
    ``write_eval_masks`` (``--mask-kind``, ``--n-masks``, ``--mask-seed``; pairs are
    image ``k % 4`` with mask ``k``) for: ``--ckpt`` if given (otherwise the shipped
    ``attnorm/weights/inpaint_photos.safetensors``, or skipped with a note if absent),
    biharmonic, and OpenCV Telea if ``cv2`` imports.

Prints tables and writes everything to ``bench_results/inpaint.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from attnorm.bench import default_memory_budget_gb, status_bytes
from attnorm.provenance import git_commit

GiB = 2**30
AN_2048_LIMIT_BYTES = 8 * 10**9  # "under 8 GB" (decimal; 7.45 GiB)


# ---------------------------------------------------------------------------- (a) speed / memory
def sa_attention_bytes(size: int) -> int:
    """Bytes of the SA attention matrix (b=1, float32): hw x ceil(h/2)ceil(w/2) at the 1/4-resolution branch."""
    h = -(-size // 4)  # the generator pads to a multiple of 4, then two stride-2 convs
    hp = -(-h // 2)
    return 4 * (h * h) * (hp * hp)


def _inputs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    m = torch.zeros(1, 1, size, size)
    m[..., size // 4: size // 4 + size // 2, size // 4: size // 4 + size // 2] = 1
    return x, m


def _child(spec: dict) -> None:
    """Subprocess entry: one (attention, size) case; prints a JSON line."""
    from attnorm.models.inpaint import InpaintGenerator

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    g = InpaintGenerator(width=spec["width"], attention=spec["attention"]).eval()
    x, m = _inputs(spec["size"])
    out: dict = {}
    with torch.no_grad():
        t0 = time.perf_counter()
        g(x, m)  # warm-up at the same size: one-time buffers and library pages are not the forward's memory
        out["warmup_s"] = time.perf_counter() - t0
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        before = status_bytes("VmRSS")
        times = []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            g(x, m)
            times.append(time.perf_counter() - t0)
        out["peak_bytes"] = max(status_bytes("VmHWM") - before, 0)
        out["process_peak_bytes"] = status_bytes("VmHWM")
        out["rss_before_bytes"] = before
    out["times_s"] = times
    print(json.dumps(out))


def run_case(attention: str, size: int, width: float, repeats: int, threads: int, timeout: float) -> dict:
    spec = {"attention": attention, "size": size, "width": width, "repeats": repeats, "threads": threads}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    try:
        res = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                             capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1][:160]
        return {"status": "failed", "reason": f"exit code {res.returncode}: {tail}"}
    data = json.loads(res.stdout.strip().splitlines()[-1])
    med = statistics.median(data["times_s"])
    return {"status": "ok", "median_s": med, "s_per_mp": med / (size * size / 1e6), **data}


def speed(sizes, width, repeats, threads, max_mem_gb, timeout, log=print) -> list[dict]:
    rows = []
    for size in sizes:
        for attention in ("an", "sa"):
            row = {"attention": attention, "size": size, "width": width}
            if attention == "sa":
                att = sa_attention_bytes(size)
                row["sa_attention_gib"] = att / GiB
                if 2 * att > max_mem_gb * GiB:
                    row.update(status="skipped", reason=f"attention logits+softmax {2 * att / GiB:.1f} GiB "
                                                        f"> budget {max_mem_gb:.1f} GiB")
                    log(f"  {attention} {size:>5}: skipped ({row['reason']})")
                    rows.append(row)
                    continue
            reps = repeats if repeats else (3 if size <= 512 else 1)
            row["repeats"] = reps
            row.update(run_case(attention, size, width, reps, threads, timeout))
            if row["status"] == "ok":
                log(f"  {attention} {size:>5}: {row['median_s']:8.2f} s  {row['s_per_mp']:7.2f} s/MP  "
                    f"peak {row['peak_bytes'] / GiB:6.2f} GiB (process {row['process_peak_bytes'] / GiB:.2f} GiB)",
                    flush=True)
            else:
                log(f"  {attention} {size:>5}: {row['status']} ({row['reason']})", flush=True)
            rows.append(row)
    return rows


def format_speed(rows: list[dict]) -> str:
    base = {r["attention"]: r["s_per_mp"] for r in rows if r.get("status") == "ok" and r["size"] == min(
        x["size"] for x in rows)}
    lines = [f"{'attn':>4} {'size':>5} {'time s':>8} {'s/MP':>7} {'s/MP vs smallest':>17} "
             f"{'peak GiB':>9} {'proc GiB':>9}  note"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"{r['attention']:>4} {r['size']:>5} {'-':>8} {'-':>7} {'-':>17} {'-':>9} {'-':>9}  "
                         f"{r['status']}: {r['reason']}")
            continue
        rel = r["s_per_mp"] / base[r["attention"]] if r["attention"] in base else float("nan")
        lines.append(f"{r['attention']:>4} {r['size']:>5} {r['median_s']:8.2f} {r['s_per_mp']:7.2f} {rel:17.2f} "
                     f"{r['peak_bytes'] / GiB:9.2f} {r['process_peak_bytes'] / GiB:9.2f}  "
                     f"x{r['repeats']} (+1 warm-up)")
    return "\n".join(lines)


def an_2048_verdict(rows: list[dict]) -> dict:
    r = next((r for r in rows if r["attention"] == "an" and r["size"] == 2048 and r.get("status") == "ok"), None)
    if r is None:
        return {"measured": False}
    return {"measured": True, "forward_peak_gib": r["peak_bytes"] / GiB,
            "process_peak_gib": r["process_peak_bytes"] / GiB,
            "forward_under_8gb": r["peak_bytes"] < AN_2048_LIMIT_BYTES,
            "process_under_8gb": r["process_peak_bytes"] < AN_2048_LIMIT_BYTES}


# ---------------------------------------------------------------------------- (b) quality
def quality(ckpt, n_masks, mask_kind, mask_seed, size, log=print) -> tuple[dict, list[str]]:
    from attnorm.data.masks import write_eval_masks
    from attnorm.checkpoints import DEFAULT_INPAINT_WEIGHTS as DEFAULT_WEIGHTS, load_inpaint_generator
    from attnorm.evaluation.inpaint import (
        biharmonic_method, evaluate_inpaint, generator_method, load_eval_images, telea_method,
    )

    notes = []
    methods = {}
    if not ckpt and DEFAULT_WEIGHTS.is_file():
        ckpt = DEFAULT_WEIGHTS  # the shipped checkpoint by default
        notes.append(f"no --ckpt given: scored the shipped weights {DEFAULT_WEIGHTS.name}")
    if ckpt:
        methods[f"generator ({Path(ckpt).name})"] = generator_method(load_inpaint_generator(ckpt))
    else:
        notes.append("no --ckpt given and no shipped weights: generator quality skipped")
    methods["biharmonic"] = biharmonic_method()
    try:
        methods["telea"] = telea_method()
    except ImportError:
        notes.append("OpenCV (cv2) not importable: Telea skipped")
    images, names, desc = load_eval_images(None, size)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_eval_masks(Path(tmp) / "masks", n_masks, size, mask_kind, mask_seed)
        for name, method in methods.items():
            t0 = time.perf_counter()
            res = evaluate_inpaint(method, images, Path(tmp) / "masks", image_names=names, method_name=name,
                                   sheet=False, protocol={"data": desc})
            s = res["summary"]
            s["protocol"]["mask_set"]["source"] = f"write_eval_masks(tmp, n={n_masks}, size={size}, " \
                                                  f"kind={mask_kind!r}, seed={mask_seed})"
            results[name] = s
            log(f"  {name}: {s['num_pairs']} pairs in {time.perf_counter() - t0:.1f} s", flush=True)
    return results, notes


def format_quality(results: dict) -> str:
    lines = [f"{'method':>22} {'hole area':>9} {'n':>4} {'PSNR':>7} {'SSIM':>7} {'L1 %':>6} {'L1 hole %':>9}"]
    for name, s in results.items():
        for label, agg in [*s["per_bin"].items(), ("all", s["total"])]:
            if not agg["count"]:
                continue
            lines.append(f"{name:>22} {label:>9} {agg['count']:>4} {agg['psnr']:7.2f} {agg['ssim']:7.4f} "
                         f"{100 * agg['l1']:6.2f} {100 * agg['l1_hole']:9.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--width", type=float, default=1.0, help="generator width multiplier (1.0 = paper)")
    p.add_argument("--repeats", type=int, default=0, help="timed forwards per case (0: 3 at <=512 px, 1 above)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--max-mem-gb", type=float, default=None, help="SA budget in GiB (default 60%% of MemAvailable)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess case")
    p.add_argument("--ckpt", default=None, help="trained inpainting generator checkpoint for (b) "
                                                "(default: the shipped attnorm/weights/inpaint_photos.safetensors)")
    p.add_argument("--n-masks", type=int, default=40)
    p.add_argument("--mask-kind", default="mixed")
    p.add_argument("--mask-seed", type=int, default=0)
    p.add_argument("--quality-size", type=int, default=256)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--json", default="bench_results/inpaint.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return {}
    budget = args.max_mem_gb if args.max_mem_gb is not None else default_memory_budget_gb()
    report: dict = {"config": {"sizes": args.sizes, "width": args.width, "threads": args.threads,
                               "max_mem_gb": budget, "torch": torch.__version__, "code": git_commit(),
                               "python": platform.python_version(),
                               "machine": platform.machine(), "cpus": os.cpu_count(),
                               "loadavg_start": os.getloadavg()},
                    "notes": []}
    if not args.skip_speed:
        if not os.path.exists("/proc/self/clear_refs"):
            raise SystemExit("the memory measurement needs Linux /proc/self/clear_refs")
        print(f"(a) speed / memory, batch 1, eval, no_grad, {args.threads} threads, SA budget {budget:.1f} GiB")
        rows = speed(args.sizes, args.width, args.repeats, args.threads, budget, args.timeout)
        report["speed"] = rows
        report["an_2048"] = an_2048_verdict(rows)
        print(format_speed(rows))
        v = report["an_2048"]
        if v["measured"]:
            print(f"AN at 2048x2048: forward peak {v['forward_peak_gib']:.2f} GiB, process peak "
                  f"{v['process_peak_gib']:.2f} GiB -> {'under' if v['process_under_8gb'] else 'NOT under'} 8 GB "
                  f"(8e9 bytes) for the whole process")
    if not args.skip_quality:
        print(f"(b) quality: held-out skimage photos at {args.quality_size}, {args.n_masks} {args.mask_kind} masks "
              f"(seed {args.mask_seed})")
        results, notes = quality(args.ckpt, args.n_masks, args.mask_kind, args.mask_seed, args.quality_size)
        report["quality"] = results
        report["notes"] += notes
        print(format_quality(results))
    for n in report["notes"]:
        print("note:", n)
    report["config"]["loadavg_end"] = os.getloadavg()
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    from attnorm.io import json_safe
    out.write_text(json.dumps(json_safe(report), indent=1))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
