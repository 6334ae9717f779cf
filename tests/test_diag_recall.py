"""benchmarks/diag_recall.py: its image changes and distances match independent references, and
a run ranks the damaged real sets below the undamaged one."""

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from _scripts import load_benchmark


pytestmark = pytest.mark.benchmarks  # a benchmark script's test: `python -m pytest -m benchmarks` (pyproject.toml)


def test_blur_matches_scipy_and_tints_keep_luminance_structure():
    diag = load_benchmark("diag_recall")
    x = torch.rand(2, 3, 17, 13, dtype=torch.float64) * 2 - 1
    for sigma in (0.5, 1.2):
        want = np.stack([np.stack([ndimage.gaussian_filter(x[i, c].numpy(), sigma, mode="mirror", truncate=3.0)
                                   for c in range(3)]) for i in range(2)])
        np.testing.assert_allclose(diag.gaussian_blur(x, sigma).numpy(), want, atol=1e-12)
    t = diag.two_tints(x * 0.5)
    lum = (x * 0.5).mean(1)
    np.testing.assert_allclose(t[0, 0].numpy(), lum[0].numpy() * 1.0, atol=1e-12)  # first tint's red = 1.0
    np.testing.assert_allclose(t[1, 2].numpy(), lum[1].numpy() * 0.5, atol=1e-12)  # second tint's blue = 0.5
    noisy = diag.with_noise(torch.zeros(1, 3, 64, 64), 0.1)
    assert 0.09 < noisy.std().item() < 0.11


def test_high_frequency_power_counts_only_frequencies_above_the_cutoff_radius():
    diag = load_benchmark("diag_recall")
    i = torch.arange(32, dtype=torch.float64)
    yy, xx = i.view(-1, 1), i.view(1, -1)

    def wave(fy, fx, amp=1.0):  # (1, 3, 32, 32) cosine of fy, fx cycles per pixel, plus an offset
        return (0.3 + amp * torch.cos(2 * np.pi * (fy * yy + fx * xx))).expand(1, 3, 32, 32)

    assert diag.high_frequency_power(wave(0, 12 / 32)) > 0
    assert diag.high_frequency_power(wave(0, 4 / 32)) < 1e-12  # 0.125 < 0.25, and the offset is removed
    assert diag.high_frequency_power(wave(6 / 32, 6 / 32)) > 0  # radius 0.265: each axis below 0.25
    assert diag.high_frequency_power(wave(5 / 32, 5 / 32)) < 1e-12  # radius 0.221
    ratio = diag.high_frequency_power(wave(0, 12 / 32)) / diag.high_frequency_power(wave(0, 12 / 32, 0.5))
    assert abs(ratio - 4) < 1e-9


def test_within_class_spread_matches_numpy():
    diag = load_benchmark("diag_recall")
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (12, 3, 16, 16))
    x[0::3] = x[0]  # class 0 (images 0, 3, 6, 9): one image repeated
    blocks = x.reshape(12, 3, 8, 2, 8, 2).mean((3, 5))  # 8x8 block means
    want = np.mean([0.0] + [blocks[c::3].std(0, ddof=1).mean() for c in (1, 2)])
    assert abs(diag.within_class_spread(torch.from_numpy(x), 3) - want) < 1e-12


def test_distances_match_brute_force():
    diag = load_benchmark("diag_recall")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 5)), rng.normal(size=(30, 5))
    d_ab = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    np.testing.assert_allclose(diag.nearest_distances(a, b), d_ab.min(1), rtol=1e-10)
    d_aa = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))
    np.fill_diagonal(d_aa, np.inf)
    np.testing.assert_allclose(diag.knn_radii(a, k=3), np.sort(d_aa, 1)[:, 2], rtol=1e-10)


def test_a_small_run_ranks_blurred_real_images_below_real_ones(tmp_path):
    diag = load_benchmark("diag_recall")
    res = diag.main(["--n", "120", "--out", str(tmp_path)])
    real = res["real"]
    floor, blurred = real["real (the floor)"], real["blur sigma 1.2 px"]
    assert floor["recall"] > blurred["recall"] + 0.3
    assert floor["to_nearest_real"] < blurred["to_nearest_real"]
    assert floor["fid"] < blurred["fid"]
    hf = [real[k]["hf_power_vs_reference"] for k in ("blur sigma 1.2 px", "blur sigma 0.8 px", "blur sigma 0.5 px",
                                                      "real (the floor)", "noise std 0.1")]
    assert hf == sorted(hf) and 0.8 < floor["hf_power_vs_reference"] < 1.25
    assert 0.85 < floor["class_spread_vs_reference"] < 1.15
    tints = real["colours: two tints of the luminance"]
    assert tints["class_spread_vs_reference"] < 0.8
    assert tints["ground_colour_recall"] < 0.5 < floor["ground_colour_recall"]  # two tints miss most grounds' colours
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["real"]["blur sigma 1.2 px"]["recall"] == blurred["recall"]
    assert "| blur sigma 1.2 px |" in (tmp_path / "results.md").read_text()
    # recall by ground and class: the floor's rows average to its recall (every reference image counted once)
    assert set(floor["recall_by_ground"]) == {"noise", "gradient", "stripes"} and len(floor["recall_by_class"]) == 10
    assert np.mean(floor["recall_by_class"]) == pytest.approx(floor["recall"])
    assert "| stripes ground | class 0 |" in (tmp_path / "results.md").read_text()


def test_generated_draws_one_latent_per_sample_like_evaluate_gan():
    """The checkpoint rows score n images with n distinct latents and labels i % C (as
    ``attnorm evaluate gan`` does), not a few latents repeated for every class, which would
    shrink the set's spread and bias recall down."""
    diag = load_benchmark("diag_recall")

    class Echo(torch.nn.Module):  # image = (its latent's first entry, its label)
        z_dim, num_classes = 8, 10

        def forward(self, z, y):
            assert not self.training
            return torch.stack([z[:, 0], y.float()], 1)[..., None, None]

    x = diag.generated(Echo(), 1000, batch_size=300)
    z0, y = x[:, 0, 0, 0], x[:, 1, 0, 0]
    assert torch.equal(y, (torch.arange(1000) % 10).float())
    assert len(torch.unique(z0)) == 1000
    from attnorm.inference import latents
    assert torch.equal(z0, latents(1000, 8, 0)[:, 0])


def test_real_sets_take_the_generators_classes(gan_ckpt, tmp_path):
    """The real sets hold the generators' classes (the shared tiny run has 3): a reference with
    classes G never draws would count as missed modes. A class-count mismatch is refused."""
    diag = load_benchmark("diag_recall")
    ext_calls = []

    class Ext:  # records the images it is given; features = per-image channel means
        def features(self, x):
            ext_calls.append(x)
            return x.mean((2, 3)).double().numpy()

    ref, _, _, ref_x = diag.real_probes(Ext(), 30, "centred", classes=3)
    assert torch.equal(ref_x, diag.real_set(30, "centred", 3)[1])  # the reference images, for --grounds
    from attnorm.data.procedural import ProceduralShapes
    want = ProceduralShapes(32, 3, pose="centred", seed=0).get_batch(range(30))[0]
    assert torch.equal(ext_calls[0], want)
    res = diag.main(["--n", "40", "--classes", "3", "--ckpt", str(gan_ckpt), "--out", str(tmp_path)])
    assert 0 <= res["checkpoints"][str(gan_ckpt)]["recall"] <= 1 and res["classes"] == 3
    with pytest.raises(SystemExit, match="pass --classes 3"):
        diag.main(["--n", "40", "--ckpt", str(gan_ckpt), "--out", str(tmp_path)])


def test_recall_by_group_counts_the_missed_reference_images_per_ground_and_class():
    diag = load_benchmark("diag_recall")
    inside = np.array([True, False, True, True, False, False, True, True])  # reference rows 0..7
    grounds = ["stripes", "stripes", "noise", "gradient", "stripes", "noise", "gradient", "noise"]
    out = diag.recall_by_group(inside, 2, grounds)
    # classes: rows 0, 2, 4, 6 are class 0 (T, T, F, T); rows 1, 3, 5, 7 class 1 (F, T, F, T)
    assert out["recall_by_class"] == [0.75, 0.5]
    assert out["recall_by_ground"] == {"noise": pytest.approx(2 / 3), "gradient": 1.0, "stripes": pytest.approx(1 / 3)}
    assert "recall_by_ground" not in diag.recall_by_group(inside, 2, None)


def test_a_set_without_stripes_loses_only_the_striped_reference_images():
    """score() on features: the 'generated' set is the reference's own non-striped images (plus a little
    noise), so striped reference images fall outside it and the others inside."""
    diag = load_benchmark("diag_recall")
    rng = np.random.default_rng(0)
    n = 240
    grounds = [("noise", "gradient", "stripes")[i % 3] for i in range(n)]
    centres = rng.normal(size=(3, 16)) * 10  # one cluster per ground kind
    ref = centres[np.arange(n) % 3] + rng.normal(size=(n, 16))
    keep = np.array([g != "stripes" for g in grounds])
    fake = ref[keep] + 0.01 * rng.normal(size=(keep.sum(), 16))
    images = torch.rand(len(fake), 3, 8, 8)
    pix = diag.pixel_reference(images, 4, grounds)
    row = diag.score(ref, fake, images, pix)
    assert row["recall_by_ground"]["stripes"] == 0.0
    assert row["recall_by_ground"]["noise"] > 0.95 and row["recall_by_ground"]["gradient"] > 0.95
    assert row["recall"] == pytest.approx(np.mean([row["recall_by_ground"][g] for g in grounds]))


def test_contrast_and_chroma_against_numpy():
    """contrast: per-channel std of all pixel values (numpy, ddof 1), averaged; chroma: mean of max - min
    over channels. Scaling about zero scales both; a grey image has chroma 0."""
    diag = load_benchmark("diag_recall")
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (6, 3, 8, 8))
    want = np.mean([x[:, c].std(ddof=1) for c in range(3)])
    assert diag.contrast(torch.from_numpy(x)) == pytest.approx(want, rel=1e-12)
    assert diag.chroma(torch.from_numpy(x)) == pytest.approx((x.max(1) - x.min(1)).mean(), rel=1e-12)
    assert diag.contrast(torch.from_numpy(0.5 * x)) == pytest.approx(0.5 * want, rel=1e-12)
    grey = np.repeat(x[:, :1], 3, axis=1)
    assert diag.chroma(torch.from_numpy(grey)) == 0.0


def test_score_reports_fid_mean_term_against_numpy():
    diag = load_benchmark("diag_recall")
    rng = np.random.default_rng(6)
    ref = rng.normal(size=(200, 4))
    fake = rng.normal(size=(150, 4)) + np.array([0.5, 0.0, -0.2, 0.0])
    images = torch.rand(150, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    warm = images[:75].clone()
    warm[:, 0] += 2.0  # half the set on red grounds far from every reference colour
    pix = diag.pixel_reference(images, 2)
    row = diag.score(ref, fake, torch.cat([warm, images[75:]]), pix)
    assert row["fid_mean_term"] == pytest.approx(((ref.mean(0) - fake.mean(0)) ** 2).sum(), rel=1e-10)
    assert 0 < row["fid_mean_term"] < row["fid"]
    # the grounds' colours: the reference's own images cover it all; a red half lies outside its colours
    same = diag.score(ref, fake, images, pix)
    assert same["ground_colour_precision"] == same["ground_colour_recall"] == 1.0
    assert row["ground_colour_precision"] == pytest.approx(0.5)


def test_ground_classifier_tells_the_grounds_apart_and_counts_them():
    """A small ground CNN (few images, short training) must still find the striped grounds of held-out real
    images, and ground_fractions must count its calls: an all-stripes set is called mostly stripes, a set
    without stripes rarely, and the fractions sum to 1."""
    diag = load_benchmark("diag_recall")
    net, acc = diag.ground_classifier(n=2000, epochs=6, test_n=300)  # held-out stripes 0.90 (session 38)
    assert acc["stripes"] > 0.75 and acc["all"] > 0.5 and set(acc) == {"noise", "gradient", "stripes", "all"}
    x, g = diag._ground_set(600, "centred", 10, seed=11)
    calls = diag.ground_calls(net, x)
    assert torch.equal(calls, net(x).argmax(1))
    striped, plain = diag.ground_fractions(net, x[g == 2]), diag.ground_fractions(net, x[g != 2])
    assert striped["stripes"] > 0.75 and plain["stripes"] < 0.2
    for fr in (striped, plain):
        assert sum(fr.values()) == pytest.approx(1.0)
    assert striped["stripes"] == pytest.approx(float((calls[g == 2] == 2).float().mean()))


def test_ground_colours_average_the_edge_frame_only():
    diag = load_benchmark("diag_recall")
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (3, 3, 12, 10))
    f = diag.GROUND_FRAME
    want = np.stack([[np.concatenate([img[c, :f].ravel(), img[c, -f:].ravel(), img[c, f:-f, :f].ravel(),
                                      img[c, f:-f, -f:].ravel()]).mean() for c in range(3)] for img in x])
    np.testing.assert_allclose(diag.ground_colours(torch.from_numpy(x)), want, rtol=1e-12)
    x[:, :, f:-f, f:-f] = 5.0  # whatever lies inside the frame does not count
    np.testing.assert_allclose(diag.ground_colours(torch.from_numpy(x)), want, rtol=1e-12)
