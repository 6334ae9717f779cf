"""`attnorm evaluate gan|inpaint`: JSON with protocol fields, values equal to the API / maths, errors."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from _cli import cli_error
from attnorm import cli
from attnorm.checkpoints import load_gan_generator as load_generator
from attnorm.data.procedural import ProceduralShapes
from attnorm.evaluation.gan import evaluate_gan
from attnorm.metrics import maths
from attnorm.metrics.extractors import get_extractor


@pytest.fixture
def ckpt(gan_ckpt):
    """The shared tiny train-gan run (3 procedural classes, dataset seed 1)."""
    return str(gan_ckpt)


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
        assert p["reference_split"] == "procedural(classes=3, seed=1), images [0, 30)"
    assert res["protocol"]["generator"]["checkpoint"] == ckpt and res["protocol"]["generator"]["weights"] == "ema"
    # the same call through the API gives the same numbers
    api = evaluate_gan(checkpoint=ckpt, metrics="fid,kid,is,acc", n=30, batch_size=16, is_splits=3, kid_subsets=3,
                       kid_subset_size=20, seed=5, cache_dir=tmp_path / "cache", floor=True)
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
    real = clf.features(ProceduralShapes(32, 3, seed=1).get_batch(range(30))[0])
    expected = maths.frechet_distance(*maths.feature_statistics(real), *maths.feature_statistics(fake))
    assert res["metrics"]["fid"]["value"] == pytest.approx(expected, rel=1e-6)


def test_evaluate_gan_command_draws(ckpt, tmp_path, capsys):
    """--draws 2: the JSON equals the API's with draws=2, the summary prints each spread and the seeds."""
    out = tmp_path / "res.json"
    args = ["evaluate", "gan", "--ckpt", ckpt, "--metrics", "fid,pr", "--n", "30", "--seed", "2", "--draws", "2",
            "--no-floor", "--quiet", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    res = json.loads(out.read_text())
    api = evaluate_gan(checkpoint=ckpt, metrics="fid,pr", n=30, seed=2, draws=2, cache_dir=tmp_path / "cache")
    assert res["metrics"]["fid"]["value"] == pytest.approx(api["metrics"]["fid"]["value"])
    sd = res["metrics"]["pr"]["over_draws"]["recall"]["std"]
    assert f"recall {res['metrics']['pr']['recall']:.4f} (sd {sd:.4f})" in text
    assert "means over 2 draws, seeds 2-3" in text
    assert "--draws" in cli_error(capsys, ["evaluate", "gan", "--ckpt", ckpt, "--draws", "0"])


def test_evaluate_gan_command_errors(ckpt, tmp_path, capsys):
    base = ["evaluate", "gan", "--n", "10", "--cache-dir", str(tmp_path), "--quiet"]
    assert re.search("checkpoint .* not found", cli_error(capsys, base + ["--ckpt", str(tmp_path / "missing.pt")]))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert "could not load" in cli_error(capsys, base + ["--ckpt", str(tmp_path / "junk.pt")])
    assert "unknown metric" in cli_error(capsys, base + ["--ckpt", ckpt, "--metrics", "fid,fud"])
    assert "IS with 10 splits" in cli_error(capsys, base[:3] + ["4", "--ckpt", ckpt, "--metrics", "is"] + base[4:])
    # inception: IS is refused (no logits), or the weights are missing; either way a clear error
    line = cli_error(capsys, base + ["--ckpt", ckpt, "--metrics", "is", "--extractor", "inception"])
    assert re.search("inception logits unavailable|Inception weights", line)
    assert "given explicitly" in cli_error(capsys, base + ["--ckpt", ckpt, "--metrics", "fid", "--extractor",
                                                           "inception", "--inception", str(tmp_path / "nope.pt")])
    assert "the following arguments are required" in cli_error(capsys, ["evaluate"])  # a target is required


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
