"""export-gan: a train-gan checkpoint's (EMA) generator as .safetensors, loaded back bit-exactly, and the
shipped default weights used when --ckpt is omitted."""

import copy
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
    assert DEFAULT_GAN_WEIGHTS.name == "gan_centred16.safetensors"


def test_shipped_weights_draw_the_asked_class():
    """The shipped G, judged by the shipped procedural-shapes classifier (independent of G and D):
    20 samples per class, accuracy well above chance (0.1) and above an earlier file's 0.77."""
    from attnorm.inference import sample_images
    from attnorm.metrics.classifier import classifier_accuracy
    g, extra = load_gan_generator()
    classes = list(range(len(extra["classes"])))
    x, y = sample_images(g, classes, 20, seed=123)
    assert len(classes) == 10 and x.shape == (200, 3, 32, 32)
    assert classifier_accuracy(x, y) >= 0.85
    # the file is what the README says: the EMA G with standing statistics over 200 batches
    assert extra["meta"]["ema"] is True and extra["meta"]["standing_stats"]["batches"] == 200


def _standing_reference(g, batches, batch_size, seed):
    """Per BN: the average over the batches of the batch mean and the unbiased batch variance of its
    input, collected with forward hooks while the batch norms normalise with batch statistics."""
    import torch.nn as nn
    bns = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    seen = {id(m): [] for m in bns}
    hooks = [m.register_forward_hook(lambda m, inp, out: seen[id(m)].append(inp[0].double())) for m in bns]
    for m in bns:
        m.train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(batches):
            z = torch.randn(batch_size, g.z_dim, generator=gen)
            y = torch.randint(g.num_classes, (batch_size,), generator=gen)
            g(z, y)
    for h in hooks:
        h.remove()
    means = [torch.stack([x.mean((0, 2, 3)) for x in seen[id(m)]]).mean(0) for m in bns]
    vars_ = [torch.stack([x.var((0, 2, 3), unbiased=True) for x in seen[id(m)]]).mean(0) for m in bns]
    return means, vars_


def test_standing_statistics_are_the_average_batch_statistics(gan_ckpt):
    import copy

    import torch.nn as nn

    from attnorm.models.gan import standing_statistics
    g, _ = load_gan_generator(gan_ckpt)
    ref_means, ref_vars = _standing_reference(copy.deepcopy(g), batches=4, batch_size=6, seed=3)
    params = {k: v.clone() for k, v in g.named_parameters()}
    out = standing_statistics(g, batches=4, batch_size=6, seed=3)
    bns = [m for m in out.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == len(ref_means) >= 2
    for m, mu, var in zip(bns, ref_means, ref_vars):
        torch.testing.assert_close(m.running_mean.double(), mu, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.running_var.double(), var, rtol=1e-5, atol=1e-6)
        assert m.momentum == 0.1 and not m.training and int(m.num_batches_tracked) == 4
    assert not out.training
    assert all(torch.equal(v, params[k]) for k, v in out.named_parameters())


def test_export_with_standing_statistics_records_them(gan_ckpt, tmp_path, capsys):
    plain = export_gan_generator(gan_ckpt, tmp_path / "plain.safetensors")
    assert main(["export-gan", str(gan_ckpt), str(tmp_path / "st.safetensors"), "--standing-stats", "3"]) == 0
    g_plain, extra_plain = load_gan_generator(plain)
    g_st, extra_st = load_gan_generator(tmp_path / "st.safetensors")
    assert extra_plain["meta"]["standing_stats"] is None
    # the batches are of the run's training batch size (gan_run trains at batch 4)
    assert extra_st["meta"]["train_config"]["batch_size"] == 4
    assert extra_st["meta"]["standing_stats"] == {"batches": 3, "batch_size": 4, "seed": 0}
    from attnorm.models.gan import standing_statistics
    expect = standing_statistics(copy.deepcopy(g_plain), batches=3, batch_size=4, seed=0).state_dict()
    got = g_st.state_dict()
    assert all(torch.equal(got[k], expect[k]) for k in expect)
    before = load_gan_generator(plain)[0].state_dict()
    assert any(not torch.equal(got[k], before[k]) for k in got if k.endswith("running_mean"))
    other = standing_statistics(g_plain, batches=3, batch_size=16, seed=0).state_dict()
    assert any(not torch.equal(got[k], other[k]) for k in got if k.endswith("running_var"))
    assert main(["export-gan", str(gan_ckpt), str(tmp_path / "b16.safetensors"), "--standing-stats", "3",
                 "--standing-batch-size", "16"]) == 0
    g16, extra16 = load_gan_generator(tmp_path / "b16.safetensors")
    assert extra16["meta"]["standing_stats"]["batch_size"] == 16
    assert all(torch.equal(g16.state_dict()[k], other[k]) for k in other)
    assert main(["export-gan", str(gan_ckpt), str(tmp_path / "x.safetensors"), "--standing-stats", "-1"]) == 2
