"""Helpers of the ``attnorm serve`` tests: tiny random models, a server on an ephemeral port, HTTP calls."""

from __future__ import annotations

import http.client
import io
import json
import threading
import uuid
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image

from attnorm.models.gan import Generator
from attnorm.models.inpaint import InpaintGenerator
from attnorm.serve.app import Limits, ServeApp
from attnorm.serve.models import GAN_SAFETENSORS_FORMAT
from attnorm.serve.server import serve_in_thread

CLASS_NAMES = ["ring", "star", "cross"]


def tiny_inpainter(seed: int = 0, width: float = 0.125) -> InpaintGenerator:
    torch.manual_seed(seed)
    g = InpaintGenerator(width=width, num_entities=4).eval()
    with torch.no_grad():  # a fresh AN layer is the identity (sigma = 0): make the layout matter
        for m in g.modules():
            if hasattr(m, "sigma") and isinstance(m.sigma, torch.nn.Parameter):
                m.sigma.fill_(0.5)
    return g


class Gate(torch.nn.Module):
    """Wraps a generator; its forward waits until the test opens ``gate`` (``entered`` says it is waiting)."""

    def __init__(self, g):
        super().__init__()
        self.g, self.config = g, g.config
        self.entered, self.gate = threading.Event(), threading.Event()

    def forward(self, *a, **kw):
        self.entered.set()
        assert self.gate.wait(60), "gate never opened"
        return self.g(*a, **kw)


class Negate(torch.nn.Module):
    """A stand-in inpainter for page tests on big images: predicts the negative image (255 - v in the hole,
    so every hole pixel changes) in milliseconds; no attentive branch, so no layouts."""

    config = {"attention": "none"}

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, m):
        return -x[:, :3], -x[:, :3]


def tiny_gan(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    g = Generator(resolution=32, ch=8, num_classes=3, z_dim=16, num_entities=4).eval()
    with torch.no_grad():  # make the classes differ (fresh CBN tables are all gain 1, bias 0)
        for m in g.modules():
            if hasattr(m, "gain") and isinstance(m.gain, torch.nn.Embedding):
                m.gain.weight.normal_(1, 0.5)
                m.bias.weight.normal_(0, 0.5)
    return g


def save_gan_safetensors(path, g: Generator, classes=None) -> None:
    from attnorm.io import write_safetensors
    state = {k: v.detach().contiguous() for k, v in g.state_dict().items()}
    meta = {"format": GAN_SAFETENSORS_FORMAT, "config": json.dumps(g.config)}
    if classes:
        meta["classes"] = json.dumps(classes)
    write_safetensors(path, state, metadata=meta)


def make_app(gan: bool = True, limits: Limits | None = None, inpainter=None) -> ServeApp:
    return ServeApp(inpainter or tiny_inpainter(), tiny_gan() if gan else None, CLASS_NAMES if gan else None,
                    None if gan else "no GAN checkpoint (test)", limits or Limits(),
                    info={"inpaint_checkpoint": "tiny (test)", "gan_checkpoint": "tiny (test)" if gan else None})


@contextmanager
def running(app: ServeApp):
    server = serve_in_thread(app, "127.0.0.1", 0)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im).copy()


def noise_image(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels > 1 else (h, w)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def box_mask(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = 255
    return m


def multipart(fields: dict[str, bytes | str]) -> tuple[bytes, str]:
    """A multipart/form-data body (files for bytes values, plain fields for str values)."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f"--{boundary}\r\n".encode())
        if isinstance(value, bytes):
            out.write(f'Content-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                      f"Content-Type: application/octet-stream\r\n\r\n".encode())
            out.write(value)
        else:
            out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode())
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 60.0) -> tuple[int, dict, bytes]:
    """(status, headers (lower-case names), body); ``path`` is sent exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def inpaint(server, image: bytes, mask: bytes, query: str = "", headers: dict | None = None, **extra):
    body, ctype = multipart({"image": image, "mask": mask, **extra})
    return request(server, "POST", f"/api/inpaint{query}", body, {"Content-Type": ctype, **(headers or {})})


def post_json(server, path: str, obj) -> tuple[int, dict, bytes]:
    return request(server, "POST", path, json.dumps(obj).encode(), {"Content-Type": "application/json"})
