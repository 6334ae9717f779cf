"""The ``serve`` command (the web app and its HTTP API, :mod:`attnorm.serve`) and ``serve-loadtest``."""

from __future__ import annotations

import argparse
import signal
import sys

from .common import CommandError, user_errors


def serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 serves the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--inpaint-ckpt", default=None,
                   help="inpainting generator: .safetensors export, save_inpaint_generator .pt or train-inpaint "
                        "checkpoint (default: the shipped attnorm/weights/inpaint_photos.safetensors)")
    p.add_argument("--gan-ckpt", default=None,
                   help="class-conditional generator: train-gan checkpoint (RUN/checkpoints/latest.pt) or "
                        "export-gan .safetensors (default: the shipped GAN weights if this install has them; "
                        "otherwise the generate page explains how to pass one)")
    p.add_argument("--device", default="cpu", help="torch device for both models (default: cpu)")
    p.add_argument("--max-upload-mb", type=float, default=64.0,
                   help="largest request body in MiB (default 64); larger uploads get 413")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096,
                   help="largest image or mask in pixels (default 4096*4096 = 16.8 MP; the shipped "
                        "inpainter needs about 0.55 GB of memory per megapixel); larger get 413")
    p.add_argument("--max-queue", type=int, default=32,
                   help="inpainting requests admitted at once, running or waiting (default 32); "
                        "more get 503 with Retry-After")
    p.add_argument("--quiet", action="store_true", help="do not log every request")


def serve(args: argparse.Namespace) -> int:
    """Serve the web app and its HTTP API on this machine.

        attnorm serve                                   # http://127.0.0.1:7860/, the shipped inpainting weights
        attnorm serve --gan-ckpt runs/gan/checkpoints/latest.pt --port 8000
        attnorm serve --inpaint-ckpt my_inpainter.safetensors --device cuda

    The inpainting page is at /, the generator page at /generate; the API is documented in
    the README ("Web app"). The server binds to 127.0.0.1 (only this machine can connect)
    unless --host says otherwise; Ctrl-C stops it.
    """
    from attnorm.serve.app import Limits, load_app
    from attnorm.serve.server import make_server

    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port must be in 0..65535, got {args.port}")
    for name, value in (("--max-upload-mb", args.max_upload_mb), ("--max-pixels", args.max_pixels),
                        ("--max-queue", args.max_queue)):
        if not value > 0:
            raise CommandError(f"{name} must be positive, got {value}")
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                    max_queue=args.max_queue)
    with user_errors(FileNotFoundError, ValueError, RuntimeError):
        app = load_app(args.inpaint_ckpt, args.gan_ckpt, device=args.device, limits=limits)
    try:
        server = make_server(app, args.host, args.port, quiet=args.quiet)
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    gan = app.gan_info()
    print(f"attnorm serve: {server.url}  (inpainting: {app.info['inpaint_checkpoint']}; GAN: "
          f"{gan['checkpoint'] if gan['available'] else 'none'}; device {args.device}) - Ctrl-C to stop",
          flush=True)
    if not server.loopback_only:
        print("warning: serving beyond this machine; anyone who can reach this address can use the models",
              file=sys.stderr, flush=True)

    def _stop(signum, frame):  # Ctrl-C and SIGTERM (also when started in the background, where the
        raise KeyboardInterrupt  # shell makes SIGINT ignored and Python would never see it)

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
    print("attnorm serve: stopped", flush=True)
    return 0


def serve_loadtest_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:7860/", help="the running server (loopback only)")
    p.add_argument("--n", type=int, default=20, help="requests (default 20)")
    p.add_argument("--concurrency", type=int, default=20, help="requests in flight at once (default 20)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the report here (atomically)")


def serve_loadtest(args: argparse.Namespace) -> int:
    """Load-test a running `attnorm serve` on this machine: concurrent inpainting requests.

        attnorm serve-loadtest                                  # 20 requests of 512 px, all at once
        attnorm serve-loadtest --url http://127.0.0.1:7860/ --n 40 --concurrency 20 --json load.json

    Every request gets its own synthetic image and box mask (seeded); every answer must be a PNG
    whose known pixels equal the input's bit for bit. Prints failures, latency p50 / p95 / max,
    throughput and the server's memory (from /api/health); exit code 1 if any request failed.
    """
    import json

    from attnorm.io import atomic_write
    from attnorm.serve.loadtest import format_report, run_load

    for name, value in (("--n", args.n), ("--concurrency", args.concurrency), ("--size", args.size)):
        if value < 1:
            raise CommandError(f"{name} must be at least 1, got {value}")
    try:
        rep = run_load(args.url, args.n, args.concurrency, args.size, args.seed)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    except OSError as exc:
        raise CommandError(f"cannot reach {args.url}: {exc.strerror or exc} (is `attnorm serve` running?)") from exc
    print(format_report(rep))
    if args.json:
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(rep, indent=2) + "\n"))
    return 0 if not rep["failures"] else 1
