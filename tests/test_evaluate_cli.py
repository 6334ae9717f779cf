"""`attnorm evaluate gan|inpaint`: JSON with protocol fields, values equal to the API / maths, errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from attnorm import cli
from attnorm.data.procedural import ProceduralShapes
from attnorm.evaluate_gan import evaluate_gan
from attnorm.metrics import maths
from attnorm.metrics.extractors import get_extractor
from attnorm.training.gan import load_generator

pytestmark = pytest.mark.filterwarnings("ignore:FID with .* samples < feature dim")



@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert cli.main(["train-gan", "--out", str(out), "--steps", "1", "--batch-size", "4", "--seed", "2", "ch=8",
                     "procedural_classes=3", "procedural_length=64", "log_every=1", "samples_per_class=2"]) == 0
    return str(out / "checkpoints" / "latest.pt")


def test_evaluate_gan_command(ckpt, tmp_path, capsys):
    out = tmp_path / "res.json"
    assert cli.main(["evaluate", "gan", "--ckpt", ckpt, "--metrics", "fid,kid,is,acc", "--n", "30",
                     "--batch-size", "16", "--is-splits", "3", "--kid-subsets", "3", "--kid-subset-size", "20",
                     "--seed", "5", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    text = capsys.readouterr().out
    assert "generated + extracted 30/30" in text and "fid" in text and f"wrote {out}" in text
    res = json.loads(out.read_text())
    clf = get_extractor("classifier")
    for name in ("fid", "kid", "is", "acc"):
        p = res["metrics"][name]["protocol"]
        assert p["weights_sha256"] == clf.protocol["weights_sha256"] and p["n_fake"] == 30 and p["seed"] == 5
        assert p["resize_method"] == clf.protocol["resize_method"]
    for name in ("fid", "kid"):
        p = res["metrics"][name]["protocol"]
        assert p["extractor"] == "classifier" and p["n_real"] == 30
        assert p["reference_split"] == "procedural(classes=3, seed=2), images [0, 30)"
    assert res["protocol"]["generator"]["checkpoint"] == ckpt and res["protocol"]["generator"]["weights"] == "ema"
    # the same call through the API gives the same numbers
    api = evaluate_gan(checkpoint=ckpt, metrics="fid,kid,is,acc", n=30, batch_size=16, is_splits=3, kid_subsets=3,
                       kid_subset_size=20, seed=5, cache_dir=tmp_path / "cache", print_fn=None)
    assert api["metrics"] == res["metrics"]
    # and FID equals the maths on independently extracted features
    g, _ = load_generator(ckpt)
    gen = torch.Generator().manual_seed(5)
    xs = []
    for s in range(0, 30, 16):
        y = torch.arange(s, min(s + 16, 30)) % 3
        with torch.no_grad():
            xs.append(g(torch.randn(len(y), g.z_dim, generator=gen), y))
    fake = clf.features(torch.cat(xs))
    real = clf.features(ProceduralShapes(32, 3, seed=2).get_batch(range(30))[0])
    expected = maths.frechet_distance(*maths.feature_statistics(real), *maths.feature_statistics(fake))
    assert res["metrics"]["fid"]["value"] == pytest.approx(expected, rel=1e-6)


def test_evaluate_gan_command_errors(ckpt, tmp_path):
    base = ["evaluate", "gan", "--n", "10", "--cache-dir", str(tmp_path), "--quiet"]
    with pytest.raises(SystemExit, match="checkpoint .* not found"):
        cli.main(base + ["--ckpt", str(tmp_path / "missing.pt")])
    with pytest.raises(SystemExit, match="unknown metric"):
        cli.main(base + ["--ckpt", ckpt, "--metrics", "fid,fud"])
    with pytest.raises(SystemExit, match="IS with 10 splits"):
        cli.main(base[:3] + ["4", "--ckpt", ckpt, "--metrics", "is"] + base[4:])
    # inception: IS is refused (no logits), or the weights are missing; either way a clear error
    with pytest.raises(SystemExit, match="inception logits unavailable|Inception weights"):
        cli.main(base + ["--ckpt", ckpt, "--metrics", "is", "--extractor", "inception"])
    with pytest.raises(SystemExit, match="given explicitly"):
        cli.main(base + ["--ckpt", ckpt, "--metrics", "fid", "--extractor", "inception",
                         "--inception", str(tmp_path / "nope.pt")])
    with pytest.raises(SystemExit):  # a target is required
        cli.main(["evaluate"])


def test_evaluate_inpaint_delegates(tmp_path, capsys):
    from attnorm.data.masks import write_eval_masks
    (tmp_path / "data").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "data" / f"{i}.png")
    write_eval_masks(tmp_path / "m", 2, 32, "box", seed=1)
    args = ["--method", "biharmonic", "--data", str(tmp_path / "data"), "--masks", str(tmp_path / "m"),
            "--size", "32", "--quiet"]
    assert cli.main(["evaluate", "inpaint", *args, "--out", str(tmp_path / "a")]) == 0
    assert cli.main(["evaluate-inpaint", *args, "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    drop = lambda d: {k: v for k, v in d.items() if k != "seconds"}  # noqa: E731
    assert a["num_pairs"] == 2 and drop(a["total"]) == drop(b["total"]) and a["total"]["psnr"] > 0
