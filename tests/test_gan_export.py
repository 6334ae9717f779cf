"""export-gan: a train-gan checkpoint's (EMA) generator as .safetensors, loaded back bit-exactly, and the
shipped default weights used when --ckpt is omitted."""

import json

import pytest
import torch
from safetensors import safe_open

from attnorm.checkpoints import (DEFAULT_GAN_WEIGHTS, GAN_SAFETENSORS_FORMAT, export_gan_generator,
                                 load_gan_generator)
from attnorm.cli import main


def test_export_round_trip_gives_the_same_images(gan_ckpt, tmp_path):
    out = export_gan_generator(gan_ckpt, tmp_path / "g.safetensors")
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == GAN_SAFETENSORS_FORMAT
    g_ck, extra_ck = load_gan_generator(gan_ckpt)
    g_st, extra_st = load_gan_generator(out)
    assert json.loads(meta["config"]) == g_ck.get_config() and extra_st["classes"] == extra_ck["classes"]
    assert extra_st["meta"]["ema"] is True and extra_st["config"]["seed"] == extra_ck["config"]["seed"]
    z = torch.randn(6, g_ck.z_dim, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % g_ck.num_classes
    with torch.no_grad():
        assert torch.equal(g_ck(z, y), g_st(z, y))
    # the raw (non-EMA) export holds the trained weights and says so
    raw = export_gan_generator(gan_ckpt, tmp_path / "raw.safetensors", use_ema=False)
    g_raw, extra_raw = load_gan_generator(raw)
    assert extra_raw["meta"]["ema"] is False
    g_ck_raw, _ = load_gan_generator(gan_ckpt, use_ema=False)
    with torch.no_grad():
        assert torch.equal(g_raw(z, y), g_ck_raw(z, y))


def test_sample_reads_an_export_and_refuses_other_files(gan_ckpt, tmp_path, capsys):
    out = export_gan_generator(gan_ckpt, tmp_path / "g.safetensors")
    assert main(["sample", "--ckpt", str(out), "--n", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert main(["sample", "--ckpt", str(bad), "--n", "2", "--out", str(tmp_path / "t.png")]) == 2
    assert not (tmp_path / "t.png").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.safetensors is not a readable safetensors file" in err[0]


def test_default_weights_are_used_without_ckpt(tmp_path, monkeypatch, gan_ckpt):
    import attnorm.checkpoints as ck
    shipped = export_gan_generator(gan_ckpt, tmp_path / "shipped.safetensors")
    monkeypatch.setattr(ck, "DEFAULT_GAN_WEIGHTS", shipped)
    g_default, _ = load_gan_generator()
    g_file, _ = load_gan_generator(shipped)
    assert all(torch.equal(a, b) for a, b in zip(g_default.state_dict().values(), g_file.state_dict().values()))
    assert main(["sample", "--n", "1", "--out", str(tmp_path / "d.png")]) == 0
    monkeypatch.setattr(ck, "DEFAULT_GAN_WEIGHTS", tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="shipped GAN weights"):
        load_gan_generator()
    assert DEFAULT_GAN_WEIGHTS.name == "gan_procedural32.safetensors"


def test_shipped_weights_draw_the_asked_class():
    """The shipped G, judged by the shipped procedural-shapes classifier (independent of G and D):
    20 samples per class, accuracy well above chance (0.1) and above the previous file's 0.77."""
    from attnorm.inference import sample_images
    from attnorm.metrics.classifier import classifier_accuracy
    g, extra = load_gan_generator()
    classes = list(range(len(extra["classes"])))
    x, y = sample_images(g, classes, 20, seed=123)
    assert len(classes) == 10 and x.shape == (200, 3, 32, 32)
    assert classifier_accuracy(x, y) >= 0.85
