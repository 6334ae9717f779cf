"""inpaint_image: known pixels bit-identical, per-image masks, empty masks, errors; the command."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import attnorm.checkpoints as ck
from attnorm.checkpoints import (
    CHECKPOINT_FORMAT, load_inpaint_generator as load_generator, save_inpaint_generator as save_generator,
    save_inpaint_generator_safetensors as save_generator_safetensors,
)
from _cli import cli_error
from attnorm.cli import main
from attnorm.data.masks import save_mask
from attnorm.inference import inpaint_image
from attnorm.models.inpaint import InpaintGenerator
from attnorm.viz.grid import layout_palette


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


def test_checkpoint_and_command(tmp_path, capsys):
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
    argv = ["--checkpoint", tmp_path / "g.pt", "--image", tmp_path / "img.png", "--mask", tmp_path / "m.png",
            "--out", tmp_path / "out.png"]
    assert _run(*argv) == 0
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out[mask == 0], arr[mask == 0])  # known pixels survive the uint8 round trip
    Image.fromarray(arr[:20]).save(tmp_path / "small.png")
    argv[3] = tmp_path / "small.png"
    line = cli_error(capsys, ["inpaint", *map(str, argv)])  # size mismatch: a message, not a traceback
    assert "resize-mask" in line


# ---------------------------------------------------------------------------- formats, --layouts, shipped weights
def _run(*argv):
    return main(["inpaint", *map(str, argv)])


def _files(tmp_path, h=26, w=35, mask_values=None):
    arr = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "img.png")
    m = np.zeros((h, w), np.uint8)
    for (sl, v) in (mask_values or [((slice(4, 15), slice(6, 20)), 255)]):
        m[sl] = v
    Image.fromarray(m, mode="L").save(tmp_path / "m.png")
    return arr, m


def test_safetensors_and_training_checkpoint_formats(tmp_path):
    torch.manual_seed(0)
    g = InpaintGenerator(width=0.125, num_entities=4)
    save_generator_safetensors(tmp_path / "g.safetensors", g, meta={"step": 7})
    raw = (tmp_path / "g.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])  # independent parse of the safetensors layout
    assert header["__metadata__"]["format"] == "attnorm-inpaint-generator-v1"
    assert json.loads(header["__metadata__"]["config"]) == g.config
    k = "coarse_encoder.0.weight"
    b, e = header[k]["data_offsets"]
    w = np.frombuffer(raw[8 + n + b:8 + n + e], dtype="<f4").reshape(header[k]["shape"])
    np.testing.assert_array_equal(w, g.state_dict()[k].numpy())
    g2 = load_generator(tmp_path / "g.safetensors")
    assert g2.config == g.config and not g2.training
    assert all(torch.equal(v, g2.state_dict()[k]) for k, v in g.state_dict().items())
    # a train-inpaint checkpoint: EMA weights by default, G with use_ema=False
    other = InpaintGenerator(width=0.125, num_entities=4)
    state = {"format": CHECKPOINT_FORMAT, "step": 3, "modules": {"G": other.state_dict()},
             "ema": {"shadow": g.state_dict(), "num_updates": 3},
             "extra": {"task": "inpaint", "generator": dict(g.config)}}
    torch.save(state, tmp_path / "latest.pt")
    ge = load_generator(tmp_path / "latest.pt")
    assert all(torch.equal(v, ge.state_dict()[k]) for k, v in g.state_dict().items())
    gr = load_generator(tmp_path / "latest.pt", use_ema=False)
    assert all(torch.equal(v, gr.state_dict()[k]) for k, v in other.state_dict().items())
    state["extra"]["task"] = "gan"
    torch.save(state, tmp_path / "gan.pt")
    with pytest.raises(ValueError, match="not of train-inpaint"):
        load_generator(tmp_path / "gan.pt")


def test_layouts_threshold_and_known_pixels(tmp_path):
    torch.manual_seed(0)
    g = InpaintGenerator(width=0.125, num_entities=4).eval()
    save_generator(tmp_path / "g.pt", g)
    # grey 127 is known, grey 128 is a hole (>= 0.5)
    arr, m = _files(tmp_path, mask_values=[((slice(2, 12), slice(3, 15)), 128), ((slice(15, 22), slice(20, 30)), 127)])
    assert _run("--ckpt", tmp_path / "g.pt", "--image", tmp_path / "img.png", "--mask",
                tmp_path / "m.png", "--out", tmp_path / "out.png", "--layouts") == 0
    out = np.asarray(Image.open(tmp_path / "out.png"))
    hole = m >= 128
    np.testing.assert_array_equal(out[~hole], arr[~hole])  # bit-identical known pixels (127 included)
    x = torch.from_numpy(arr).permute(2, 0, 1).float()[None] / 127.5 - 1
    with torch.no_grad():
        _c, refined, layout = g(x, torch.from_numpy(hole).float()[None, None], return_layout=True)
    expect = ((refined[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    np.testing.assert_array_equal(out[hole], expect[hole])
    colour = np.asarray(Image.open(tmp_path / "out_layout.png"))
    assert colour.shape == arr.shape
    arg = layout[0].argmax(0).numpy()  # (ceil(H/4), ceil(W/4))
    ii, jj = np.meshgrid(np.arange(26) // 4, np.arange(35) // 4, indexing="ij")
    np.testing.assert_array_equal(colour, layout_palette(4)[arg[ii, jj]])
    ent = np.asarray(Image.open(tmp_path / "out_entities.png"))
    lh, lw = arg.shape
    tile1 = ent[2:2 + lh, 2 + lw + 2:2 + 2 * lw + 2, 0]  # entity 1: top row, second column
    np.testing.assert_array_equal(tile1, (layout[0, 1] * 255).round().to(torch.uint8).numpy())


def test_empty_mask_writes_input_and_errors(tmp_path, capsys):
    g = InpaintGenerator(width=0.125, num_entities=4)
    save_generator(tmp_path / "g.pt", g)
    arr, _ = _files(tmp_path, mask_values=[((slice(0, 5), slice(0, 5)), 100)])  # below 0.5: no hole
    assert _run("--ckpt", tmp_path / "g.pt", "--image", tmp_path / "img.png", "--mask",
                tmp_path / "m.png", "--out", tmp_path / "out.png", "--layouts") == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), arr)
    assert "no hole" in capsys.readouterr().out and not (tmp_path / "out_layout.png").exists()
    base = ["inpaint", "--image", str(tmp_path / "img.png"), "--mask", str(tmp_path / "m.png"),
            "--out", str(tmp_path / "o.png")]
    assert "not found" in cli_error(capsys, base + ["--ckpt", str(tmp_path / "missing.pt")])
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert "junk.pt is not a PyTorch checkpoint" in cli_error(capsys, base + ["--ckpt", str(tmp_path / "junk.pt")])
    g_sa = InpaintGenerator(width=0.125, attention="sa")
    save_generator(tmp_path / "sa.pt", g_sa)
    assert "needs an AN generator" in cli_error(capsys, base + ["--ckpt", str(tmp_path / "sa.pt"), "--layouts"])
    (tmp_path / "img.png").write_bytes(b"not an image")
    assert "img.png: not an image file Pillow can read" in cli_error(capsys, base + ["--ckpt", str(tmp_path / "g.pt")])


def test_default_checkpoint_is_the_shipped_weights(tmp_path, monkeypatch):
    from safetensors import safe_open
    shipped = ck.DEFAULT_INPAINT_WEIGHTS
    assert shipped.name == "inpaint_photos.safetensors" and shipped.is_file()  # committed with the package
    assert shipped.stat().st_size <= 10 * 10**6
    meta = ck.read_inpaint_generator_metadata(shipped)
    assert meta["config"]["attention"] == "an" and meta["meta"]["step"] > 0
    # the reference generator, built from the file by the safetensors package directly
    with safe_open(str(shipped), framework="pt") as f:
        ref = InpaintGenerator(**json.loads(f.metadata()["config"])).eval()
        ref.load_state_dict({k: f.get_tensor(k) for k in f.keys()})
    arr, m = _files(tmp_path)
    assert _run("--image", tmp_path / "img.png", "--mask", tmp_path / "m.png", "--out", tmp_path / "out.png") == 0
    out = np.asarray(Image.open(tmp_path / "out.png"))
    hole = m >= 128
    np.testing.assert_array_equal(out[~hole], arr[~hole])
    x = torch.from_numpy(arr).permute(2, 0, 1).float()[None] / 127.5 - 1
    with torch.no_grad():
        refined = ref(x, torch.from_numpy(hole).float()[None, None])[1]
    expect = ((refined[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    np.testing.assert_array_equal(out[hole], expect[hole])
    monkeypatch.setattr(ck, "DEFAULT_INPAINT_WEIGHTS", tmp_path / "gone.safetensors")
    with pytest.raises(FileNotFoundError, match="shipped weights are missing"):
        load_generator()
