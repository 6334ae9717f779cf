"""Pull-push hole fill, the residual ("pushpull") generator, hole-area-binned masks, photo augmentation."""

import numpy as np
import pytest
import torch

from attnorm.data.masks import AREA_BIN_LABELS, MaskGenerator, area_bin, binned_mask
from attnorm.data.photos import augment_image, random_crop, to_tensor
from attnorm.models.inpaint import InpaintGenerator, pushpull_fill


def _hole(h, w, box):
    m = torch.zeros(1, 1, h, w)
    t, l, b, r = box
    m[..., t:b, l:r] = 1
    return m


@pytest.mark.parametrize("size", [(37, 50), (64, 64), (5, 3)])
def test_pushpull_keeps_known_pixels_and_fills_flat_colour_exactly(size):
    h, w = size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, h, w, generator=g) * 2 - 1
    m = _hole(h, w, (h // 4, w // 4, max(h // 4 + 1, 3 * h // 4), max(w // 4 + 1, 3 * w // 4)))
    y = pushpull_fill(x, m)
    known = (m < 0.5).expand_as(x)
    assert torch.equal(y[known], x[known])
    # values are means of known pixels: inside the known range per image and channel
    for i in range(2):
        for c in range(3):
            kv = x[i, c][known[i, c]]
            assert kv.min() - 1e-6 <= y[i, c].min() and y[i, c].max() <= kv.max() + 1e-6
    flat = torch.tensor([0.2, -0.45, 0.7]).view(1, 3, 1, 1).expand(1, 3, h, w)
    assert torch.allclose(pushpull_fill(flat, m), flat, atol=1e-6)


def test_pushpull_fills_a_smooth_ramp_close_to_the_ramp():
    h = w = 64
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    ramp = torch.stack([xx, yy, 0.5 * (xx + yy)])[None]  # (1, 3, 64, 64)
    m = _hole(h, w, (24, 24, 40, 40))
    err = (pushpull_fill(ramp, m) - ramp).abs()[(m > 0.5).expand_as(ramp)]
    zero_err = ramp.abs()[(m > 0.5).expand_as(ramp)]
    assert err.mean() < 0.05 and err.mean() < 0.2 * zero_err.mean()


def test_pushpull_generator_starts_near_the_fill_and_keeps_its_config():
    torch.manual_seed(0)
    g = InpaintGenerator(width=0.25, hole_fill="pushpull").eval()
    assert g.config["hole_fill"] == "pushpull"
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 50), torch.linspace(-1, 1, 70), indexing="ij")
    x = torch.stack([0.6 * xx, 0.3 * yy + 0.4, 0.5 * xx * yy - 0.5])[None]  # a smooth colour image
    m = _hole(50, 70, (10, 20, 30, 50))
    coarse, refined = g(x, m)
    fill = pushpull_fill(x, m)
    hole = (m > 0.5).expand_as(x)
    zero = InpaintGenerator(width=0.25).eval()(x, m)[1]  # the paper's zero-fill G at initialisation
    err_pp, err_zero = (refined - x)[hole].abs().mean(), (zero - x)[hole].abs().mean()
    assert (refined - fill)[hole].abs().max() < 0.05 and err_pp < 0.6 * err_zero
    # a flat colour (the dark teal) stays that colour to within 2 levels of 255
    teal = (torch.tensor([20.0, 70.0, 80.0]) / 127.5 - 1).view(1, 3, 1, 1).expand(1, 3, 50, 70)
    _, r = g(teal, m)
    assert ((r - teal)[hole].abs().max() * 127.5) < 2.0
    # rebuild from the config, and the paper's zero fill has no key
    assert InpaintGenerator(**g.config).hole_fill == "pushpull"
    assert "hole_fill" not in InpaintGenerator(width=0.25).config
    with pytest.raises(ValueError, match="hole_fill"):
        InpaintGenerator(width=0.25, hole_fill="mean")


def test_pushpull_generator_learns_a_residual():
    """The whole network gets gradients from the start (the last convs are small, not zero)."""
    torch.manual_seed(0)
    g = InpaintGenerator(width=0.25, hole_fill="pushpull")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    m = _hole(32, 32, (8, 8, 24, 24))
    _, r = g(x, m)
    (r - x).abs().mean().backward()
    assert g.refine_decoder[-2].weight.grad.abs().sum() > 0
    assert g.coarse_decoder[-2].weight.grad.abs().sum() > 0
    assert g.refine_encoder[0].weight.grad.abs().sum() > 1e-6 and g.attn_encoder[0].weight.grad.abs().sum() > 1e-6


@pytest.mark.parametrize("k", range(5))
def test_binned_mask_lands_in_its_bin(k):
    for i in range(4):
        m = binned_mask(64, k, np.random.default_rng(i))
        assert area_bin(m) == k and m.sum() > 0


def test_binned_mask_generator_is_balanced_and_deterministic():
    gen = MaskGenerator("binned", 48, seed=3)
    bins = [area_bin(gen(i)) for i in range(10)]
    assert bins == [i % 5 for i in range(10)]
    assert torch.equal(gen(7), MaskGenerator("binned", 48, seed=3)(7))
    assert not torch.equal(gen(7), MaskGenerator("binned", 48, seed=4)(7))
    assert AREA_BIN_LABELS[4] == "40-50%"


def _photo():
    from PIL import Image
    rng = np.random.default_rng(0)
    arr = (rng.random((90, 120, 3)) * 255).astype(np.uint8)
    return Image.fromarray(arr)


def test_augment_without_options_is_the_plain_random_crop():
    img = _photo()
    a = augment_image(img, 32, np.random.default_rng(5), (1.0, 2.0))
    b = to_tensor(random_crop(img, 32, np.random.default_rng(5), (1.0, 2.0)))
    assert torch.equal(a, b)


def test_hue_rotation_keeps_luma_and_changes_chroma():
    img = _photo()
    plain = augment_image(img, 32, np.random.default_rng(5), (1.0, 2.0))
    hued = augment_image(img, 32, np.random.default_rng(5), (1.0, 2.0), hue=90)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    y0, y1 = ((plain + 1) / 2 * luma).sum(0), ((hued + 1) / 2 * luma).sum(0)
    inside = ((hued > -0.99) & (hued < 0.99)).all(0) & ((plain > -0.99) & (plain < 0.99)).all(0)  # not clipped
    assert torch.allclose(y0[inside], y1[inside], atol=1e-4)
    assert (plain - hued).abs().mean() > 0.01


def test_smoothed_fill_is_the_harmonic_interpolant():
    """With Jacobi sweeps the fill solves Laplace's equation in the hole: a linear ramp (harmonic) is
    reproduced, and a random boundary gives what thousands of plain Jacobi sweeps converge to."""
    h = w = 48
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64), torch.linspace(-1, 1, w,
                            dtype=torch.float64), indexing="ij")
    ramp = torch.stack([xx, 0.5 * yy, 0.3 * xx - 0.6 * yy])[None]
    m = _hole(h, w, (10, 12, 36, 40))
    hole = (m > 0.5).expand_as(ramp)
    assert (pushpull_fill(ramp, m, smooth=64) - ramp)[hole].abs().max() < 2e-3
    assert (pushpull_fill(ramp, m) - ramp)[hole].abs().max() > 5 * (pushpull_fill(ramp, m, smooth=64) - ramp)[hole].abs().max()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 24, 24, generator=g, dtype=torch.float64)
    m2 = _hole(24, 24, (5, 6, 19, 20))
    known = (m2 < 0.5).double()
    ref = x * known  # independent reference: plain Jacobi from zero, run to convergence
    k = torch.tensor([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]], dtype=torch.float64)[None, None]
    for _ in range(4000):
        nb = torch.nn.functional.conv2d(torch.nn.functional.pad(ref, (1, 1, 1, 1), mode="replicate"), k)
        ref = x * known + nb * (1 - known)
    err64 = (pushpull_fill(x, m2, smooth=64) - ref).abs().max()
    assert err64 < 5e-3 and err64 < 0.1 * (pushpull_fill(x, m2) - ref).abs().max()


def test_harmonic_generator_starts_near_its_fill():
    torch.manual_seed(0)
    g = InpaintGenerator(width=0.25, hole_fill="harmonic").eval()
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 40), torch.linspace(-1, 1, 44), indexing="ij")
    x = torch.stack([0.6 * xx, 0.3 * yy + 0.4, 0.5 * xx * yy - 0.5])[None]
    m = _hole(40, 44, (8, 8, 30, 30))
    _, r = g(x, m)
    hole = (m > 0.5).expand_as(x)
    assert (r - pushpull_fill(x, m, smooth=64))[hole].abs().max() < 0.05
    assert InpaintGenerator(**g.config).hole_fill == "harmonic"


def test_shipped_weights_keep_flat_colours():
    """The issue-9 symptom: the first shipped inpainter filled a flat dark teal (20, 70, 80) with
    about (11, 18, 18). The shipped weights must keep every flat colour within 2 levels."""
    from attnorm.checkpoints import load_inpaint_generator
    from attnorm.inference import inpaint_image
    g = load_inpaint_generator()
    m = _hole(96, 96, (30, 30, 70, 70))
    for col in [(20, 70, 80), (200, 60, 40), (240, 240, 240), (10, 10, 10)]:
        x = (torch.tensor(col, dtype=torch.float32) / 127.5 - 1).view(3, 1, 1).expand(3, 96, 96).clone()
        out = inpaint_image(g, x, m[0])
        fill = ((out[:, 30:70, 30:70] + 1) * 127.5).mean((1, 2))
        assert (fill - torch.tensor(col, dtype=torch.float32)).abs().max() <= 2.0, (col, fill.tolist())
