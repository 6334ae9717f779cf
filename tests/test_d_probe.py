"""The discriminator class probe against a numpy reference, and loading D from a checkpoint."""

import numpy as np
import pytest
import torch

from attnorm.checkpoints import load_checkpoint, load_gan_discriminator
from attnorm.errors import CheckpointError
from attnorm.evaluation.gan import discriminator_class_probe
from attnorm.models.gan import Discriminator


class _PixelD(torch.nn.Module):
    """logit(x, y) = x.flat[y]: the probe's logit matrix is the images' first C pixels."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))
        self.label_batches = []

    def forward(self, x, y):
        self.label_batches.append(y.clone())
        return x.flatten(1).gather(1, y[:, None]).squeeze(1) + self.p


def test_probe_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    C, N = 5, 37
    x = torch.tensor(rng.normal(size=(N, 1, 3, 3)))
    y = torch.tensor(rng.integers(0, C, N))
    D = _PixelD().double()
    res = discriminator_class_probe(D, x, y, C, batch_size=16)
    L = x.flatten(1)[:, :C].numpy()
    yy = y.numpy()
    own = L[np.arange(N), yy]
    wrong = np.ones_like(L, bool)
    wrong[np.arange(N), yy] = False
    assert res["label_accuracy"] == pytest.approx(np.mean(L.argmax(1) == yy))
    assert res["pairwise"] == pytest.approx(np.mean((own[:, None] > L)[wrong]))
    assert res["margin"] == pytest.approx(np.mean(own - (L * wrong).sum(1) / (C - 1)))
    assert 0.1 < res["label_accuracy"] < 0.5 and res["n"] == N  # not a degenerate case
    # every batch D saw kept mixed labels (the real batch's labels shifted), never one label for all
    assert all(len(set(b.tolist())) > 1 for b in D.label_batches)


def test_probe_of_a_d_that_reads_the_label_off_the_image():
    C, N = 4, 40
    y = torch.arange(N) % C
    x = torch.full((N, 1, 2, 2), -1.0)
    x.view(N, -1)[torch.arange(N), y] = 1.0  # pixel y is lit: D(x, y) = 1, D(x, other) = -1
    res = discriminator_class_probe(_PixelD(), x, y, C)
    assert res["label_accuracy"] == 1.0 and res["pairwise"] == 1.0 and res["margin"] == pytest.approx(2.0)


def test_load_gan_discriminator_rebuilds_the_trained_d(gan_ckpt, tmp_path):
    D, extra = load_gan_discriminator(gan_ckpt)
    state = load_checkpoint(gan_ckpt)
    assert isinstance(D, Discriminator) and not D.training
    for k, v in state["modules"]["D"].items():
        assert torch.equal(D.state_dict()[k], v)
    with pytest.raises(CheckpointError, match="is a .safetensors weights file, not a training checkpoint"):
        from attnorm.checkpoints import export_gan_generator
        load_gan_discriminator(export_gan_generator(gan_ckpt, tmp_path / "g.safetensors"))


def test_load_gan_discriminator_rebuilds_a_conv_d(tmp_path):
    """A run of the demo's light D (d_arch conv) loads as that class, with its trained weights."""
    from attnorm import cli
    from attnorm.models.gan import ConvDiscriminator
    out = tmp_path / "conv"
    assert cli.main(["train-gan", "--out", str(out), "--steps", "1", "--batch-size", "4", "ch=8", "d_arch=conv",
                     "d_ch=8", "procedural_classes=3", "procedural_length=16", "log_every=1", "samples_per_class=1"]) == 0
    ckpt = out / "checkpoints" / "latest.pt"
    D, extra = load_gan_discriminator(ckpt)
    assert isinstance(D, ConvDiscriminator) and not D.training and extra["config"]["d_arch"] == "conv"
    for k, v in load_checkpoint(ckpt)["modules"]["D"].items():
        assert torch.equal(D.state_dict()[k], v)


def _probe_script():
    from _scripts import load_benchmark
    return load_benchmark("gan_d_probe")


def test_probe_script_writes_what_the_probe_measures(gan_ckpt, tmp_path, capsys):
    import json

    from attnorm.data.procedural import ProceduralShapes
    script = _probe_script()
    assert script.main([str(gan_ckpt), "--n", "9", "--data-seed", "5", "--out", str(tmp_path / "p")]) == 0
    row = json.loads((tmp_path / "p" / "results.json").read_text())["results"][0]
    D, extra = load_gan_discriminator(gan_ckpt)
    ds = ProceduralShapes(resolution=32, num_classes=3, length=9, seed=5)
    x = torch.stack([torch.as_tensor(ds[i][0]) for i in range(9)])
    want = discriminator_class_probe(D, x, torch.tensor([ds.label(i) for i in range(9)]), 3)
    assert row["step"] == load_checkpoint(gan_ckpt)["step"] and row["num_classes"] == 3
    for k in ("label_accuracy", "pairwise", "margin"):
        assert row[k] == pytest.approx(want[k], abs=1e-12)
    assert f"| {row['step']} | {row['label_accuracy']:.3f} |" in (tmp_path / "p" / "results.md").read_text()
    # bad input: one line and exit status 2, no traceback
    assert script.main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "q")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("gan_d_probe: checkpoint")
