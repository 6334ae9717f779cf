"""`attnorm serve`: the HTTP API against a real server on an ephemeral loopback port (tiny random models)."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _serve import (CLASS_NAMES, Gate, box_mask, decode, inpaint, make_app, multipart, noise_image, png,
                    post_json, request, running, save_gan_safetensors, tiny_gan, tiny_inpainter)
from attnorm.serve import models
from attnorm.serve.app import ApiError, Limits, load_app
from attnorm.serve.server import parse_multipart, static_files


@pytest.fixture(scope="module")
def server():
    with running(make_app(limits=Limits(max_gan_images=100))) as s:
        yield s


def _reference(g, img: np.ndarray, mask: np.ndarray, layouts: bool = False):
    """What the server must return: the library's inpaint_image on the same pixels, composed in uint8."""
    x = models.to_tensor(img)
    m = torch.from_numpy((mask >= 128).astype(np.float32))[None]
    res = models.inpaint_image(g, x, m, return_layout=layouts)
    y, lay = res if layouts else (res, None)
    pred = models.to_uint8(y)
    hole = mask >= 128
    return np.where(hole[..., None], pred, img), lay


def _error(status_headers_body, status: int) -> str:
    st, headers, body = status_headers_body
    assert st == status, (st, body[:300])
    assert headers["content-type"] == "application/json"
    obj = json.loads(body)
    assert obj["status"] == status and isinstance(obj["error"], str) and obj["error"]
    assert "\n" not in obj["error"] and "Traceback" not in obj["error"] and 'File "' not in obj["error"]
    return obj["error"]


# ---------------------------------------------------------------------------- inpainting
def test_health(server):
    st, h, body = request(server, "GET", "/api/health")
    assert st == 200 and h["content-type"] == "application/json"
    info = json.loads(body)
    assert info["status"] == "ok" and info["inpaint"]["available"] and info["inpaint"]["layouts"]
    assert info["gan"]["available"] and info["gan"]["classes"] == CLASS_NAMES
    assert info["limits"]["max_pixels"] == Limits().max_pixels


def test_inpaint_known_pixels_are_the_input_bit_for_bit(server):
    img = noise_image(70, 93, seed=1)
    mask = box_mask(70, 93, (10, 40, 20, 60))
    st, h, body = inpaint(server, png(img), png(mask))
    assert st == 200 and h["content-type"] == "image/png"
    out = decode(body)
    hole = mask >= 128
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(out[~hole], img[~hole])            # known pixels: bit-identical
    assert (out[hole] != img[hole]).any(-1).mean() > 0.9     # the hole was filled by the model
    expected, _ = _reference(server.app.inpainter, img, mask)
    assert np.array_equal(out, expected)                     # and filled with exactly the library's output
    assert int(h["x-hole-pixels"]) == hole.sum()


def test_grey_masks_are_thresholded_at_128(server):
    img = noise_image(32, 32, seed=2)
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 127   # known
    mask[:, 16:] = 128   # hole
    st, h, body = inpaint(server, png(img), png(mask))
    out = decode(body)
    assert np.array_equal(out[:, :16], img[:, :16]) and int(h["x-hole-pixels"]) == 32 * 16


@pytest.mark.parametrize("kind", ["L", "RGBA", "P", "I;16", "JPEG"])
def test_inpaint_keeps_the_input_colour_type(server, kind):
    rng = np.random.default_rng(3)
    h, w = 40, 50
    mask = box_mask(h, w, (5, 20, 5, 25))
    hole = mask >= 128
    if kind == "L":
        im = Image.fromarray(noise_image(h, w, channels=1), mode="L")
    elif kind == "RGBA":
        im = Image.fromarray(np.dstack([noise_image(h, w), rng.integers(0, 256, (h, w), dtype=np.uint8)]), mode="RGBA")
    elif kind == "P":
        im = Image.fromarray(noise_image(h, w)).quantize(32)
    elif kind == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        im = Image.fromarray(noise_image(h, w))
    buf = io.BytesIO()
    im.save(buf, format="JPEG" if kind == "JPEG" else "PNG")
    st, _, body = inpaint(server, buf.getvalue(), png(mask))
    assert st == 200
    out = decode(body)
    with Image.open(io.BytesIO(buf.getvalue())) as src:
        if kind == "I;16":
            ref = np.round(np.asarray(src, dtype=np.float64) / 257).astype(np.uint8)
        elif kind == "P":
            ref = np.asarray(src.convert("RGB"))
        else:
            ref = np.asarray(src)
    assert out.shape == ref.shape
    assert np.array_equal(out[~hole], ref[~hole])
    if kind == "RGBA":
        assert np.array_equal(out[..., 3], ref[..., 3])  # alpha copied everywhere, the hole included


def test_empty_mask_returns_the_input_without_running_the_model(server):
    img = noise_image(20, 30, seed=4)
    st, h, body = inpaint(server, png(img), png(np.zeros((20, 30), np.uint8)))
    assert st == 200 and np.array_equal(decode(body), img)
    assert h["x-hole-pixels"] == "0" and float(h["x-inference-seconds"]) == 0.0


def test_layouts_json(server):
    img = noise_image(48, 64, seed=5)
    mask = box_mask(48, 64, (8, 30, 10, 40))
    st, h, body = inpaint(server, png(img), png(mask), "?layouts=1")
    assert st == 200 and h["content-type"] == "application/json"
    res = json.loads(body)
    out = decode(models_blob(res["image"]))
    expected, layout = _reference(server.app.inpainter, img, mask, layouts=True)
    assert np.array_equal(out, expected)
    colour, entities = models.layout_images(layout[0], (48, 64))
    assert np.array_equal(decode(models_blob(res["layout"])), colour)       # as `attnorm inpaint --layouts`
    assert np.array_equal(decode(models_blob(res["entities"])), entities)
    assert res["width"] == 64 and res["height"] == 48 and res["hole_pixels"] == int((mask >= 128).sum())
    st, h, body = inpaint(server, png(img), png(mask), "?format=json")
    plain = json.loads(body)
    assert st == 200 and plain["layout"] is None and plain["image"] == res["image"]
    assert "format must be png or json" in _error(inpaint(server, png(img), png(mask), "?format=tiff"), 400)


def models_blob(data_url: str) -> bytes:
    import base64
    assert data_url.startswith("data:image/png;base64,")
    return base64.b64decode(data_url.split(",", 1)[1])


def test_exif_orientation_is_applied_as_browsers_do(server):
    img = noise_image(30, 50, seed=6)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", exif=exif)
    st, _, body = inpaint(server, buf.getvalue(), png(np.zeros((30, 50), np.uint8)))
    assert st == 400 and "mask is 50x30 but image is 30x50" in json.loads(body)["error"]
    mask = box_mask(50, 30, (5, 15, 5, 15))
    st, _, body = inpaint(server, buf.getvalue(), png(mask))
    assert st == 200
    out, shown = decode(body), np.rot90(img, k=-1)
    assert out.shape == (50, 30, 3) and np.array_equal(out[mask < 128], shown[mask < 128])


# ---------------------------------------------------------------------------- bad input
def _truncated_png() -> bytes:
    data = png(noise_image(64, 64, seed=7))
    return data[: len(data) // 2]


@pytest.mark.parametrize("case, status, words", [
    ("not an image", 400, "image: not an image"),
    ("corrupt", 400, "image: corrupt or truncated"),
    ("mask not an image", 400, "mask: not an image"),
    ("empty", 400, "image: the file is empty"),
    ("size mismatch", 400, "mask is 20x10 but image is 20x16"),
    ("missing mask", 400, "missing form field(s) mask"),
    ("not multipart", 415, "multipart/form-data"),
    ("malformed multipart", 400, "malformed multipart"),
])
def test_bad_inpaint_requests_get_a_json_error(server, case, status, words):
    img, mask = png(noise_image(16, 20)), png(box_mask(16, 20, (2, 5, 2, 5)))
    if case == "not an image":
        r = inpaint(server, b"this is a text file, not a picture", mask)
    elif case == "corrupt":
        r = inpaint(server, _truncated_png(), png(box_mask(64, 64, (2, 5, 2, 5))))
    elif case == "mask not an image":
        r = inpaint(server, img, b"\x89PNG\r\n\x1a\n garbage")
    elif case == "empty":
        r = inpaint(server, b"", mask)
    elif case == "size mismatch":
        r = inpaint(server, img, png(box_mask(10, 20, (2, 5, 2, 5))))
    elif case == "missing mask":
        body, ctype = multipart({"image": img})
        r = request(server, "POST", "/api/inpaint", body, {"Content-Type": ctype})
    elif case == "not multipart":
        r = request(server, "POST", "/api/inpaint", img, {"Content-Type": "image/png"})
    else:
        body, ctype = multipart({"image": img, "mask": mask})
        r = request(server, "POST", "/api/inpaint", body[: len(body) // 2], {"Content-Type": ctype})
    assert words in _error(r, status)


def test_too_large_body_is_413_with_the_limit():
    app = make_app(gan=False, limits=Limits(max_upload_bytes=50_000))
    with running(app) as s:
        img = png(noise_image(200, 200))  # ~120 kB of noise
        msg = _error(inpaint(s, img, png(box_mask(200, 200, (0, 9, 0, 9)))), 413)
        assert "at most 50000 bytes" in msg and "--max-upload-mb" in msg
        # the connection stays usable: the server read the refused body to its end
        assert request(s, "GET", "/api/health")[0] == 200


def test_too_many_pixels_is_413_before_decoding():
    app = make_app(gan=False, limits=Limits(max_pixels=100 * 100))
    with running(app) as s:
        big = png(np.zeros((101, 100, 3), np.uint8))
        msg = _error(inpaint(s, big, png(np.zeros((101, 100), np.uint8))), 413)
        assert "101" in msg and "10000 pixels" in msg and "--max-pixels" in msg
        small = png(np.zeros((100, 100, 3), np.uint8))
        assert inpaint(s, small, png(np.zeros((100, 100), np.uint8)))[0] == 200


def _raw(server, data: bytes, read_until_close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                c = sock.recv(65536)
            except ConnectionResetError:
                break
            if not c:
                break
            chunks.append(c)
            if not read_until_close and b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def test_expect_100_continue_over_the_limit_is_refused_before_the_body():
    app = make_app(gan=False, limits=Limits(max_upload_bytes=1000))
    with running(app) as s:
        head = (b"POST /api/inpaint HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000000\r\n"
                b"Content-Type: multipart/form-data; boundary=x\r\nExpect: 100-continue\r\n\r\n")
        resp = _raw(s, head)  # no body sent: the server must answer 413 and close
        assert resp.startswith(b"HTTP/1.1 413") and b"at most 1000 bytes" in resp


def test_keep_alive_survives_an_error():
    import http.client
    with running(make_app(gan=False)) as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.server_port, timeout=30)
        body, ctype = multipart({"image": b"not an image", "mask": png(np.zeros((4, 4), np.uint8))})
        conn.request("POST", "/api/inpaint", body, {"Content-Type": ctype})
        r = conn.getresponse()
        assert r.status == 400 and json.loads(r.read())["error"]
        conn.request("GET", "/api/health")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        conn.close()


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/api/inpaint", 405), ("PUT", "/api/inpaint", 405), ("DELETE", "/api/health", 405),
    ("POST", "/api/health", 405), ("GET", "/api/generate", 405), ("POST", "/", 405),
    ("GET", "/api/nope", 404), ("GET", "/nope", 404), ("POST", "/api/nope", 404), ("PATCH", "/x", 404),
])
def test_wrong_method_or_path(server, method, path, status):
    r = request(server, method, path, b"{}" if method in ("POST", "PUT", "PATCH") else None)
    msg = _error(r, status)
    if status == 405:
        assert "allow" in r[1] and method not in r[1]["allow"] and method in msg


def test_errors_never_leak_tracebacks_even_on_internal_failures():
    class Broken(torch.nn.Module):
        config = {"attention": "none"}

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, m, **kw):
            raise RuntimeError("out of cheese\nsecond line with a path /home/x.py")

    with running(make_app(gan=False, inpainter=Broken())) as s:
        st, _, body = inpaint(s, png(noise_image(8, 8)), png(box_mask(8, 8, (0, 4, 0, 4))))
        assert st == 500
        msg = json.loads(body)["error"]
        assert msg == "internal error: RuntimeError: out of cheese"
        assert request(s, "GET", "/api/health")[0] == 200  # still serving


# ---------------------------------------------------------------------------- security
@pytest.mark.parametrize("path", [
    "/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/%2e%2e%2fserver.py",
    "/../attnorm/serve/app.py", "/static//etc/passwd", "/static/./style.css", "//static/style.css",
    "/static/style.css%00", "/static/", "/static", "/static/..", "/static/%5c..%5capp.py",
    "/static/..\\app.py", "/etc/passwd", "/static/__init__.py", "/app.py",
    "http://127.0.0.1/static/../app.py",
])
def test_path_traversal_is_404(server, path):
    resp = _raw(server, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    status = resp.split(b"\r\n", 1)[0]
    body = resp.split(b"\r\n\r\n", 1)[1]
    if status == b"HTTP/1.1 200 OK":  # only ever one of the page's own files ("//x" is read as "/x")
        assert body in {content for content, _ in static_files().values()}, path
    else:
        assert status in (b"HTTP/1.1 404 Not Found", b"HTTP/1.1 400 Bad Request"), resp[:200]
    assert b"import " not in resp and b"root:" not in resp


def test_static_files_are_served_from_the_package_only(server):
    table = static_files()
    folder = Path(models.__file__).parent / "static"
    assert {p.name for p in folder.iterdir()} == {k.rsplit("/", 1)[1] for k in table if k.startswith("/static/")}
    st, h, body = request(server, "GET", "/static/style.css")
    assert st == 200 and body == (folder / "style.css").read_bytes() and h["content-type"].startswith("text/css")
    st, h, body = request(server, "GET", "/")
    assert st == 200 and h["content-type"].startswith("text/html")
    assert "script-src 'self'" in h["content-security-policy"]
    # every file the pages reference exists, and none comes from another host (works offline)
    import re
    for page in ("index.html", "generate.html"):
        html = (folder / page).read_text()
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert refs and not [r for r in refs if r.startswith(("http:", "https:", "//"))]
        for ref in refs:
            assert request(server, "GET", ref)[0] == 200, ref
    for js in folder.glob("*.js"):
        assert not re.search(r"https?://", js.read_text()), js.name


def test_host_and_origin_checks(server):
    r = request(server, "GET", "/api/health", headers={"Host": "evil.example:7860"})
    assert "not a loopback address" in _error(r, 403)
    body, ctype = multipart({"image": png(noise_image(8, 8)), "mask": png(box_mask(8, 8, (0, 4, 0, 4)))})
    r = request(server, "POST", "/api/inpaint", body, {"Content-Type": ctype, "Origin": "https://evil.example"})
    assert "cross-origin" in _error(r, 403)
    port = server.server_port
    for origin in ("null", f"http://127.0.0.1:{port + 1}", "http://[::1]:x"):
        r = request(server, "POST", "/api/inpaint", body, {"Content-Type": ctype, "Origin": origin})
        assert "cross-origin" in _error(r, 403)
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        assert request(server, "POST", "/api/inpaint", body, {"Content-Type": ctype, "Origin": origin})[0] == 200


def test_uploads_are_never_written_to_disk(server):
    opened = []
    active = threading.Event()

    def hook(event, args):
        if active.is_set() and event == "open" and isinstance(args[0], (str, bytes, Path)):
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags & 0o3):
                opened.append(args[0])
    sys.addaudithook(hook)
    active.set()
    try:
        img, mask = noise_image(64, 64, seed=8), box_mask(64, 64, (4, 40, 4, 40))
        assert inpaint(server, png(img), png(mask), "?layouts=1")[0] == 200
        assert inpaint(server, png(img), png(mask))[0] == 200
    finally:
        active.clear()
    assert opened == []


# ---------------------------------------------------------------------------- concurrency
def test_concurrent_requests_do_not_corrupt_each_other(server):
    cases = []
    for i in range(20):
        h, w = 40 + 3 * i, 56 - i
        img = noise_image(h, w, seed=100 + i)
        mask = box_mask(h, w, (i % 7, h // 2 + i % 5, 3, w // 2 + i % 4))
        cases.append((img, mask))
    expected = [_reference(server.app.inpainter, img, mask)[0] for img, mask in cases]
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda c: inpaint(server, png(c[0]), png(c[1])), cases))
    for (st, _, body), exp in zip(results, expected):
        assert st == 200 and np.array_equal(decode(body), exp)


def test_a_slow_request_does_not_block_the_page_progress_or_admission_limit():
    gated = Gate(tiny_inpainter())
    app = make_app(gan=True, inpainter=gated, limits=Limits(max_queue=2))
    img, mask = png(noise_image(32, 32)), png(box_mask(32, 32, (4, 20, 4, 20)))
    with running(app) as s, ThreadPoolExecutor(4) as pool:
        first = pool.submit(inpaint, s, img, mask, "", {"X-Job-Id": "job-1"})
        assert gated.entered.wait(30)
        second = pool.submit(inpaint, s, img, mask, "", {"X-Job-Id": "job-2"})
        deadline = time.monotonic() + 10
        while json.loads(request(s, "GET", "/api/progress?job=job-2")[2])["state"] != "queued":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        t0 = time.monotonic()
        for path in ("/", "/generate", "/static/inpaint.js", "/api/health"):
            assert request(s, "GET", path, timeout=5)[0] == 200
        assert post_json(s, "/api/generate", {"classes": [0], "n": 2})[0] == 200  # the GAN has its own lock
        assert time.monotonic() - t0 < 5
        p1 = json.loads(request(s, "GET", "/api/progress?job=job-1")[2])
        p2 = json.loads(request(s, "GET", "/api/progress?job=job-2")[2])
        assert p1["state"] == "running" and 0 <= p1["fraction"] < 1
        assert p2["state"] == "queued" and p2["ahead"] == 1
        # a third request exceeds --max-queue 2: refused at once, not queued
        st, h, body = inpaint(s, img, mask)
        assert st == 503 and h["retry-after"] == "2" and "--max-queue" in json.loads(body)["error"]
        gated.gate.set()
        assert first.result(30)[0] == 200 and second.result(30)[0] == 200
        done = json.loads(request(s, "GET", "/api/progress?job=job-1")[2])
        assert done["state"] == "done" and done["fraction"] == 1.0
        assert json.loads(request(s, "GET", "/api/progress?job=nope")[2])["state"] == "unknown"
        assert _error(request(s, "GET", "/api/progress"), 400)
        assert "X-Job-Id" in _error(inpaint(s, img, mask, "", {"X-Job-Id": "../../x"}), 400)


# ---------------------------------------------------------------------------- the GAN
def test_generate_png_is_attnorm_sample(server):
    G = server.app.gan
    st, h, body = post_json(server, "/api/generate", {"classes": [0, "cross"], "n": 3, "seed": 7})
    assert st == 200 and h["content-type"] == "image/png"
    rows = [models.to_uint8(models.sample_images(G, [c], 3, seed=7)[0]) for c in (0, 2)]
    assert np.array_equal(decode(body), models.make_grid(np.concatenate(rows), ncol=3))


def test_generate_json_tiles_and_truncation(server):
    st, _, body = post_json(server, "/api/generate?format=json", {"classes": "star", "n": 2, "seed": 1,
                                                                  "truncation": 0.5})
    res = json.loads(body)
    assert st == 200 and res["classes"] == [1] and res["names"] == ["star"] and res["truncation"] == 0.5
    assert len(res["tiles"]) == 1 and len(res["tiles"][0]) == 2
    x, _ = models.sample_images(server.app.gan, [1], 2, seed=1, truncation=0.5)
    assert np.array_equal(decode(models_blob(res["tiles"][0][1])), models.to_uint8(x)[1])
    again = json.loads(post_json(server, "/api/generate?format=json", {"classes": [1], "n": 2, "seed": 1,
                                                                       "truncation": 0.5})[2])
    assert again["tiles"] == res["tiles"]  # deterministic


@pytest.mark.parametrize("body, words", [
    ({"classes": [5]}, "out of range"), ({"classes": ["dog"]}, "unknown class"), ({"n": 0}, "n must be in 1..64"),
    ({"n": "many"}, "n must be an integer"), ({"classes": [0, 1, 2], "n": 64}, "192 images; at most 100 per request"),
    ({"truncation": "x"}, "truncation"), ({"classes": []}, "at least one class"), ([1, 2], "JSON object"),
])
def test_generate_bad_parameters(server, body, words):
    assert words in _error(post_json(server, "/api/generate", body), 400)


def test_interpolation_ends_are_the_two_classes_with_the_chosen_z(server):
    G = server.app.gan
    params = {"from": 0, "to": "cross", "steps": 5, "seed": 3, "n": 4, "index": 2}
    st, _, body = post_json(server, "/api/interpolate?format=json", params)
    res = json.loads(body)
    assert st == 200 and res["from"] == 0 and res["to"] == 2 and len(res["frames"]) == 5
    frames = np.stack([decode(models_blob(f)) for f in res["frames"]]).astype(int)
    samples = {c: models.to_uint8(models.sample_images(G, [c], 4, seed=3)[0])[2].astype(int) for c in (0, 2)}
    assert np.abs(frames[0] - samples[0]).max() <= 1 and np.abs(frames[-1] - samples[2]).max() <= 1
    assert np.abs(frames[2] - frames[0]).max() > 10  # the middle differs from the ends
    from attnorm.inference import interpolation_images
    rows = models.to_uint8(interpolation_images(G, 0, 2, steps=5, rows=4, seed=3)).astype(int)
    assert np.abs(frames - rows[10:15]).max() <= 1  # row 2 of `attnorm interpolate --rows 4`
    st, h, body = post_json(server, "/api/interpolate", params)
    assert st == 200 and decode(body).shape == (2 + 34, 2 + 5 * 34, 3)
    assert "index must be in 0..3" in _error(post_json(server, "/api/interpolate", {**params, "index": 4}), 400)
    assert "from is required" in _error(post_json(server, "/api/interpolate", {"to": 1}), 400)


def test_layouts_of_one_sample(server):
    st, _, body = post_json(server, "/api/layouts?format=json", {"class": 1, "seed": 2, "n": 3, "index": 1})
    res = json.loads(body)
    assert st == 200 and res["name"] == "star" and len(res["layers"]) == 1
    lay = res["layers"][0]
    assert lay["num_entities"] == 4 and abs(sum(lay["fractions"]) - 1) < 1e-3 and 1 <= lay["used"] <= 4
    x, _ = models.sample_images(server.app.gan, [1], 3, seed=2)
    img = decode(models_blob(res["image"])).astype(int)
    assert np.abs(img - models.to_uint8(x)[1].astype(int)).max() <= 1
    argmax = decode(models_blob(lay["argmax"]))
    from attnorm.viz.grid import layout_palette
    colours = {tuple(c) for c in np.unique(argmax.reshape(-1, 3), axis=0)}
    assert argmax.shape == (32, 32, 3) and colours <= {tuple(c) for c in layout_palette(4)}
    assert len(colours) == sum(f > 0 for f in lay["fractions"])  # one colour per entity that wins a pixel
    assert decode(models_blob(lay["entities"])).shape == (2 + 2 * 34, 2 + 2 * 34, 3)  # 4 maps in a 2x2 grid
    st, h, body = post_json(server, "/api/layouts", {"class": 1, "seed": 2, "n": 3, "index": 1})
    assert st == 200 and decode(body).shape == (36, 2 + (1 + 1 + 4) * 34, 3)  # image, argmax, 4 entity maps


def test_without_a_gan_the_api_says_why():
    with running(make_app(gan=False)) as s:
        info = json.loads(request(s, "GET", "/api/gan")[2])
        assert info == {"available": False, "reason": "no GAN checkpoint (test)"}
        assert "no GAN loaded: no GAN checkpoint (test)" in _error(post_json(s, "/api/generate", {}), 503)


# ---------------------------------------------------------------------------- loading and the command
def test_default_gan_lookup_and_safetensors_round_trip(tmp_path):
    assert models.default_gan_checkpoint(tmp_path) is None
    g = tiny_gan(1)
    save_gan_safetensors(tmp_path / "gan_b.safetensors", g, CLASS_NAMES)
    save_gan_safetensors(tmp_path / "gan_a.safetensors", g)
    (tmp_path / "other.safetensors").write_bytes(b"")
    assert models.default_gan_checkpoint(tmp_path) == tmp_path / "gan_a.safetensors"
    save_gan_safetensors(tmp_path / models.DEFAULT_GAN_WEIGHTS.name, g)
    assert models.default_gan_checkpoint(tmp_path) == tmp_path / models.DEFAULT_GAN_WEIGHTS.name
    g2, names = models.load_gan(tmp_path / "gan_b.safetensors")
    assert names == CLASS_NAMES
    z = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(g(z, torch.tensor([0, 2])), g2(z, torch.tensor([0, 2])))
    inp = tmp_path / "inp.safetensors"
    from attnorm.checkpoints import save_inpaint_generator_safetensors
    save_inpaint_generator_safetensors(inp, tiny_inpainter())
    with pytest.raises(ValueError, match="is not a GAN generator .safetensors file"):
        models.load_gan(inp)
    with pytest.raises(FileNotFoundError):
        models.load_gan(tmp_path / "missing.pt")


def test_load_app_with_a_train_gan_checkpoint(tmp_path):
    from attnorm import cli
    assert cli.main(["train-gan", "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "2",
                     "ch=8", "procedural_classes=3", "procedural_length=8", "samples_per_class=1",
                     "sample_every=1000"]) == 0
    app = load_app(gan_ckpt=tmp_path / "run" / "checkpoints" / "latest.pt")
    info = app.gan_info()
    assert info["available"] and info["num_classes"] == 3 and info["classes"][0] == "ring"
    assert app.inpaint_info()["checkpoint"].startswith("shipped")
    out = app.generate({"classes": ["ring"], "n": 2})
    assert len(out["tiles"][0]) == 2
    from attnorm.checkpoints import save_inpaint_generator
    save_inpaint_generator(tmp_path / "inp.pt", tiny_inpainter())
    with pytest.raises(ValueError, match="^GAN: .*inp.pt is an inpainting generator file, not a train-gan checkpoint"):
        load_app(gan_ckpt=tmp_path / "inp.pt")


def test_parse_multipart_edge_cases():
    body = (b"preamble\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a;b\\\".png\"\r\n"
            b"Content-Type: image/png\r\n\r\n\r\nline\r\n--b-not-the-end\r\n\r\n--b\r\n"
            b"Content-Disposition: form-data; name=mask\r\n\r\nM\r\n--b--\r\nepilogue")
    parts = parse_multipart(body, 'multipart/form-data; boundary="b"')
    assert parts["image"].data == b"\r\nline\r\n--b-not-the-end\r\n"  # CRLFs and look-alike lines kept
    assert parts["mask"].data == b"M"
    for bad in (b"--b\r\nno header end", b"nothing", b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--"):
        with pytest.raises(ApiError) as e:
            parse_multipart(bad, "multipart/form-data; boundary=b")
        assert e.value.status == 400
    with pytest.raises(ApiError) as e:
        parse_multipart(b"", "multipart/form-data")
    assert e.value.status == 400


def _start(args, timeout=60):
    proc = subprocess.Popen([sys.executable, "-m", "attnorm.cli", "serve", "--port", "0", "--quiet", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    line = proc.stdout.readline()
    return proc, line


def test_serve_command_prints_the_url_and_stops_cleanly_on_ctrl_c():
    import urllib.request
    proc, line = _start([])
    try:
        assert line.startswith("attnorm serve: http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[2]
        with urllib.request.urlopen(url + "api/health", timeout=30) as r:
            info = json.loads(r.read())
        assert info["inpaint"]["checkpoint"] == "shipped (inpaint_photos.safetensors)"
        shipped = models.default_gan_checkpoint()
        if shipped is None:  # the generate page will say why and how to pass one
            assert info["gan"]["available"] is False and "--gan-ckpt" in info["gan"]["reason"]
        else:
            assert info["gan"]["available"] and info["gan"]["checkpoint"] == f"shipped ({shipped.name})"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "stopped" in out and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("args, words", [
    (["--inpaint-ckpt", "/nonexistent/x.safetensors"],
     "attnorm serve: error: inpainting generator: generator checkpoint /nonexistent/x.safetensors not found"),
    (["--gan-ckpt", "/nonexistent/g.pt"],
     "attnorm serve: error: GAN: generator checkpoint /nonexistent/g.pt not found"),
    (["--max-pixels", "0"], "--max-pixels must be positive"),
    (["--port", "70000"], "--port must be in 0..65535"),
])
def test_serve_command_errors_are_one_line(capsys, args, words):
    from attnorm import cli
    assert cli.main(["serve", "--port", "0", *args]) == 2
    err = capsys.readouterr().err
    assert words in err and err.strip().count("\n") == 0 and "Traceback" not in err


def test_serve_command_port_in_use(capsys):
    from attnorm import cli
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        assert cli.main(["serve", "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1:" in err and err.strip().count("\n") == 0
