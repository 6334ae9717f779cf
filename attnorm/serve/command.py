"""Serve the web app and its HTTP API on this machine.

    attnorm serve                                   # http://127.0.0.1:7860/, the shipped inpainting weights
    attnorm serve --gan-ckpt runs/gan/checkpoints/latest.pt --port 8000
    attnorm serve --inpaint-ckpt my_inpainter.safetensors --device cuda

The inpainting page is at /, the generator page at /generate; the API is documented in
the README ("Web app"). The server binds to 127.0.0.1 (only this machine can connect)
unless --host says otherwise; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import signal
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 serves the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    parser.add_argument("--inpaint-ckpt", default=None,
                        help="inpainting generator: .safetensors export, save_generator .pt or train-inpaint "
                             "checkpoint (default: the shipped attnorm/weights/inpaint_skimage.safetensors)")
    parser.add_argument("--gan-ckpt", default=None,
                        help="class-conditional generator: train-gan checkpoint (RUN/checkpoints/latest.pt) or "
                             ".safetensors export (default: shipped attnorm/weights/gan_*.safetensors if any; "
                             "otherwise the generate page explains how to pass one)")
    parser.add_argument("--device", default="cpu", help="torch device for both models (default: cpu)")
    parser.add_argument("--max-upload-mb", type=float, default=64.0,
                        help="largest request body in MiB (default 64); larger uploads get 413")
    parser.add_argument("--max-pixels", type=int, default=4096 * 4096,
                        help="largest image or mask in pixels (default 4096*4096 = 16.8 MP; the shipped "
                             "inpainter needs about 0.55 GB of memory per megapixel); larger get 413")
    parser.add_argument("--max-queue", type=int, default=32,
                        help="inpainting requests admitted at once, running or waiting (default 32); "
                             "more get 503 with Retry-After")
    parser.add_argument("--quiet", action="store_true", help="do not log every request")


def main_from_args(args: argparse.Namespace) -> int:
    from .app import Limits, load_app
    from .server import make_server

    for name, value, lo in (("--max-upload-mb", args.max_upload_mb, 0), ("--max-pixels", args.max_pixels, 0),
                            ("--max-queue", args.max_queue, 0), ("--port", args.port, -1)):
        if not value > lo or (name == "--port" and value > 65535):
            print(f"error: {name} must be {'in 0..65535' if name == '--port' else 'positive'}, got {value}",
                  file=sys.stderr)
            return 2
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                    max_queue=args.max_queue)
    try:
        app = load_app(args.inpaint_ckpt, args.gan_ckpt, device=args.device, limits=limits)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        server = make_server(app, args.host, args.port, quiet=args.quiet)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
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
