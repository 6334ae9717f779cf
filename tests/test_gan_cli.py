"""train-gan / sample / interpolate / layouts commands end to end (tiny, CPU)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _cli import cli_error
from attnorm import cli
from attnorm.checkpoints import load_gan_generator as load_generator
from attnorm.cli.common import CommandError, parse_classes
from attnorm.training.loop import read_stats
from attnorm.inference import interpolation_images, layout_figure, sample_images
from attnorm.viz.grid import entity_usage, make_grid


@pytest.fixture
def run(gan_run):
    return gan_run


def test_run_folder(run):
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["steps"] == 2 and cfg["ch"] == 8 and cfg["seed"] == 1
    assert len((run / "stats.jsonl").read_text().splitlines()) == 2
    grid = Image.open(run / "samples" / "step_0000002.png")
    assert grid.size == (2 + 3 * 34, 2 + 3 * 34)  # 3 classes x 3 fixed z, 32 px tiles, 2 px padding


def test_sample_command(run, tmp_path):
    ckpt = str(run / "checkpoints" / "latest.pt")
    assert cli.main(["sample", "--ckpt", ckpt, "--classes", "0,triangle,2", "--n", "2", "--out",
                     str(tmp_path / "g.png"), "--out-dir", str(tmp_path / "d"), "--scale", "1"]) == 0
    assert Image.open(tmp_path / "g.png").size == (2 + 2 * 34, 2 + 3 * 34)
    files = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert files[0] == "000_ring_000.png" and len(files) == 6
    # the saved images are the generator's output
    g, _ = load_generator(ckpt)
    x, _ = sample_images(g, [0], 1)
    saved = np.asarray(Image.open(tmp_path / "d" / "000_ring_000.png"))
    expected = ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(saved, expected)


def test_interpolation_endpoints_are_the_classes(run, tmp_path):
    ckpt = str(run / "checkpoints" / "latest.pt")
    assert cli.main(["interpolate", "--ckpt", ckpt, "--from", "0", "--to", "2", "--steps", "5", "--rows", "2",
                     "--out", str(tmp_path / "i.png"), "--scale", "1"]) == 0
    assert Image.open(tmp_path / "i.png").size == (2 + 5 * 34, 2 + 2 * 34)
    g, _ = load_generator(ckpt)
    for m in g.modules():  # make the classes differ (2 training steps barely move the CBN tables)
        if hasattr(m, "gain") and isinstance(m.gain, torch.nn.Embedding):
            with torch.no_grad():
                m.gain.weight.normal_(1, 0.5), m.bias.weight.normal_(0, 0.5)
    x = interpolation_images(g, 0, 2, steps=5, rows=2).view(2, 5, 3, 32, 32)
    a, _ = sample_images(g, [0], 2)
    b, _ = sample_images(g, [2], 2)
    # equal up to batch-size-dependent conv blocking (exact equality at equal batch: test_gan_models)
    torch.testing.assert_close(x[:, 0], a, atol=1e-5, rtol=0)
    torch.testing.assert_close(x[:, -1], b, atol=1e-5, rtol=0)
    mid = x[:, 2]
    assert (mid - a).abs().max() > 1e-3 and (mid - b).abs().max() > 1e-3


def test_layouts_command(run, tmp_path):
    ckpt = str(run / "checkpoints" / "latest.pt")
    assert cli.main(["layouts", "--ckpt", ckpt, "--classes", "1", "--n", "2", "--out", str(tmp_path / "l.png"),
                     "--json", str(tmp_path / "u.json"), "--scale", "1"]) == 0
    # per row: image + argmax layout + 16 entity maps
    assert Image.open(tmp_path / "l.png").size == (2 + 18 * 34, 2 + 2 * 34)
    usage = json.loads((tmp_path / "u.json").read_text())
    assert usage[0]["size"] == 32 and usage[0]["num_entities"] == 16
    assert sum(usage[0]["fractions"]) == pytest.approx(1.0, abs=1e-3)
    g, _ = load_generator(ckpt)
    _, lay = g(torch.randn(1, 128), torch.tensor([0]), return_layouts=True)
    grid, _ = layout_figure(g, [0], n=1)
    assert grid.shape == (2 + 34, 2 + 18 * 34, 3)


def test_entity_usage_reference():
    lay = torch.zeros(2, 4, 10, 10)
    lay[:, 0] = 1.0
    lay[0, 1, :5] = 2.0  # entity 1 wins 50 of 200 pixels
    lay[1, 3, 0, 0] = 2.0  # entity 3 wins 1 of 200 pixels (< 2 %)
    used, frac = entity_usage(lay)
    assert used == 2 and frac == pytest.approx([149 / 200, 50 / 200, 0, 1 / 200])


def test_grid_and_class_parsing():
    tiles = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    g = make_grid(tiles, ncol=3, pad=1, pad_value=7)
    assert g.shape == (1 + 2 * 3, 1 + 3 * 3, 3)
    assert np.array_equal(g[4:6, 1:3], tiles[3]) and np.array_equal(g[4:6, 4:6], tiles[4]) and (g[4:6, 7:] == 7).all()
    assert parse_classes("2,b", ["a", "b", "c"], 3) == [2, 1] and parse_classes(None, None, 2) == [0, 1]
    with pytest.raises(CommandError, match="unknown class"):
        parse_classes("zz", ["a"], 1)


def test_demo_writes_everything(tmp_path):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--steps", "3", "--minutes", "1", "--threads", "1", "ch=8",
                     "batch_size=4", "procedural_classes=3", "procedural_length=64"]) == 0
    for name in ("samples.png", "interpolation.png", "layouts.png", "loss_curve.png", "report.md",
                 "report.json", "config.json", "stats.jsonl", "checkpoints/latest.pt"):
        assert (out / name).exists(), name
    rep = json.loads((out / "report.json").read_text())
    assert rep["steps"] == 3 and rep["stop_reason"] == "done"
    # the demo preset (DEMO_CONFIG): centred shapes, the light conv D, with the overrides on top
    assert (rep["config"]["procedural_pose"], rep["config"]["d_arch"], rep["config"]["ch"]) == ("centred", "conv", 8)
    u = rep["entity_usage"][0]
    assert 1 <= u["used"] <= 16 and u["used"] == sum(f >= 0.02 for f in u["fractions"])
    assert "entities are the argmax" in (out / "report.md").read_text()
    assert Image.open(out / "samples.png").size == ((2 + 8 * 34) * 4, (2 + 3 * 34) * 4)
    # 3 classes are not the shipped weights' 10: no comparison figures
    assert "pretrained" not in rep and not list(out.glob("pretrained_*"))
    # the figures' generator: the checkpoint's EMA G with standing statistics over 200 batches of the training
    # batch size (4 here)
    from attnorm.checkpoints import load_gan_generator
    from attnorm.models.gan import standing_statistics
    assert rep["generator"] == "generator.safetensors" and rep["standing_batches"] == 200
    exported, _ = load_gan_generator(out / "generator.safetensors")
    want = standing_statistics(load_gan_generator(out / "checkpoints" / "latest.pt")[0], batches=200, batch_size=4, seed=0)
    raw = load_gan_generator(out / "checkpoints" / "latest.pt")[0]
    bufs = lambda g: {k: v for k, v in g.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    assert bufs(exported) and all(torch.equal(v, bufs(want)[k]) for k, v in bufs(exported).items())
    assert any(not torch.allclose(v, bufs(raw)[k]) for k, v in bufs(exported).items())  # not the running averages
    assert "generator.safetensors" in (out / "report.md").read_text()


def test_the_demo_says_when_the_time_limit_gave_fewer_steps_than_its_figures_were_measured_at(tmp_path):
    from attnorm.cli import demo as demo_cli
    note = demo_cli.slow_machine_note(1810, 302.0)  # session 21's AMD EPYC
    assert "trained 1810 steps in 5.0 min, fewer than the 2924-3293" in note and "`attnorm demo --minutes 9`" in note
    assert "a 2-core AMD EPYC at 2084-2351 steps: accuracy 0.899-0.962, recall 0.378-0.480" in note
    # every figure it quotes is the README's (they are edited together)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for host in (demo_cli.FAST_HOST, demo_cli.SLOW_HOST):
        for value in host.values():
            for figure in (value if isinstance(value, tuple) else (value,)):
                assert figure in readme, figure
    # the minutes it names are the fewest that reach MEASURED_STEPS at this machine's rate
    for steps, seconds in ((1810, 302.0), (500, 300.0), (2899, 300.0), (100, 30.0)):
        m = int(demo_cli.slow_machine_note(steps, seconds).split("--minutes ")[1].split("`")[0])
        rate = steps / seconds
        assert m * 60 * rate >= demo_cli.MEASURED_STEPS > (m - 1) * 60 * rate
    assert demo_cli.slow_machine_note(demo_cli.MEASURED_STEPS, 300.0) is None
    assert demo_cli.slow_machine_note(3200, 300.0) is None and demo_cli.slow_machine_note(0, 300.0) is None
    # stopped by the time limit, but with overrides (not the preset the figures describe): no note
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--minutes", "0.0001", "--threads", "1", "--no-pretrained",
                     "ch=8", "batch_size=4", "procedural_classes=3", "procedural_length=64"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["stop_reason"].startswith("time limit") and rep["steps"] < demo_cli.MEASURED_STEPS
    assert "slow_machine" not in rep and "note:" not in (out / "report.md").read_text()


def test_demo_shows_the_shipped_weights_beside_its_own_run(tmp_path):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--steps", "1", "--minutes", "1", "--threads", "1", "ch=8", "batch_size=4",
                     "procedural_length=64"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["pretrained"]["files"] == {"samples": "pretrained_samples.png",
                                          "interpolation": "pretrained_interpolation.png",
                                          "layouts": "pretrained_layouts.png"}
    g, extra = load_generator(None)
    assert rep["pretrained"]["steps"] == extra["meta"]["source_step"] > 0
    assert f"{extra['meta']['source_step']} training steps" in (out / "report.md").read_text()
    # independent rendering of the shipped weights with the demo's seeds
    x, _ = sample_images(g, list(range(len(extra["classes"]))), 8, seed=1)
    got = np.asarray(Image.open(out / "pretrained_samples.png").convert("RGB"))
    own = np.asarray(Image.open(out / "samples.png").convert("RGB"))
    assert got.shape == own.shape and not np.array_equal(got, own)
    small = got[::4, ::4]  # the demo saves at scale 4 (nearest): every 4th pixel is the grid
    ref = make_grid(((x.permute(0, 2, 3, 1).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy(), ncol=8)
    assert np.abs(small.astype(int) - ref.astype(int)).max() <= 1
    assert "shipped pretrained weights" in (out / "report.md").read_text()


def test_train_gan_reports_skipped_files_and_user_errors(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    (tmp_path / "data" / "dog" / "broken.png").write_bytes(b"not an image")
    run = tmp_path / "run"
    assert cli.main(["train-gan", "--data", str(tmp_path / "data"), "--out", str(run), "--steps", "1",
                     "--batch-size", "2", "--resolution", "16", "ch=8", "log_every=1", "samples_per_class=1"]) == 0
    out = capsys.readouterr().out.splitlines()
    # the library's warning and progress line, printed by the command's log handler
    assert out[0] == (f"warning: skipped 1 unreadable image file(s) under {tmp_path / 'data'}, e.g. "
                      f"{tmp_path / 'data' / 'dog' / 'broken.png'} (not an image file Pillow can read (unknown "
                      f"format or corrupt header))")
    assert out[1].startswith(f"run folder: {run}  (2 classes, 6 images, G ")
    assert out[2].startswith("step 1/1 | D/loss ") and out[2].endswith(" it/s")
    assert out[3] == f"stopped at step 1 (done); checkpoint {run / 'checkpoints' / 'latest.pt'}"
    # user errors: one line, exit code 2
    assert "unknown config key(s) ['chh']" in cli_error(capsys, ["train-gan", "--out", str(run), "chh=8"])
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "config.json").write_text((run / "config.json").read_text())
    assert "no checkpoint to resume from" in cli_error(capsys, ["train-gan", "--out", str(tmp_path / "fresh"),
                                                                "--resume"])
    assert "has no class subfolders" in cli_error(capsys, ["train-gan", "--data", str(tmp_path / "data" / "cat"),
                                                           "--out", str(tmp_path / "x")])
    ckpt = str(run / "checkpoints" / "latest.pt")
    assert "unknown class 'owl'" in cli_error(capsys, ["sample", "--ckpt", ckpt, "--classes", "cat,owl"])
    assert "not found" in cli_error(capsys, ["layouts", "--ckpt", str(tmp_path / "none.pt")])
    assert "--steps: must be >= 2, got 1" in cli_error(capsys, ["interpolate", "--ckpt", ckpt, "--from", "0", "--to", "1",
                                                        "--steps", "1"])


@pytest.mark.parametrize("cores, load, want", [(2, 0.05, 2), (2, 0.6, 1), (2, 1.4, 1), (2, 7.0, 1), (8, 2.6, 5),
                                               (1, 0.0, 1)])
def test_idle_cpu_threads_falls_back_to_the_cores_minus_the_load(monkeypatch, cores, load, want):
    """Where /proc/stat cannot be read (not Linux), the one-minute load average decides."""
    from attnorm.training import config
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(config.os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(config, "read_cpu_times", lambda cpus, stat_path="/proc/stat": None)
    assert config.idle_cpu_threads(window=0.0) == want


def test_read_cpu_times_sums_the_busy_fields_of_the_allowed_cpus(tmp_path):
    from attnorm.training import config
    stat = tmp_path / "stat"
    #                  user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  999 9 99 9999 9 9 9 9 0 0\n"
                    "cpu0 100 2 30 500 7 1 3 4 50 0\n"
                    "cpu1 10 0 5 900 1 0 0 0 0 0\n"
                    "cpu2 1000 0 0 0 0 0 0 0 0 0\n"
                    "intr 1 2 3\n")
    # cpu0: busy 100+2+30+1+3+4 = 140 of 647; cpu1: 15 of 916 (guest is inside user: not added again)
    assert config.read_cpu_times([0], stat) == (140, 647)
    assert config.read_cpu_times([0, 1], stat) == (155, 647 + 916)
    assert config.read_cpu_times([0, 5], stat) is None  # a CPU without a line
    assert config.read_cpu_times([0], tmp_path / "absent") is None
    stat.write_text("cpu0 100 2 x 500\n")
    assert config.read_cpu_times([0], stat) is None  # not the format it reads


@pytest.mark.parametrize("busy_share, cores, want", [(0.0, 2, 2), (0.04, 2, 2), (0.2, 2, 2), (0.3, 2, 1),
                                                     (0.5, 2, 1), (1.0, 2, 1), (0.3, 8, 6), (0.0, 1, 1)])
def test_idle_cpu_threads_counts_the_cores_busy_now_not_the_load_average(monkeypatch, busy_share, cores, want):
    """The cores kept busy over the window (their busy share times their number, rounded) are taken off. The
    load average is not consulted: a 2-core machine just idle after a 2-core job has a load average near 2."""
    from attnorm.training import config
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(config.os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    total = 1000 * cores
    reads = iter([(5000, 100000), (5000 + int(busy_share * total), 100000 + total)])
    monkeypatch.setattr(config, "read_cpu_times", lambda cpus, stat_path="/proc/stat": next(reads))
    monkeypatch.setattr(config.time, "sleep", lambda s: None)
    assert config.idle_cpu_threads() == want


def test_the_demo_trains_on_to_its_minimum_steps_when_the_time_budget_ends_first(tmp_path, capsys, monkeypatch):
    """... and, without --threads, on the cores that are idle (idle_cpu_threads, here made to say 2)."""
    from attnorm.cli import demo as demo_cli
    from attnorm.training import config
    monkeypatch.setattr(config, "idle_cpu_threads", lambda: 2)
    before = torch.get_num_threads()
    parse = lambda *a: demo_cli.demo_budget(cli.command_parser("demo")[0].parse_args(list(a)))
    assert parse() == (5.0, demo_cli.MIN_STEPS)  # as shipped: 5 min, or MIN_STEPS where that is longer
    assert parse("--minutes", "2") == (2.0, 0)  # a budget the user asks for is kept
    assert parse("--minutes", "2", "--min-steps", "40") == (2.0, 40)
    assert parse("--min-steps", "0") == (5.0, 0) and parse("--steps", "10") == (5.0, 10)
    out = tmp_path / "demo"
    try:
        assert cli.main(["demo", "--out", str(out), "--minutes", "0.0001", "--min-steps", "3", "--no-pretrained",
                         "ch=8", "batch_size=4", "procedural_classes=3", "procedural_length=64"]) == 0
        assert json.loads((out / "config.json").read_text())["threads"] == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    printed = capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert rep["steps"] == 3 and rep["stop_reason"] == "done"
    assert rep["extended"]["budget_steps"] == 1 and rep["extended"]["min_steps"] == 3
    assert "gave 1 steps on this machine" in printed and "trains on to 3 steps" in printed
    assert "budget gave 1 steps, extended to 3" in (out / "report.md").read_text()
    assert [r["step"] for r in read_stats(out / "stats.jsonl")][-1] == 3
