"""`attnorm serve` in a real browser: headless Chromium driven by Playwright against a live server.

The page is used as a person would: open an image, paint a stroke with the mouse, undo / redo,
inpaint, hold to compare, toggle the layout, download; the generator page's grid, interpolation
and layouts. Pixels are read back from the page's own canvas and from the downloaded file.

These tests skip (with the reason) when Playwright or a Chromium binary is missing; set
``ATTNORM_BROWSER_TESTS=required`` (as ``.ci/run`` does once it has installed both) to make that a
failure instead. ``ATTNORM_CHROMIUM`` points at a browser binary; otherwise chromium,
chromium-browser or google-chrome is looked up on PATH, then Playwright's own download.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from _serve import Gate, Negate, make_app, noise_image, running
from attnorm.serve.app import Limits

REQUIRED = os.environ.get("ATTNORM_BROWSER_TESTS") == "required"


def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"browser tests are required (ATTNORM_BROWSER_TESTS=required) but {reason}")
    pytest.skip(reason)


def _chromium_path() -> str | None:
    env = os.environ.get("ATTNORM_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright; the browser itself comes from "
                     "apt-get install chromium)")
    exe = _chromium_path()
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=exe) if exe else pw.chromium.launch()
    except Exception as exc:
        pw.stop()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _unavailable(f"no usable Chromium ({exe or 'none on PATH, and Playwright has no downloaded browser'}): "
                     f"{first}")
    yield b
    b.close()
    pw.stop()


@pytest.fixture(scope="module")
def server():
    with running(make_app()) as s:
        yield s


class Page:
    """A Playwright page plus the helpers the tests share; collects console errors."""

    def __init__(self, browser, server, path="/"):
        from playwright.sync_api import expect
        self.expect = expect
        self.ctx = browser.new_context(viewport={"width": 1100, "height": 760}, device_scale_factor=1,
                                       accept_downloads=True)
        self.page = self.ctx.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.set_default_timeout(20000)
        self.url = f"http://127.0.0.1:{server.server_port}"
        self.page.goto(self.url + path)

    def loc(self, sel):
        return self.page.locator(sel)

    def close(self):
        self.ctx.close()
        assert self.errors == [], self.errors  # no script errors, no CSP violations, no failed loads

    # ------------------------------------------------------------------ inpaint page helpers
    def open_image(self, path, w, h):
        self.loc("#file-image").set_input_files(str(path))
        self.expect(self.loc("#st-size")).to_contain_text(f"{w}×{h}")

    def transform(self):
        d = self.loc("#view").evaluate("e => [e.dataset.scale, e.dataset.tx, e.dataset.ty]")
        return tuple(float(v) for v in d)

    def to_screen(self, x, y):
        box = self.loc("#view").bounding_box()
        s, tx, ty = self.transform()
        return box["x"] + tx + x * s, box["y"] + ty + y * s

    def stroke(self, p0, p1, steps=12):
        self.page.mouse.move(*self.to_screen(*p0))
        self.page.mouse.down()
        self.page.mouse.move(*self.to_screen(*p1), steps=steps)
        self.page.mouse.up()

    def hole(self) -> int:
        text = self.loc("#st-hole").text_content()
        return int(re.search(r"\(([\d,]+) px\)", text).group(1).replace(",", ""))

    def view_pixels(self, w, h) -> np.ndarray:
        """The image area of the on-screen canvas (at 100% zoom: one canvas pixel per image pixel)."""
        s, tx, ty = self.transform()
        assert s == 1 and tx == int(tx) and ty == int(ty)
        url = self.loc("#view").evaluate(
            """async (c, [x, y, w, h]) => {
                 await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
                 const d = c.getContext('2d').getImageData(x, y, w, h);
                 const o = document.createElement('canvas'); o.width = w; o.height = h;
                 o.getContext('2d').putImageData(d, 0, 0);
                 return o.toDataURL('image/png');
               }""", [int(tx), int(ty), w, h])
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
            return np.asarray(im.convert("RGB")).copy()

    def download(self) -> np.ndarray:
        with self.page.expect_download() as info:
            self.loc("#btn-download").click()
        with Image.open(info.value.path()) as im:
            return np.asarray(im).copy()


def _capsule(shape, p0, p1, r):
    """Distance of every pixel centre to the segment p0-p1, minus r (<= 0: under the brush)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    a, b = np.array(p0, float), np.array(p1, float)
    ab = b - a
    t = np.clip(((xx - a[0]) * ab[0] + (yy - a[1]) * ab[1]) / (ab @ ab), 0, 1)
    return np.hypot(xx - (a[0] + t * ab[0]), yy - (a[1] + t * ab[1])) - r


def _structured(h, w, seed=0):
    """Noise over a gradient: every pixel distinct enough that a fill always changes it."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(w + h, 1)], -1)
    noise = np.random.default_rng(seed).integers(-20, 21, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def test_paint_undo_redo_inpaint_compare_layout_download(browser, server, tmp_path):
    w, h = 320, 240
    img = noise_image(h, w, seed=11)
    Image.fromarray(img).save(tmp_path / "photo.png")
    p = Page(browser, server)
    try:
        p.expect(p.loc("#viewport")).to_have_attribute("data-ready", "1")
        p.open_image(tmp_path / "photo.png", w, h)
        p.page.keyboard.press("1")  # 100%: one screen pixel per image pixel
        p.expect(p.loc("#st-zoom")).to_have_text("100%")
        assert np.array_equal(p.view_pixels(w, h), img)

        # brush size with [ and ]
        p.page.keyboard.press("]")
        p.expect(p.loc("#brush-size-label")).to_have_text("48 px")
        p.page.keyboard.press("[")
        p.page.keyboard.press("[")
        p.expect(p.loc("#brush-size-label")).to_have_text("33 px")
        p.loc("#brush-size").evaluate("e => { e.value = 24; e.dispatchEvent(new Event('input')); }")
        p.expect(p.loc("#brush-size-label")).to_have_text("24 px")

        p0, p1, r = (60, 80), (230, 150), 12
        d = _capsule((h, w), p0, p1, r)
        p.stroke(p0, p1)
        painted = p.hole()
        assert abs(painted - (d <= 0).sum()) <= 0.05 * (d <= 0).sum()
        shown = p.view_pixels(w, h)
        assert (shown != img).any(-1)[d <= -2].all()           # the hole is shown (tinted) under the stroke
        assert np.array_equal(shown[d > 2], img[d > 2])       # and nowhere else

        # undo clears the stroke, redo brings it back
        p.page.keyboard.press("Control+z")
        p.expect(p.loc("#st-hole")).to_contain_text("(0 px)")
        assert np.array_equal(p.view_pixels(w, h), img)
        assert p.loc("#btn-run").is_disabled()
        p.page.keyboard.press("Control+Shift+z")
        p.expect(p.loc("#st-hole")).to_contain_text(f"({painted:,} px)")
        assert np.array_equal(p.view_pixels(w, h), shown)

        # inpaint
        p.page.keyboard.press("Enter")
        p.expect(p.loc("#st-msg")).to_contain_text("Inpainted", timeout=30000)
        p.expect(p.loc("#st-hole")).to_contain_text("(0 px)")  # the mask is consumed by the result
        result = p.view_pixels(w, h)
        changed = (result != img).any(-1)
        assert not changed[d > 1.5].any()                      # changed only under the stroke ...
        assert changed[d <= -1.5].mean() > 0.9                 # ... and the stroke was filled
        assert np.array_equal(p.download(), result)            # the download is what is shown

        # hold C (and the button) to compare with the image before
        p.page.keyboard.down("c")
        p.expect(p.loc("#compare-badge")).to_be_visible()
        assert np.array_equal(p.view_pixels(w, h), img)
        p.page.keyboard.up("c")
        p.expect(p.loc("#compare-badge")).to_be_hidden()
        assert np.array_equal(p.view_pixels(w, h), result)
        p.loc("#btn-compare").hover()
        p.page.mouse.down()
        p.expect(p.loc("#compare-badge")).to_be_visible()
        p.page.mouse.up()
        p.expect(p.loc("#compare-badge")).to_be_hidden()

        # the AN layout overlay of the fill
        p.page.keyboard.press("l")
        p.expect(p.loc("#chk-layout")).to_be_checked()
        assert not np.array_equal(p.view_pixels(w, h), result)
        p.page.keyboard.press("l")
        p.expect(p.loc("#chk-layout")).not_to_be_checked()
        assert np.array_equal(p.view_pixels(w, h), result)

        # undo the inpainting: the image before and its mask come back; redo restores the result
        p.page.keyboard.press("Control+z")
        p.expect(p.loc("#st-hole")).to_contain_text(f"({painted:,} px)")
        assert np.array_equal(p.view_pixels(w, h), shown)
        p.page.keyboard.press("Control+y")
        p.expect(p.loc("#st-hole")).to_contain_text("(0 px)")
        assert np.array_equal(p.view_pixels(w, h), result)

        # eraser: paint, then erase part of it
        p.page.keyboard.press("b")
        p.stroke((20, 20), (20, 200), steps=8)
        before = p.hole()
        p.page.keyboard.press("e")
        p.stroke((20, 100), (20, 200), steps=6)
        assert 0 < p.hole() < before
        p.loc("#btn-clear").click()
        p.expect(p.loc("#st-hole")).to_contain_text("(0 px)")

        # zoom with the wheel, fit with F
        p.page.mouse.move(*p.to_screen(160, 120))
        p.page.mouse.wheel(0, -300)
        p.expect(p.loc("#st-zoom")).not_to_have_text("100%")
        assert p.transform()[0] > 1
        p.page.keyboard.press("f")
        vw, vh = p.loc("#viewport").evaluate("e => [e.clientWidth, e.clientHeight]")
        fit = int(min((vw - 24) / w, (vh - 24) / h))  # small images are enlarged by whole factors
        assert fit >= 2
        p.expect(p.loc("#st-zoom")).to_have_text(f"{fit * 100}%")
    finally:
        p.close()


def test_mask_upload_drop_and_paste(browser, server, tmp_path):
    w, h = 96, 64
    img = _structured(h, w, seed=3)
    Image.fromarray(img).save(tmp_path / "a.png")
    mask = np.zeros((h, w), np.uint8)
    mask[10:30, 20:70] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(mask[:32]).save(tmp_path / "small_mask.png")
    p = Page(browser, server)
    try:
        p.expect(p.loc("#viewport")).to_have_attribute("data-ready", "1")
        data = base64.b64encode((tmp_path / "a.png").read_bytes()).decode()
        drop = """(el, b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'dropped.png', { type: 'image/png' }));
            el.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
        }"""
        p.loc("#viewport").evaluate(drop, data)
        p.expect(p.loc("#st-size")).to_contain_text(f"{w}×{h} · dropped")
        paste = drop.replace("dropped.png", "clip.png").replace(
            "new DragEvent('drop', { dataTransfer: dt,", "new ClipboardEvent('paste', { clipboardData: dt,")
        p.loc("body").evaluate(paste, data)
        p.expect(p.loc("#st-size")).to_contain_text(f"{w}×{h} · clip")

        p.loc("#file-mask").set_input_files(str(tmp_path / "small_mask.png"))
        p.expect(p.loc("#st-msg")).to_contain_text("mask is 96x32 but the image is 96x64")
        p.loc("#file-mask").set_input_files(str(tmp_path / "mask.png"))
        p.expect(p.loc("#st-hole")).to_contain_text(f"({20 * 50:,} px)")
        p.loc("#btn-run").click()
        p.expect(p.loc("#st-msg")).to_contain_text("Inpainted 1,000 px", timeout=30000)
        out = p.download()
        hole = mask >= 128
        assert np.array_equal(out[~hole], img[~hole]) and (out[hole] != img[hole]).any(-1).mean() > 0.9
        p.page.keyboard.press("Control+z")  # undo the result: the uploaded mask is back
        p.expect(p.loc("#st-hole")).to_contain_text("(1,000 px)")
        p.page.keyboard.press("Control+z")  # undo the upload
        p.expect(p.loc("#st-hole")).to_contain_text("(0 px)")
    finally:
        p.close()


def test_large_image_shows_progress_while_the_server_works(browser, tmp_path):
    """2048x2048: the page shows a progress state while the model runs (held by a gate here; the model
    is a fast stand-in, as this tests the page, not the network)."""
    gated = Gate(Negate())
    app = make_app(gan=False, inpainter=gated, limits=Limits(max_pixels=2048 * 2048))
    n = 2048
    img = _structured(n, n, seed=5)
    Image.fromarray(img).save(tmp_path / "big.png", compress_level=1)
    with running(app) as s:
        p = Page(browser, s)
        try:
            p.expect(p.loc("#viewport")).to_have_attribute("data-ready", "1")
            p.open_image(tmp_path / "big.png", n, n)
            p.loc("#brush-size").evaluate("e => { e.value = 120; e.dispatchEvent(new Event('input')); }")
            p0, p1 = (400, 500), (1500, 1300)
            p.stroke(p0, p1)
            p.page.keyboard.press("Enter")
            p.expect(p.loc("#busy")).to_be_visible()
            p.expect(p.loc("#busy-label")).to_contain_text("Inpainting", timeout=30000)
            assert gated.entered.is_set()
            p.expect(p.loc("#btn-run")).to_be_disabled()
            gated.gate.set()
            p.expect(p.loc("#st-msg")).to_contain_text("Inpainted", timeout=60000)
            p.expect(p.loc("#busy")).to_be_hidden()
            out = p.download()
            assert out.shape == (n, n, 3)
            d = _capsule((n, n), p0, p1, 60)
            changed = (out != img).any(-1)
            assert not changed[d > 3].any() and changed[d <= -3].all()
            hole = out[changed]
            assert np.array_equal(hole, 255 - img[changed])  # the stand-in's prediction, exactly
        finally:
            gated.gate.set()
            p.close()


def test_generate_page_grid_interpolation_layouts(browser, server):
    p = Page(browser, server, "/generate")
    try:
        p.expect(p.loc("body")).to_have_attribute("data-ready", "1")
        tiles = p.loc("#grid .tile")
        p.expect(tiles).to_have_count(3 * 8)          # 3 classes x 8 by default
        p.loc("#count").fill("4")
        p.loc("#seed").fill("5")
        p.loc("#btn-generate").click()
        p.expect(p.loc("#grid-caption")).to_contain_text("seed 5, 4 per class")
        p.expect(tiles).to_have_count(3 * 4)
        assert all(src.startswith("data:image/png") for src in
                   p.loc("#grid .tile img").evaluate_all("els => els.map(e => e.src)"))
        target = p.loc('#grid .tile[data-cls="2"][data-index="3"]')
        target.click()
        p.expect(target).to_have_class(re.compile("selected"))
        p.expect(p.loc("#layout-caption")).to_contain_text("class cross, sample 3 of seed 5")
        p.expect(p.loc("#layout-view figure")).to_have_count(3)  # sample, argmax, entity maps
        p.expect(p.loc("#interp-from")).to_have_value("2")
        p.expect(p.loc("#interp-frame")).to_have_attribute("src", re.compile("^data:image/png"))
        first = p.loc("#interp-frame").get_attribute("src")
        p.loc("#interp-t").focus()
        p.page.keyboard.press("End")
        p.expect(p.loc("#interp-label")).to_contain_text("t = 1.00")
        assert p.loc("#interp-frame").get_attribute("src") != first
        # the last frame is the "to" class with the selected z: the tile of that class, same index
        p.loc("#interp-to").select_option("0")
        p.expect(p.loc("#interp-label")).to_contain_text("× ring")
        p.loc("#trunc-on").check()
        p.expect(p.loc("#trunc-label")).to_have_text("1.00")
    finally:
        p.close()


def test_generate_page_without_a_gan_says_so(browser):
    with running(make_app(gan=False)) as s:
        p = Page(browser, s, "/generate")
        try:
            p.expect(p.loc("#gan-missing")).to_be_visible()
            p.expect(p.loc("#gan-missing-reason")).to_have_text("no GAN checkpoint (test)")
            p.expect(p.loc("#gan-ui")).to_be_hidden()
            p.expect(p.loc("#model-info")).to_have_text("no GAN loaded")
        finally:
            p.close()
