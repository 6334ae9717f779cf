"""What ``attnorm serve`` does, independent of HTTP: decode uploads, run the models, encode results.

:class:`ServeApp` owns the two models (an inpainting generator and, optionally, a
class-conditional GAN), one lock per model and the limits. Every method either returns
a result or raises :class:`ApiError` (an HTTP status and a one-line message), so the
HTTP layer (:mod:`attnorm.serve.server`) only maps requests to calls.

Concurrency: requests are handled on their own threads; decoding, validation and PNG
encoding run in parallel, the model itself runs one request at a time, in arrival order
(:class:`FifoLock`). At most ``Limits.max_queue`` inpainting requests are admitted at
once (:meth:`ServeApp.admission`, taken by the HTTP layer before it reads an upload; the
rest get 503 with ``Retry-After``), which bounds the memory held by waiting uploads.
Uploads stay in memory; nothing is written to disk.
"""

from __future__ import annotations

import base64
import io
import re
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image, ImageOps

from . import models

__all__ = ["ApiError", "FifoLock", "InpaintResult", "JobBoard", "Limits", "ServeApp", "png_bytes"]


class ApiError(Exception):
    """A request that cannot be served: HTTP ``status`` and a one-line ``message`` for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


@dataclass
class Limits:
    """Request limits (all configurable from the command line)."""

    max_upload_bytes: int = 64 * 2**20       # whole request body
    max_pixels: int = 4096 * 4096            # per uploaded image or mask
    max_queue: int = 32                      # inpainting requests admitted at once (running + waiting)
    max_gan_images: int = 256                # images per GAN request

    def as_dict(self) -> dict[str, int]:
        return {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                "max_queue": self.max_queue, "max_gan_images": self.max_gan_images}


def process_memory() -> dict[str, float | None]:
    """This process's resident memory now and at its peak, in MB (None where the platform does not say)."""
    rss = peak = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    if peak is None:
        try:
            import resource
            r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux
        except (ImportError, OSError):
            pass
    return {"rss_mb": None if rss is None else round(rss, 1), "peak_rss_mb": None if peak is None else round(peak, 1)}


# ---------------------------------------------------------------------------- scheduling
class FifoLock:
    """A lock granted in arrival order (tickets), which can say how many holders are ahead."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._serving = 0

    def take_ticket(self) -> int:
        with self._cond:
            t = self._next
            self._next += 1
            return t

    def ahead(self, ticket: int) -> int:
        with self._cond:
            return max(0, ticket - self._serving)

    @contextmanager
    def turn(self, ticket: int) -> Iterator[None]:
        """Wait until ``ticket`` is served, hold the lock, then pass it on (even on error)."""
        with self._cond:
            self._cond.wait_for(lambda: self._serving == ticket)
        try:
            yield
        finally:
            with self._cond:
                self._serving += 1
                self._cond.notify_all()


_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class Job:
    """Progress of one inpainting request, polled by the page (``GET /api/progress``)."""

    id: str
    state: str = "reading"  # reading (decoding the upload) | queued | running | encoding | done | failed
    ticket: int = -1
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    calls: int = 0          # leaf-module forward calls so far (progress of the forward pass)
    expected_calls: int = 1


class JobBoard:
    """Jobs by client-chosen id; finished jobs are forgotten after ``keep_s`` seconds."""

    def __init__(self, keep_s: float = 120.0, max_jobs: int = 1000) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.keep_s, self.max_jobs = keep_s, max_jobs

    def create(self, job_id: str | None) -> Job:
        if job_id is not None and not _JOB_ID.match(job_id):
            raise ApiError(400, "X-Job-Id must be 1-64 characters of A-Z a-z 0-9 _ -")
        job = Job(job_id or "")
        if job_id:
            with self._lock:
                self._prune()
                self._jobs[job_id] = job
        return job

    def _prune(self) -> None:
        now = time.monotonic()
        for k in [k for k, j in self._jobs.items() if j.finished is not None and now - j.finished > self.keep_s]:
            del self._jobs[k]
        while len(self._jobs) >= self.max_jobs:  # oldest first (dicts keep insertion order)
            del self._jobs[next(iter(self._jobs))]

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)


# ---------------------------------------------------------------------------- images
def png_bytes(arr: np.ndarray, compress_level: int = 3) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def open_image(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """Decode an upload (EXIF orientation applied, as browsers show it), or raise 400 / 413."""
    if not data:
        raise ApiError(400, f"{what}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
    except Image.DecompressionBombError:
        raise ApiError(413, f"{what}: image too large; this server accepts at most {max_pixels} pixels "
                            f"({max_pixels / 1e6:.1f} MP, --max-pixels)") from None
    except Exception:  # Pillow raises many types on garbage: all mean "not an image"
        raise ApiError(400, f"{what}: not an image file (Pillow cannot identify it)") from None
    if w * h > max_pixels:
        raise ApiError(413, f"{what} is {w}x{h} = {w * h / 1e6:.1f} MP; this server accepts at most "
                            f"{max_pixels} pixels ({max_pixels / 1e6:.1f} MP, --max-pixels)")
    if w < 1 or h < 1:
        raise ApiError(400, f"{what}: image has no pixels ({w}x{h})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
            im = ImageOps.exif_transpose(im)
    except MemoryError:
        raise
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ApiError(400, f"{what}: corrupt or truncated {im.format or 'image'} data ({msg})") from None
    return im


def _to_8bit(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.int64)
        scale = 257.0 if im.mode.startswith("I;16") or a.max() > 255 else 1.0
        return Image.fromarray(np.clip(np.round(a / scale), 0, 255).astype(np.uint8), mode="L")
    if im.mode == "F":
        return Image.fromarray(np.clip(np.round(np.asarray(im)), 0, 255).astype(np.uint8), mode="L")
    return im


def split_pixels(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """-> (RGB (H, W, 3) uint8 for the model, grey (H, W) uint8 when the input is greyscale,
    alpha (H, W) uint8 when it has transparency); 16-bit inputs are reduced to 8 bits."""
    im = _to_8bit(im)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    grey = im.mode in ("1", "L", "LA", "La")
    alpha = np.asarray(im.convert("RGBA"))[..., 3].copy() if has_alpha else None
    g = np.asarray(im.convert("L")).copy() if grey else None
    return np.asarray(im.convert("RGB")).copy(), g, alpha


def compose(rgb: np.ndarray, grey: np.ndarray | None, alpha: np.ndarray | None, pred: np.ndarray,
            hole: np.ndarray) -> np.ndarray:
    """The output pixels: the prediction in the hole, the input's own values elsewhere (bit for bit),
    in the input's colour type (grey stays grey; an alpha channel is copied unchanged)."""
    if grey is not None:
        pred_g = np.asarray(Image.fromarray(pred).convert("L"))
        out = np.where(hole, pred_g, grey)
    else:
        out = np.where(hole[..., None], pred, rgb)
    if alpha is not None:
        out = np.dstack([out, alpha])
    return np.ascontiguousarray(out)


@dataclass
class InpaintResult:
    png: bytes
    width: int
    height: int
    hole_pixels: int
    layout_png: bytes | None
    entities_png: bytes | None
    queue_s: float
    inference_s: float

    def as_json(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "hole_pixels": self.hole_pixels,
                "image": data_url(self.png),
                "layout": data_url(self.layout_png) if self.layout_png else None,
                "entities": data_url(self.entities_png) if self.entities_png else None,
                "queue_seconds": round(self.queue_s, 4), "inference_seconds": round(self.inference_s, 4)}


# ---------------------------------------------------------------------------- the app
def _int(params: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = params.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, str)) or (isinstance(v, str) and not re.fullmatch(r"-?\d+", v)):
        raise ApiError(400, f"{key} must be an integer, got {v!r}")
    v = int(v)
    if not lo <= v <= hi:
        raise ApiError(400, f"{key} must be in {lo}..{hi}, got {v}")
    return v


def _truncation(params: dict) -> float | None:
    v = params.get("truncation")
    if v is None or v == "" or v == "none":
        return None
    try:
        t = float(v)
    except (TypeError, ValueError):
        raise ApiError(400, f"truncation must be a number or null, got {v!r}") from None
    if not 0 <= t <= 10:
        raise ApiError(400, f"truncation must be in 0..10 (0 or null: none), got {t}")
    return t if t > 0 else None


class ServeApp:
    """The models and operations behind ``attnorm serve``.

    Args:
        inpainter: an inpainting generator (``InpaintGenerator``), or None to serve without one.
        gan: a class-conditional ``Generator`` or None; ``class_names`` its class names.
        gan_missing_reason: shown by the generate page when ``gan`` is None.
        limits: request limits; ``info``: extra fields for ``/api/health`` (checkpoint names).
    """

    def __init__(self, inpainter: torch.nn.Module | None, gan: torch.nn.Module | None = None,
                 class_names: list[str] | None = None, gan_missing_reason: str | None = None,
                 limits: Limits | None = None, info: dict[str, Any] | None = None) -> None:
        self.inpainter, self.gan = inpainter, gan
        self.limits = limits or Limits()
        self.info = dict(info or {})
        self.jobs = JobBoard()
        self._fifo = FifoLock()
        self._gan_lock = threading.Lock()
        self._admitted = threading.BoundedSemaphore(self.limits.max_queue)
        self._active: Job | None = None
        self._calls_per_run = 0
        self.started = time.time()
        if inpainter is not None:
            inpainter.eval()
            leaves = [m for m in inpainter.modules() if not list(m.children())]
            self._calls_per_run = len(leaves)
            for m in leaves:
                m.register_forward_hook(self._count_call)
        if gan is not None:
            gan.eval()
            n = gan.num_classes
            names = list(class_names) if class_names else []
            self.class_names = names if len(names) == n else [str(i) for i in range(n)]
        else:
            self.class_names = []
        self.gan_missing_reason = gan_missing_reason or "no GAN checkpoint loaded"

    # ------------------------------------------------------------------ info
    def _count_call(self, module, inputs, output) -> None:
        job = self._active
        if job is not None:
            job.calls += 1

    def inpaint_info(self) -> dict[str, Any]:
        if self.inpainter is None:
            return {"available": False}
        cfg = dict(getattr(self.inpainter, "config", {}))
        return {"available": True, "checkpoint": self.info.get("inpaint_checkpoint"), "config": cfg,
                "layouts": cfg.get("attention") == "an"}

    def gan_info(self) -> dict[str, Any]:
        if self.gan is None:
            return {"available": False, "reason": self.gan_missing_reason}
        cfg = self.gan.config
        return {"available": True, "checkpoint": self.info.get("gan_checkpoint"), "resolution": cfg["resolution"],
                "num_classes": cfg["num_classes"], "classes": self.class_names, "z_dim": cfg["z_dim"],
                "attention": cfg["attention"], "layouts": cfg["attention"] == "an",
                "max_images": self.limits.max_gan_images}

    def health(self) -> dict[str, Any]:
        from attnorm import __version__
        return {"status": "ok", "version": __version__, "device": self.info.get("device", "cpu"),
                "uptime_seconds": round(time.time() - self.started, 1), "limits": self.limits.as_dict(),
                "memory": process_memory(),
                "inpaint": self.inpaint_info(), "gan": self.gan_info()}

    def progress(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None:
            return {"job": job_id, "state": "unknown"}
        now = time.monotonic()
        out: dict[str, Any] = {"job": job_id, "state": job.state,
                               "elapsed_seconds": round((job.finished or now) - job.created, 2)}
        if job.state == "queued" and job.ticket >= 0:
            out["ahead"] = self._fifo.ahead(job.ticket)
        if job.state == "running":
            out["fraction"] = round(min(job.calls / max(job.expected_calls, 1), 0.99), 3)
        elif job.state in ("encoding", "done"):
            out["fraction"] = 1.0
        return out

    # ------------------------------------------------------------------ inpainting
    @contextmanager
    def admission(self) -> Iterator[None]:
        """Hold one of the ``max_queue`` inpainting slots (503 at once when none is free). The HTTP layer
        takes it before reading an upload, so waiting requests, their bodies and their decoded pixels
        are bounded by ``max_queue``."""
        if not self._admitted.acquire(blocking=False):
            raise ApiError(503, f"server busy: {self.limits.max_queue} inpainting requests are already queued "
                                f"(--max-queue); retry shortly", {"Retry-After": "2"})
        try:
            yield
        finally:
            self._admitted.release()

    def inpaint(self, image: bytes, mask: bytes, layouts: bool = False, job_id: str | None = None) -> InpaintResult:
        """Inpaint ``image`` (file bytes) under ``mask`` (file bytes, white = hole, grey >= 128 is a hole).

        The PNG's known pixels are the input's own (8-bit) values; an empty mask returns the input.
        ``layouts``: also return AN's argmax layout (image size, one colour per entity) and the
        per-entity maps, as ``attnorm inpaint --layouts`` writes them."""
        if self.inpainter is None:
            raise ApiError(503, "no inpainting generator loaded")
        job = self.jobs.create(job_id)
        try:
            lim = self.limits.max_pixels
            im = open_image(image, "image", lim)
            mk = open_image(mask, "mask", lim)
            if im.size != mk.size:
                raise ApiError(400, f"mask is {mk.width}x{mk.height} but image is {im.width}x{im.height} "
                                    f"(width x height); they must have the same size")
            if layouts and self.inpainter.config.get("attention") != "an":
                raise ApiError(400, f"layouts need an AN generator; this one has "
                                    f"attention={self.inpainter.config.get('attention')!r}")
            job.state = "queued"
            return self._inpaint_decoded(im, mk, layouts, job)
        except BaseException:
            job.state, job.finished = "failed", time.monotonic()
            raise

    def _inpaint_decoded(self, im: Image.Image, mk: Image.Image, layouts: bool, job: Job) -> InpaintResult:
        rgb, grey, alpha = split_pixels(im)
        buf = io.BytesIO()
        _to_8bit(mk).convert("L").save(buf, format="PNG", compress_level=0)
        m = models.load_mask(io.BytesIO(buf.getvalue()))  # (1, H, W) 0/1, grey >= 128 is a hole
        hole = m[0].numpy() >= 0.5
        n_hole = int(hole.sum())
        t0 = time.monotonic()
        layout = None
        if n_hole == 0:
            pred, t_queue, t_inf = rgb, 0.0, 0.0
        else:
            x = models.to_tensor(rgb)
            job.ticket = self._fifo.take_ticket()
            with self._fifo.turn(job.ticket):
                t1 = time.monotonic()
                job.state, job.started, job.expected_calls = "running", t1, self._calls_per_run
                self._active = job
                try:
                    res = models.inpaint_image(self.inpainter, x, m, return_layout=layouts)
                    self._calls_per_run = max(job.calls, 1)  # the next progress bar's 100%
                finally:
                    self._active = None
            y, layout = res if layouts else (res, None)
            t_queue, t_inf = t1 - t0, time.monotonic() - t1
            pred = models.to_uint8(y)
        job.state = "encoding"
        out = compose(rgb, grey, alpha, pred, hole)
        layout_png = entities_png = None
        if layout is not None:
            colour, entities = models.layout_images(layout[0], hole.shape)
            layout_png, entities_png = png_bytes(colour), png_bytes(entities)
        result = InpaintResult(png_bytes(out), im.width, im.height, n_hole, layout_png, entities_png, t_queue, t_inf)
        job.state, job.finished = "done", time.monotonic()
        return result

    # ------------------------------------------------------------------ class-conditional GAN
    def _need_gan(self):
        if self.gan is None:
            raise ApiError(503, f"no GAN loaded: {self.gan_missing_reason}")
        return self.gan

    def _classes(self, spec: Any) -> list[int]:
        """Class indices from JSON: a list of indices or names, one of them, a comma-separated string
        of them, or null / "all" for every class."""
        G = self._need_gan()
        if spec is None or (isinstance(spec, str) and spec.strip() in ("", "all")):
            return list(range(G.num_classes))
        if isinstance(spec, str):
            items: list = [t.strip() for t in spec.split(",") if t.strip()]
        elif isinstance(spec, list):
            items = spec
        else:
            items = [spec]
        if not items:
            raise ApiError(400, "choose at least one class")
        out = []
        for item in items:
            if isinstance(item, str) and re.fullmatch(r"-?\d+", item.strip()):
                item = int(item)
            if isinstance(item, int) and not isinstance(item, bool):
                if not 0 <= item < G.num_classes:
                    raise ApiError(400, f"class {item} out of range 0..{G.num_classes - 1}")
                out.append(item)
            elif isinstance(item, str) and item in self.class_names:
                out.append(self.class_names.index(item))
            else:
                raise ApiError(400, f"unknown class {item!r}; use indices 0..{G.num_classes - 1} "
                                    f"or names {self.class_names}")
        return out

    def _class(self, params: dict, key: str) -> int:
        v = params.get(key)
        if v is None:
            raise ApiError(400, f"{key} is required (a class index or name)")
        cls = self._classes([v])
        if len(cls) != 1:
            raise ApiError(400, f"{key} must be one class, got {v!r}")
        return cls[0]

    def _z(self, params: dict) -> tuple[torch.Tensor, dict]:
        """The latent of one grid sample: ``index`` of ``n`` latents drawn from ``seed`` (as in ``attnorm sample``)."""
        G = self._need_gan()
        n = _int(params, "n", 1, 1, 64)
        idx = _int(params, "index", 0, 0, n - 1)
        seed = _int(params, "seed", 0, 0, 2**53)
        trunc = _truncation(params)
        return models.latents(n, G.z_dim, seed, trunc)[idx], {"n": n, "index": idx, "seed": seed, "truncation": trunc}

    def generate(self, params: dict) -> dict[str, Any]:
        """``n`` samples per class (the same ``n`` latents for every class, from ``seed``).

        Returns ``{"classes", "n", "seed", "truncation", "tiles": [[png per sample] per class], "grid": png}``."""
        G = self._need_gan()
        classes = self._classes(params.get("classes"))
        n = _int(params, "n", 8, 1, 64)
        seed = _int(params, "seed", 0, 0, 2**53)
        trunc = _truncation(params)
        if n * len(classes) > self.limits.max_gan_images:
            raise ApiError(400, f"{n} x {len(classes)} classes = {n * len(classes)} images; at most "
                                f"{self.limits.max_gan_images} per request (--max-gan-images)")
        dev = next(G.parameters()).device
        rows = []
        with self._gan_lock:
            for c in classes:  # one class at a time bounds memory; eval mode makes samples independent
                x, _ = models.sample_images(G, [c], n, seed=seed, truncation=trunc, device=dev)
                rows.append(models.to_uint8(x))
        tiles = np.concatenate(rows)
        return {"classes": classes, "names": [self.class_names[c] for c in classes], "n": n, "seed": seed,
                "truncation": trunc, "tiles": [[png_bytes(t) for t in r] for r in rows],
                "grid": png_bytes(models.make_grid(tiles, ncol=n))}

    def interpolate(self, params: dict) -> dict[str, Any]:
        """Frames from class ``from`` to class ``to`` with one fixed latent (``seed``, ``n``, ``index``)."""
        G = self._need_gan()
        a, b = self._class(params, "from"), self._class(params, "to")
        steps = _int(params, "steps", 9, 2, 65)
        z, zinfo = self._z(params)
        with self._gan_lock:
            x = models.interpolate_z(G, z, a, b, steps)
        frames = models.to_uint8(x)
        return {"from": a, "to": b, "steps": steps, **zinfo, "frames": [png_bytes(f) for f in frames],
                "strip": png_bytes(models.make_grid(frames, ncol=steps))}

    def layouts(self, params: dict) -> dict[str, Any]:
        """AN layouts of one sample: class ``class``, latent ``index`` of ``n`` from ``seed``."""
        G = self._need_gan()
        c = self._class(params, "class")
        z, zinfo = self._z(params)
        try:
            with self._gan_lock:
                img, layers = models.sample_layouts(G, c, z)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        row = [img]
        out_layers = []
        for lay in layers:
            maps = lay.pop("maps")
            row += [lay["argmax"], *maps]
            out_layers.append({**lay, "argmax": png_bytes(lay["argmax"]),
                               "entities": png_bytes(models.make_grid(maps, ncol=int(np.ceil(np.sqrt(len(maps))))))})
        # the PNG form: one row as `attnorm layouts` draws it (image, then per AN layer argmax + entity maps)
        figure = models.make_grid(np.stack(row), ncol=len(row))
        return {"class": c, "name": self.class_names[c], **zinfo, "resolution": int(img.shape[0]),
                "image": png_bytes(img), "figure": png_bytes(figure), "layers": out_layers}


def load_app(inpaint_ckpt: str | Path | None = None, gan_ckpt: str | Path | None = None, device: str = "cpu",
             limits: Limits | None = None) -> ServeApp:
    """Load the models for ``attnorm serve`` (raises FileNotFoundError / ValueError with a one-line message).

    ``inpaint_ckpt=None``: the shipped inpainting weights. ``gan_ckpt=None``: the shipped GAN weights
    (:func:`attnorm.serve.models.default_gan_checkpoint`) when present, else no GAN (the generate page
    says how to pass one)."""
    try:
        inpainter = models.load_inpaint_generator(inpaint_ckpt, map_location=device)
    except (FileNotFoundError, ValueError) as exc:
        raise type(exc)(f"inpainting generator: {exc}") from exc
    inpaint_name = str(inpaint_ckpt) if inpaint_ckpt else f"shipped ({models.DEFAULT_INPAINT_WEIGHTS.name})"
    gan, names, reason, gan_name = None, None, None, None
    path = Path(gan_ckpt) if gan_ckpt else models.default_gan_checkpoint()
    if path is None:
        reason = (f"no GAN checkpoint: this install has no shipped GAN weights "
                  f"(attnorm/weights/{models.DEFAULT_GAN_WEIGHTS.name}); start the server with --gan-ckpt "
                  f"RUN/checkpoints/latest.pt (train one with `attnorm demo` or `attnorm train-gan`)")
    else:
        try:
            gan, names = models.load_gan(path, device=device)
        except (FileNotFoundError, ValueError) as exc:
            raise type(exc)(f"GAN: {exc}") from exc
        gan_name = str(path) if gan_ckpt else f"shipped ({path.name})"
    return ServeApp(inpainter, gan, names, reason, limits,
                    info={"inpaint_checkpoint": inpaint_name, "gan_checkpoint": gan_name, "device": str(device)})
