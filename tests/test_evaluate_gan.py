"""evaluate_gan: every number equals the maths on independently recomputed features; protocol; errors."""

import json
import logging
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from attnorm.data.procedural import ProceduralShapes
from attnorm.checkpoints import load_gan_generator as load_generator
from attnorm.evaluation.gan import EvaluationError, evaluate_gan, parse_metrics
from attnorm.metrics import maths
from attnorm.metrics.extractors import FeatureExtractor, LogitsUnavailableError, get_extractor

N, SPLITS = 60, 3



@pytest.fixture
def ckpt(gan_ckpt):
    """The shared tiny train-gan run (3 procedural classes, dataset seed 1)."""
    return gan_ckpt


@pytest.fixture(scope="module")
def clf():
    return get_extractor("classifier")


def scipy_fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_all_metrics_equal_the_maths(ckpt, clf, tmp_path):
    res = evaluate_gan(checkpoint=ckpt, n=N, batch_size=25, seed=3, is_splits=SPLITS, kid_subsets=4,
                       kid_subset_size=50, cache_dir=tmp_path / "cache", out=tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(res))
    # independent recomputation of the protocol: EMA G, z from manual_seed(3) batch by batch, labels i % 3
    g, extra = load_generator(ckpt)
    gen = torch.Generator().manual_seed(3)
    xs, ys = [], []
    for s in range(0, N, 25):
        y = torch.arange(s, min(s + 25, N)) % 3
        with torch.no_grad():
            xs.append(g(torch.randn(len(y), g.z_dim, generator=gen), y))
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys).numpy()
    fake, logits = clf.features(x), clf.logits(x)
    real_x, real_y = ProceduralShapes(32, 3, seed=1).get_batch(range(N))  # the run's data: 3 classes, seed 1
    real, real_y = clf.features(real_x), real_y.numpy()
    m = res["metrics"]
    assert m["fid"]["value"] == pytest.approx(
        maths.frechet_distance(*maths.feature_statistics(real), *maths.feature_statistics(fake)), rel=1e-6)
    assert m["fid"]["value"] == pytest.approx(scipy_fid(real, fake), rel=1e-3)
    kid = maths.kernel_inception_distance(real, fake, num_subsets=4, subset_size=50, seed=3)
    assert (m["kid"]["mean"], m["kid"]["std"]) == pytest.approx(kid, rel=1e-6, abs=1e-9)
    assert (m["is"]["mean"], m["is"]["std"]) == pytest.approx(maths.inception_score(logits, SPLITS), rel=1e-6)
    ifid = maths.intra_fid({c: real[real_y == c] for c in range(3)}, {c: fake[y == c] for c in range(3)})
    assert m["ifid"]["value"] == pytest.approx(ifid["mean"], rel=1e-6)
    assert m["ifid"]["per_class"] == pytest.approx({n: ifid["per_class"][c] for c, n in
                                                   enumerate(["ring", "triangle", "hexagon_outline"])}, rel=1e-6)
    pr = maths.precision_recall(real, fake, k=3)
    assert (m["pr"]["precision"], m["pr"]["recall"]) == pytest.approx((pr["precision"], pr["recall"]))
    assert m["acc"]["value"] == pytest.approx(np.mean(logits.argmax(1) == y))
    # protocol next to every number
    for name, r in m.items():
        p = r["protocol"]
        assert p["weights_sha256"] == clf.protocol["weights_sha256"] and p["n_fake"] == N and p["seed"] == 3
        assert p["resize_method"] == clf.protocol["resize_method"]
        if name in ("fid", "kid", "ifid", "pr"):
            assert p["extractor"] == "classifier" and p["n_real"] == N
            assert p["reference_split"] == "procedural(classes=3, seed=1), images [0, 60)"
    assert m["kid"]["protocol"]["subset_size"] == 50 and m["is"]["protocol"]["splits"] == SPLITS
    top = res["protocol"]
    assert top["generator"]["weights"] == "ema" and top["class_names"] == ["ring", "triangle", "hexagon_outline"]
    assert top["extractor"]["weights_sha256"] == clf.protocol["weights_sha256"] and top["resolution"] == 32
    assert any("singular" in w for w in res["warnings"])  # 60 samples < 128 feature dims


def test_reference_cache_reused_and_seed_changes_fakes(ckpt, tmp_path):
    kw = dict(checkpoint=ckpt, n=20, metrics="fid", cache_dir=tmp_path)
    a = evaluate_gan(seed=0, **kw)
    b = evaluate_gan(seed=1, **kw)
    assert not a["protocol"]["reference"]["cached"] and b["protocol"]["reference"]["cached"]
    assert a["metrics"]["fid"]["value"] != b["metrics"]["fid"]["value"]
    assert evaluate_gan(seed=0, **kw)["metrics"]["fid"]["value"] == a["metrics"]["fid"]["value"]


def test_good_generator_scores_better_than_untrained(ckpt, tmp_path):
    """A callable that returns real procedural images of the asked class (another dataset seed)."""
    ds = ProceduralShapes(32, 3, seed=99)
    counter = {"i": 0}

    def real_generator(z, y):
        idx = [counter["i"] + 3 * k + int(c) for k, c in enumerate(y)]  # an image of class c (label = idx % 3)
        counter["i"] += 3 * len(y)
        return ds.get_batch(idx)[0]

    kw = dict(n=N, metrics="fid,acc,pr", is_splits=SPLITS, cache_dir=tmp_path)
    good = evaluate_gan(real_generator, num_classes=3, z_dim=4, data="procedural", ref_seed=1, **kw)["metrics"]
    bad = evaluate_gan(checkpoint=ckpt, **kw)["metrics"]
    assert good["acc"]["value"] >= 0.9 and bad["acc"]["value"] < 0.7
    assert good["fid"]["value"] * 5 < bad["fid"]["value"]
    assert good["pr"]["precision"] > bad["pr"]["precision"]


def test_errors(ckpt, tmp_path):
    kw = dict(cache_dir=tmp_path)
    with pytest.raises(EvaluationError, match="not found"):
        evaluate_gan(checkpoint=tmp_path / "missing.pt", n=10, **kw)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(EvaluationError, match="could not load"):
        evaluate_gan(checkpoint=tmp_path / "junk.pt", n=10, **kw)
    with pytest.raises(EvaluationError, match="unknown metric"):
        parse_metrics("fid,foo")
    with pytest.raises(EvaluationError, match="at least 2 fake"):
        evaluate_gan(checkpoint=ckpt, n=1, metrics="fid", **kw)
    with pytest.raises(EvaluationError, match="IS with 10 splits needs at least 10"):
        evaluate_gan(checkpoint=ckpt, n=6, metrics="is", **kw)
    with pytest.raises(EvaluationError, match="intra-FID needs at least 2 fake samples per class"):
        evaluate_gan(checkpoint=ckpt, n=5, metrics="ifid", **kw)
    with pytest.raises(EvaluationError, match="give exactly one"):
        evaluate_gan(n=5, **kw)

    class NoLogits(FeatureExtractor):
        name, dim = "nologits", 3

        def _forward(self, x):
            raise AssertionError("must not generate/extract before refusing IS")

    with pytest.raises(LogitsUnavailableError, match="logits unavailable"):
        evaluate_gan(checkpoint=ckpt, n=30, metrics="fid,is", extractor=NoLogits(), **kw)


def test_acc_refused_for_non_procedural_folder(ckpt, tmp_path, caplog):
    from PIL import Image
    for c in ("cats", "dogs", "owls"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / "d" / c / f"{i}.png")
    with pytest.raises(EvaluationError, match="not procedural shapes"):
        evaluate_gan(checkpoint=ckpt, n=6, metrics="acc", data=tmp_path / "d", class_names=["cats", "dogs", "owls"],
                     cache_dir=tmp_path)
    # a procedural checkpoint against a folder: FID works, the class-name mismatch is reported
    with caplog.at_level(logging.WARNING, logger="attnorm"):
        r = evaluate_gan(checkpoint=ckpt, n=6, metrics="fid,acc", data=tmp_path / "d", cache_dir=tmp_path)
    assert any("differ from the data folder's classes" in rec.getMessage() for rec in caplog.records)
    assert r["metrics"]["fid"]["protocol"]["n_real"] == 6 and "all 6 images" in r["protocol"]["reference"]["split"]
    assert any("differ from the data folder's classes" in w for w in r["warnings"])


def test_real_vs_real_floor_equals_the_maths_on_a_second_real_set(ckpt, clf, tmp_path):
    """The floor scores real images [n_real, n_real + n) of the reference dataset with the same maths."""
    res = evaluate_gan(checkpoint=ckpt, n=N, metrics="fid,pr,acc,kid", is_splits=SPLITS, cache_dir=tmp_path,
                       kid_subsets=5, kid_subset_size=20, floor=True)["metrics"]
    ds = ProceduralShapes(32, 3, seed=1)  # the shared run's dataset seed
    ref_x, _ = ds.get_batch(list(range(N)))
    x2, y2 = ds.get_batch(list(range(N, 2 * N)))
    f_ref, f2 = clf.features(ref_x).astype(np.float64), clf.features(x2).astype(np.float64)
    assert res["fid"]["floor"]["value"] == pytest.approx(scipy_fid(f_ref, f2), rel=1e-3, abs=1e-6)
    acc = float((clf.logits(x2).argmax(1) == y2.numpy()).mean())
    assert res["acc"]["floor"]["value"] == pytest.approx(acc)
    pr = maths.precision_recall(f_ref, f2, k=3)
    assert res["pr"]["floor"]["precision"] == pytest.approx(pr["precision"])
    assert res["pr"]["floor"]["recall"] == pytest.approx(pr["recall"])
    assert res["fid"]["protocol"]["floor_split"].endswith(f"images [{N}, {2 * N})")
    # the floor is the better side: the tiny run is far from it
    assert res["fid"]["floor"]["value"] < res["fid"]["value"] and res["acc"]["floor"]["value"] > 0.9
    assert "floor" not in evaluate_gan(checkpoint=ckpt, n=N, metrics="acc", cache_dir=tmp_path)["metrics"]["acc"]


def test_draws_are_the_mean_of_single_draws_with_shifted_seeds(ckpt, clf, tmp_path):
    """draws=2: draw k is the single evaluation with latents seed+k and reference seed ref_seed+k (the
    shared run's dataset seed is 1); every number is the mean of the two, the spread their sample std."""
    kw = dict(checkpoint=ckpt, n=N, metrics="fid,pr,acc,kid,ifid", cache_dir=tmp_path, kid_subsets=3,
              kid_subset_size=20, floor=True)
    res = evaluate_gan(seed=4, draws=2, **kw)
    singles = [evaluate_gan(seed=4 + k, ref_seed=1 + k, **kw)["metrics"] for k in range(2)]
    assert evaluate_gan(seed=4, **kw)["metrics"]["fid"]["value"] == singles[0]["fid"]["value"]  # draw 0 = default
    m = res["metrics"]
    for name, key in (("fid", "value"), ("acc", "value"), ("pr", "precision"), ("pr", "recall"), ("kid", "mean"),
                      ("ifid", "value")):
        vals = [sg[name][key] for sg in singles]
        assert m[name][key] == pytest.approx(np.mean(vals))
        assert m[name]["over_draws"][key]["values"] == pytest.approx(vals)
        assert m[name]["over_draws"][key]["std"] == pytest.approx(np.std(vals, ddof=1))
        assert m[name]["floor"][key] == pytest.approx(np.mean([sg[name]["floor"][key] for sg in singles]))
        assert m[name]["over_draws"]["floor"][key]["std"] == pytest.approx(
            np.std([sg[name]["floor"][key] for sg in singles], ddof=1))
    for c, v in m["ifid"]["per_class"].items():
        assert v == pytest.approx(np.mean([sg["ifid"]["per_class"][c] for sg in singles]))
    # the draws are different: other latents and another reference (so other floors)
    assert len({sg["fid"]["value"] for sg in singles}) == 2
    assert len({sg["fid"]["floor"]["value"] for sg in singles}) == 2
    p = m["fid"]["protocol"]
    assert p["draws"] == 2 and p["seeds"] == [4, 5] and p["reference_seeds"] == [1, 2]
    assert res["protocol"]["draws"] == 2
    # draw 1's reference really is dataset seed 2's first N images: its floor FID from the maths
    ds = ProceduralShapes(32, 3, seed=2)
    f_ref = clf.features(ds.get_batch(list(range(N)))[0]).astype(np.float64)
    f2 = clf.features(ds.get_batch(list(range(N, 2 * N)))[0]).astype(np.float64)
    assert m["fid"]["over_draws"]["floor"]["value"]["values"][1] == pytest.approx(scipy_fid(f_ref, f2), rel=1e-3,
                                                                                  abs=1e-6)
    with pytest.raises(EvaluationError, match="draws must be an integer >= 1"):
        evaluate_gan(checkpoint=ckpt, n=N, metrics="fid", cache_dir=tmp_path, draws=0)


def test_reference_takes_the_pose_of_the_generator_s_data(tmp_path):
    """Real centred images as the 'generator': close to a centred reference, far from a random-pose one."""
    ds = ProceduralShapes(32, 3, seed=99, pose="centred")
    counter = {"i": 0}

    def centred_generator(z, y):
        idx = [counter["i"] + 3 * k + int(c) for k, c in enumerate(y)]
        counter["i"] += 3 * len(y)
        return ds.get_batch(idx)[0]

    kw = dict(num_classes=3, z_dim=4, n=N, metrics="fid,pr", cache_dir=tmp_path, ref_seed=1)
    same = evaluate_gan(centred_generator, pose="centred", **kw)
    counter["i"] = 0
    other = evaluate_gan(centred_generator, **kw)  # a callable has no config: the default random pose
    assert "pose=centred" in same["metrics"]["fid"]["protocol"]["reference_split"]
    assert "pose" not in other["metrics"]["fid"]["protocol"]["reference_split"]
    assert same["metrics"]["fid"]["value"] * 3 < other["metrics"]["fid"]["value"]
    assert same["metrics"]["pr"]["recall"] > other["metrics"]["pr"]["recall"]


def test_evaluation_samples_draw_one_latent_per_sample_labels_cycle_and_eval_mode():
    """The one sampler that ``evaluate gan`` (and benchmarks/diag_recall.py) use: sample i has label
    i % C and the i-th row of a single seeded draw, whatever the batch size; a module runs in eval
    mode and gets its mode back; truncation bounds every latent."""
    from attnorm.inference import evaluation_samples, latents

    class Echo(torch.nn.Module):  # image = (latent's first two entries, label, training flag)
        def forward(self, z, y):
            flag = torch.full_like(z[:, 0], float(self.training))
            return torch.stack([z[:, 0], z[:, 1], y.float(), flag], 1)[..., None, None]

    g = Echo().train()
    out = {bs: list(evaluation_samples(g, 1000, 7, 8, seed=5, batch_size=bs)) for bs in (300, 1000)}
    assert g.training and [len(y) for y, _ in out[300]] == [300, 300, 300, 100]
    x = torch.cat([x for _, x in out[300]])[..., 0, 0]
    assert torch.equal(x, torch.cat([x for _, x in out[1000]])[..., 0, 0])
    assert torch.equal(x[:, :2], latents(1000, 8, 5)[:, :2])
    assert torch.equal(x[:, 2], (torch.arange(1000) % 7).float())
    assert torch.equal(torch.cat([y for y, _ in out[300]]), torch.arange(1000) % 7)
    assert not x[:, 3].any()  # eval mode inside
    plain = torch.cat([x for _, x in evaluation_samples(lambda z, y: z[:, :1, None, None], 50, 3, 4,
                                                        seed=1, truncation=0.5)])
    assert plain.abs().max() <= 0.5 and len(torch.unique(plain)) == 50
