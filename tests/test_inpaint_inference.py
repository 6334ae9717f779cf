"""inpaint_image: known pixels bit-identical, per-image masks, empty masks, errors; the command."""

import argparse

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from attnorm.data.masks import save_mask
from attnorm.inpaint_commands import (
    add_arguments, inpaint_image, load_generator, main_from_args, save_generator,
)
from attnorm.models.inpaint import InpaintGenerator


class Stub(nn.Module):
    """Predicts 0.25 * (sample index + 1) everywhere, records its calls and inputs."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, m):
        self.calls.append((x.clone(), m.clone(), self.training))
        val = 0.25 * torch.arange(1, x.shape[0] + 1, dtype=x.dtype).view(-1, 1, 1, 1)
        out = val.expand_as(x).clone()
        return out, out


def _image(b=2, h=37, w=53):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_known_pixels_bit_identical_and_hole_from_refined():
    g = InpaintGenerator(width=0.125).train()
    x = _image()
    m = torch.zeros(2, 1, 37, 53)
    m[0, :, 3:20, 5:25] = 1
    m[1, :, 20:, 30:] = 1
    y = inpaint_image(g, x, m)
    assert g.training  # mode restored
    keep = (m == 0).expand_as(x)
    assert torch.equal(y[keep], x[keep])
    g.eval()
    refined = g(x, m)[1]
    hole = ~keep
    assert torch.equal(y[hole], refined[hole])
    assert not torch.equal(y[hole], x[hole])


def test_mask_per_image_shared_mask_and_threshold():
    stub = Stub()
    x = _image(3, 8, 10)
    m = torch.zeros(3, 1, 8, 10)
    m[0, :, 0, 0] = 0.7  # soft values: >= 0.5 is a hole
    m[1, :, 1, 1] = 0.3
    m[2, :, 2:4, 2:4] = 1.0
    y = inpaint_image(stub, x, m)
    expected = x.clone()
    expected[0, :, 0, 0] = 0.25
    expected[2, :, 2:4, 2:4] = 0.75
    assert torch.equal(y, expected)
    seen_x, seen_m, training = stub.calls[-1]
    assert not training and set(seen_m.unique().tolist()) == {0.0, 1.0}
    # one (H, W) mask for the whole batch
    shared = torch.zeros(8, 10)
    shared[5, 6] = 1
    y2 = inpaint_image(stub, x, shared)
    assert torch.equal(y2[:, :, 5, 6], torch.tensor([[0.25] * 3, [0.5] * 3, [0.75] * 3]))
    assert torch.equal(y2[:, :, :5], x[:, :, :5])


def test_empty_mask_returns_input_and_single_image():
    stub = Stub()
    x = _image(1, 9, 11)[0]
    y = inpaint_image(stub, x, torch.full((1, 9, 11), 0.49))
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr() and not stub.calls
    m = torch.zeros(1, 9, 11)
    m[0, 4, 4] = 1
    y = inpaint_image(stub, x, m)
    assert y.shape == x.shape and y[:, 4, 4].eq(0.25).all()


def test_shape_errors():
    stub = Stub()
    with pytest.raises(ValueError, match="does not match image size"):
        inpaint_image(stub, _image(1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="one per image"):
        inpaint_image(stub, _image(3, 8, 8), torch.ones(2, 1, 8, 8))
    with pytest.raises(ValueError, match="image must be"):
        inpaint_image(stub, torch.zeros(4, 8, 8), torch.ones(8, 8))


def test_checkpoint_and_command(tmp_path):
    g = InpaintGenerator(width=0.125, num_entities=4)
    save_generator(tmp_path / "g.pt", g)
    g2 = load_generator(tmp_path / "g.pt")
    assert g2.config == g.config
    assert all(torch.equal(a, b) for a, b in zip(g.state_dict().values(), g2.state_dict().values()))
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (21, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "img.png")
    mask = np.zeros((21, 30), np.float32)
    mask[5:12, 8:20] = 1
    save_mask(tmp_path / "m.png", mask)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--checkpoint", str(tmp_path / "g.pt"), "--image", str(tmp_path / "img.png"),
                              "--mask", str(tmp_path / "m.png"), "--out", str(tmp_path / "out.png")])
    assert main_from_args(args) == 0
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out[mask == 0], arr[mask == 0])  # known pixels survive the uint8 round trip
    Image.fromarray(arr[:20]).save(tmp_path / "small.png")
    args.image = str(tmp_path / "small.png")
    with pytest.raises(ValueError, match="resize-mask"):
        main_from_args(args)
