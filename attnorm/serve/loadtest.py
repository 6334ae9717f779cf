"""Load test of a running ``attnorm serve`` (loopback only): concurrent inpainting requests.

    attnorm serve-loadtest                          # 20 requests of 512 px, all at once
    attnorm serve-loadtest --url http://127.0.0.1:7860/ --n 40 --concurrency 20 --size 512 --json out.json

Every request gets its own synthetic image and box mask (seeded); every response must be a
PNG whose known pixels equal the input's bit for bit. Reports failures, latency percentiles
(p50 / p95 / max, seconds from sending to the last byte), throughput and the server's
memory (resident set before and after, and its peak, from ``/api/health``).
"""

from __future__ import annotations

import http.client
import io
import json
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from .server import _is_loopback


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def make_case(i: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image ``i``: a gradient with noise (distinct per request) and a box mask covering 5-25% of it."""
    rng = np.random.default_rng([seed, i])
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x, y, (x + y) // 2], -1) * 255 // max(size - 1, 1)
    img = np.clip(base + rng.integers(-30, 31, (size, size, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    bh, bw = (rng.uniform(0.22, 0.5, 2) * size).astype(int)
    y0, x0 = rng.integers(0, size - bh), rng.integers(0, size - bw)
    mask[y0:y0 + bh, x0:x0 + bw] = 255
    return img, mask


def _multipart(image: bytes, mask: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    parts = []
    for name, data in (("image", image), ("mask", mask)):
        parts.append(f'--{b}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def _health(host: str, port: int) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/api/health")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def run_load(url: str = "http://127.0.0.1:7860/", n: int = 20, concurrency: int = 20, size: int = 512,
             seed: int = 0, timeout: float = 600.0) -> dict:
    """Send ``n`` inpainting requests, ``concurrency`` at a time, and check every answer; returns the report."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    if not _is_loopback(host):
        raise ValueError(f"the load test only targets this machine (loopback), not {host!r}")
    cases = [make_case(i, size, seed) for i in range(n)]
    bodies = [_multipart(_png(img), _png(mask)) for img, mask in cases]
    before = _health(host, port)
    start = threading.Event()

    def one(i: int) -> dict:
        body, ctype = bodies[i]
        start.wait()
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("POST", "/api/inpaint", body, {"Content-Type": ctype})
            r = conn.getresponse()
            data = r.read()
            dt = time.perf_counter() - t0
            if r.status != 200:
                return {"ok": False, "latency": dt, "error": f"HTTP {r.status}: {data[:200]!r}"}
            img, mask = cases[i]
            with Image.open(io.BytesIO(data)) as im:
                out = np.asarray(im)
            known = mask < 128
            if out.shape != img.shape or not np.array_equal(out[known], img[known]):
                return {"ok": False, "latency": dt, "error": "known pixels differ from the input"}
            return {"ok": True, "latency": dt, "queue": float(r.getheader("X-Queue-Seconds", "nan")),
                    "inference": float(r.getheader("X-Inference-Seconds", "nan"))}
        except Exception as exc:  # a refused or dropped connection is a failure to report, not a crash
            return {"ok": False, "latency": time.perf_counter() - t0, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            conn.close()

    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        t_start = time.perf_counter()
        start.set()
        results = [f.result() for f in futures]
        wall = time.perf_counter() - t_start
    after = _health(host, port)
    lat = np.array([r["latency"] for r in results if r["ok"]])
    inf = np.array([r["inference"] for r in results if r["ok"]])
    pct = (lambda a, q: round(float(np.percentile(a, q)), 3) if len(a) else None)
    mem_b, mem_a = before.get("memory", {}), after.get("memory", {})
    return {
        "requests": n, "concurrency": concurrency, "size": size, "ok": int(sum(r["ok"] for r in results)),
        "failures": [r["error"] for r in results if not r["ok"]],
        "latency_s": {"p50": pct(lat, 50), "p95": pct(lat, 95),
                      "max": round(float(lat.max()), 3) if len(lat) else None},
        "inference_s": {"p50": pct(inf, 50), "max": round(float(inf.max()), 3) if len(inf) else None},
        "wall_s": round(wall, 3), "throughput_per_s": round(n / wall, 3),
        "server": {"device": after.get("device"), "inpaint": after.get("inpaint", {}).get("checkpoint"),
                   "rss_before_mb": mem_b.get("rss_mb"), "rss_after_mb": mem_a.get("rss_mb"),
                   "peak_rss_before_mb": mem_b.get("peak_rss_mb"), "peak_rss_after_mb": mem_a.get("peak_rss_mb")},
    }


def format_report(rep: dict) -> str:
    s, lat = rep["server"], rep["latency_s"]
    lines = [f"{rep['ok']}/{rep['requests']} ok ({rep['concurrency']} concurrent, {rep['size']} px, "
             f"{s['inpaint']} on {s['device']})",
             f"latency p50 {lat['p50']} s, p95 {lat['p95']} s, max {lat['max']} s; model time per request "
             f"p50 {rep['inference_s']['p50']} s; {rep['throughput_per_s']} requests/s over {rep['wall_s']} s",
             f"server memory: resident {s['rss_before_mb']} -> {s['rss_after_mb']} MB, "
             f"peak {s['peak_rss_before_mb']} -> {s['peak_rss_after_mb']} MB"]
    lines += [f"failure: {f}" for f in rep["failures"][:10]]
    return "\n".join(lines)


if __name__ == "__main__":  # `python -m attnorm.serve.loadtest ARGS` is `attnorm serve-loadtest ARGS`
    from attnorm.cli import main
    raise SystemExit(main(["serve-loadtest", *sys.argv[1:]]))
