"""GAN training: hinge loss, exact resume, NaN stop, checkpoint -> generator (CPU, tiny models)."""

import copy
import json
import logging
import math

import pytest
import torch

from attnorm.layers import AttentiveNorm
from attnorm.losses.gan import HingeGANLoss, d_hinge, g_hinge
from attnorm.models.gan import build_gan
from attnorm.checkpoints import load_gan_generator as load_generator
from attnorm.cli.common import parse_overrides
from attnorm.training.gan import GANTraining, resolve_config
from attnorm.training.loop import NonFiniteLossError, read_stats



TINY = dict(resolution=32, ch=8, batch_size=8, procedural_classes=4, procedural_length=200, log_every=1,
            ckpt_every=3, sample_every=0, samples_per_class=2, ema_decay=0.9)


def test_hinge_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.3])
    assert float(d_hinge(real, fake)) == pytest.approx((0 + 0.5) / 2 + (0 + 1.3) / 2)
    assert float(g_hinge(fake)) == pytest.approx(0.85)


def _ortho_reference(net):
    total = 0.0
    for m in net.modules():
        if isinstance(m, AttentiveNorm):
            k = m.entities.detach().double()
            total += float(torch.linalg.matrix_norm(k @ k.T - torch.eye(k.shape[0], dtype=torch.double)) ** 2)
    return total


def test_loss_phases_add_orthogonality_of_every_an_layer():
    torch.manual_seed(0)
    g, d = build_gan(resolution=32, ch=8, num_classes=3)
    g0, d0 = copy.deepcopy(g), copy.deepcopy(d)  # SN power iterations change u: recompute from copies
    loss = HingeGANLoss(g, d, z_dim=128, num_classes=3, batch_size=4, ortho_weight=0.5)
    x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 0])
    torch.manual_seed(1)
    out = loss.run_phase("D", (x, y))
    assert float(out["D/ortho"]) == pytest.approx(_ortho_reference(d), rel=1e-5)
    # recompute the adversarial part with the same random draws
    torch.manual_seed(1)
    z, yf = loss.sample_latents(4)
    with torch.no_grad():
        logits = d0(torch.cat([x, g0(z, yf)]), torch.cat([y, yf]))
    expected = float(d_hinge(logits[:4], logits[4:])) + 0.5 * _ortho_reference(d)
    assert float(out["D/loss"]) == pytest.approx(expected, rel=1e-5)
    assert all(p.grad is not None for p in d.parameters() if p.requires_grad)
    g_out = loss.run_phase("G", None)
    assert float(g_out["G/ortho"]) == pytest.approx(_ortho_reference(g), rel=1e-5)
    assert g.fc.parametrizations.weight.original.grad is not None


def test_config_overrides():
    cfg = resolve_config(overrides=parse_overrides(["steps=7", "attention=sa", "betas=[0,0.9]"]))
    assert cfg["steps"] == 7 and cfg["attention"] == "sa" and cfg["betas"] == [0, 0.9]
    with pytest.raises(ValueError, match="unknown config key"):
        resolve_config(overrides={"stepz": 3})


def _stat_losses(run_dir):
    return [(r["step"], r["D/loss"], r["G/loss"], r["D/real"]) for r in read_stats(run_dir / "stats.jsonl")]


def test_g_channel_mults_of_the_wrong_length_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"g_channel_mults needs 4 entries for resolution 32 \(the 4x4 stage first\), got \[8, 4\]"):
        GANTraining(resolve_config(overrides=dict(TINY, g_channel_mults=[8, 4])), tmp_path / "bad")


@pytest.mark.parametrize("extra", [{}, {"lecam": 0.5, "r1": 0.2, "r1_every": 2, "d_arch": "conv", "g_hierarchical_z": True,
                                    "g_coords": True, "feature_matching": 0.5, "d_mbstd_by_class": True,
                                    "d_mbstd_channels": 2, "d_mbstd_spatial": True},
                                   {"reuse_fakes": True, "mode_seeking": 0.5, "g_fourier": 3, "g_skip": True,
                                    "g_channel_mults": [8, 4, 2, 2]}],
                         ids=["plain", "lecam_lazy_r1_hier_z_coords_fm_mbstd", "reuse_fakes_fourier_skip_mults"])  # the loss's own state (averages, phase count) resumes too
def test_train_kill_resume_equals_uninterrupted(tmp_path, extra):
    cfg = resolve_config(overrides=dict(TINY, steps=6, **extra))
    full = GANTraining(cfg, tmp_path / "full")
    full.run()

    class Killed(Exception):
        pass

    part = GANTraining(cfg, tmp_path / "part")

    def kill(step):
        if step == 4:  # one step past the checkpoint at 3
            raise Killed

    part.loop.sample_fn, part.loop.sample_every = kill, 1
    with pytest.raises(Killed):
        part.run()
    resumed = GANTraining(cfg, tmp_path / "part")
    resumed.run(resume=True)
    a, b = _stat_losses(tmp_path / "full"), _stat_losses(tmp_path / "part")
    assert [s for s, *_ in a] == list(range(1, 7))
    assert a == b  # exact floats after the resume
    for (k, v), v2 in zip(full.G.state_dict().items(), resumed.G.state_dict().values()):
        assert torch.equal(v, v2), k
    for v, v2 in zip(full.ema.shadow.state_dict().values(), resumed.ema.shadow.state_dict().values()):
        assert torch.equal(v, v2)
    # the checkpoint alone rebuilds the EMA generator
    g, extra = load_generator(tmp_path / "part" / "checkpoints" / "latest.pt")
    assert g.get_config().get("hierarchical_z", False) == bool(cfg["g_hierarchical_z"])
    assert g.get_config().get("coords", False) == bool(cfg["g_coords"])
    assert g.get_config().get("fourier", 0) == cfg["g_fourier"]
    assert g.get_config().get("skip", False) == bool(cfg["g_skip"]) and (g.to_rgb is not None) == bool(cfg["g_skip"])
    mults = cfg["g_channel_mults"] or [8, 4, 2, 1]  # the listing's last four at 32 px
    assert g.get_config()["channel_mults"] == mults
    assert g.blocks[-1].conv2.weight.shape[0] == mults[-1] * cfg["ch"]  # the finest stage's width
    assert extra["config"]["steps"] == 6 and extra["classes"] == ["ring", "triangle", "hexagon_outline", "star"]
    z, y = torch.randn(2, 128), torch.tensor([0, 3])
    shadow = copy.deepcopy(full.ema.shadow).to(memory_format=torch.contiguous_format)  # as loaded (training: channels_last)
    with torch.no_grad():
        assert torch.equal(g(z, y), shadow.eval()(z, y))
    assert (tmp_path / "part" / "config.json").exists()
    d_cfg = full.D.get_config()  # D's minibatch-stddev options from the run's config
    assert d_cfg.get("mbstd_channels", 1) == cfg["d_mbstd_channels"]
    assert d_cfg.get("mbstd_spatial", False) == cfg["d_mbstd_spatial"]


def test_nan_stops_run_and_keeps_checkpoint(tmp_path):
    cfg = resolve_config(overrides=dict(TINY, steps=10, ckpt_every=2, d_steps=1))  # one batch per step
    tr = GANTraining(cfg, tmp_path)
    real_next, calls = tr.data.next, [0]

    def poisoned():
        calls[0] += 1
        x, y = real_next()
        return (x * float("nan"), y) if calls[0] == 3 else (x, y)

    tr.data.next = poisoned
    with pytest.raises(NonFiniteLossError, match=r"step 3: D/loss = nan.*latest.pt \(step 2\)"):
        tr.run()
    g, _ = load_generator(tmp_path / "checkpoints" / "latest.pt", use_ema=False)
    assert all(torch.isfinite(p).all() for p in g.parameters())


def test_config_values_are_checked_for_type_and_bounds(tmp_path):
    """Issue 12 (X4, M10, M11, M14): a wrong type or an out-of-bounds value is one ValueError line naming
    the key and where it came from; missing keys of a saved config take their defaults."""
    for bad, msg in (({"ch": "abc"}, r"'ch' must be an integer, got \"abc\" \(str\) in overrides"),
                     ({"batch_size": 8.0}, r"'batch_size' must be an integer, got 8.0"),
                     ({"batch_size": -2}, r"'batch_size' must be >= 1, got -2"),
                     ({"steps": 0}, r"'steps' must be >= 1"), ({"seed": 2 ** 32}, r"'seed' must be <= 4294967295"),
                     ({"d_ch": "x"}, r"'d_ch' must be an integer or null"), ({"lr_g": True}, "must be a number"),
                     ({"ema_decay": 1.5}, r"'ema_decay' must be <= 1"), ({"lr_d": float("inf")}, "must be finite"),
                     ({"betas": [0.5, 1.0]}, "two numbers in")):
        with pytest.raises(ValueError, match=msg):
            resolve_config(overrides=bad)
    (tmp_path / "c.json").write_text('{"steps": "two"}')
    with pytest.raises(ValueError, match=r"'steps' must be an integer, got \"two\" \(str\) in .*c.json"):
        resolve_config(tmp_path / "c.json")
    cfg = resolve_config(overrides={"d_ch": 8, "lr_g": 1, "max_seconds": 60, "sync_bn": None})
    assert cfg["d_ch"] == 8 and cfg["lr_g"] == 1
    old = {k: v for k, v in resolve_config().items() if k != "g_spectral_norm"}
    assert resolve_config(base=old)["g_spectral_norm"] is True


def test_compile_key_runs_the_loss_through_compiled_g_and_d(tmp_path, monkeypatch):
    """compile=MODE: the loss calls torch.compile(G) and torch.compile(D) (stubbed here: the wiring,
    not inductor), the optimisers, EMA and checkpoints keep the plain modules, and under
    reduce-overhead every phase run starts a new CUDA-graph step."""
    with pytest.raises(ValueError, match="not a torch.compile mode"):
        resolve_config(overrides=dict(TINY, compile="fast"))
    compiled, marks = [], []

    class Compiled(torch.nn.Module):  # what torch.compile returns: a wrapper that calls the module
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

        def forward(self, *a, **k):
            return self._orig_mod(*a, **k)

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self._orig_mod, name)

    monkeypatch.setattr(torch, "compile", lambda m, mode=None, dynamic=None:
                        compiled.append((type(m).__name__, mode, dynamic)) or Compiled(m))
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    cfg = resolve_config(overrides=dict(TINY, steps=2, compile="reduce-overhead"))
    run = GANTraining(cfg, tmp_path / "c")
    assert compiled == [("Generator", "reduce-overhead", False), ("Discriminator", "reduce-overhead", False)]
    assert isinstance(run.loss.G, Compiled) and run.loss.G._orig_mod is run.G and run.loss.D._orig_mod is run.D
    run.run()
    assert len(marks) == 2 * (cfg["d_steps"] + 1)  # one per phase run
    eager = GANTraining(resolve_config(overrides=dict(TINY, steps=2)), tmp_path / "e")
    eager.run()
    assert not eager.loop.mark_graph_steps and len(marks) == 2 * (cfg["d_steps"] + 1)
    assert _stat_losses(tmp_path / "c") == _stat_losses(tmp_path / "e")  # same numbers through the wrapper
    assert all(not k.startswith("_orig_mod") for k in torch.load(
        tmp_path / "c" / "checkpoints" / "latest.pt", weights_only=True)["modules"]["G"])


def test_compile_with_distributed_training_is_refused_in_one_line(tmp_path, monkeypatch):
    from attnorm.training import config as config_module
    monkeypatch.setattr(config_module, "world", lambda: (0, 2))  # as under torchrun with two processes
    monkeypatch.setattr(config_module, "init_distributed", lambda device: device)
    with pytest.raises(ValueError, match="compile=default is not supported with distributed training"):
        GANTraining(resolve_config(overrides=dict(TINY, compile="default")), tmp_path / "r")


def test_shipped_config_files_resolve_and_the_demo_file_is_the_demo_preset():
    from pathlib import Path

    from attnorm.training.gan import DEFAULT_CONFIG, DEMO_CONFIG
    configs = Path(__file__).resolve().parent.parent / "configs"
    for f in sorted(configs.glob("gan_*.json")):
        resolve_config(f)  # every key known, every value of the right type
    demo = resolve_config(configs / "gan_demo.json")
    assert demo == resolve_config(base=DEMO_CONFIG, overrides={"steps": 4000})
    assert resolve_config(configs / "gan_cpu_small.json") == resolve_config(overrides={"steps": 2000})
    # the demo preset differs from the CPU preset in the data's pose, the discriminator (with the
    # by-class stddev), G's hierarchical latent, the mode-seeking term and bf16 where native (G's architecture
    # otherwise the same)
    changed = {k for k in DEFAULT_CONFIG if DEFAULT_CONFIG[k] != DEMO_CONFIG[k]}
    assert changed == {"procedural_pose", "d_arch", "d_ch", "batch_size", "d_steps", "betas", "g_hierarchical_z",
                       "d_mbstd_by_class", "d_mbstd_channels", "mode_seeking", "mode_seeking_norm", "mode_seeking_pairs", "g_upsample",
                       "ema_decay", "amp"}
    # the shipped centred weights' recipe = the demo preset at twice the width, without the mode-seeking term
    # (session 13) and a slow EMA; bf16 where the CPU has it natively, as the demo (amp null since session 40)
    centred = resolve_config(configs / "gan_centred32.json")
    assert {k for k in centred if centred[k] != demo[k]} == {
        "ch", "d_mbstd_channels", "mode_seeking", "mode_seeking_norm", "mode_seeking_pairs", "g_upsample", "ema_decay", "ema_start", "steps", "threads", "log_every", "ckpt_every", "sample_every"}


def test_channels_last_is_on_by_default_and_trains_the_same_steps(tmp_path):
    assert resolve_config()["channels_last"] is True  # null resolves to on
    assert resolve_config(overrides={"channels_last": False})["channels_last"] is False
    cfg = dict(TINY, steps=2, d_arch="conv", g_hierarchical_z=True, amp=False)
    runs = {}
    for cl in (True, False):
        run = GANTraining(resolve_config(overrides=dict(cfg, channels_last=cl)), tmp_path / str(cl))
        convs = [m.weight for net in (run.G, run.D, run.ema.shadow) for m in net.modules()
                 if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]  # a 1x1 kernel is both formats
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) is cl for w in convs)
        run.run()
        runs[cl] = run
    # the memory format changes the kernels' order of summation, not the maths: the same losses and weights
    a, b = _stat_losses(tmp_path / "True"), _stat_losses(tmp_path / "False")
    assert [s for s, *_ in a] == [1, 2] == [s for s, *_ in b]
    for ra, rb in zip(a, b):
        assert ra == pytest.approx(rb, rel=1e-4, abs=1e-5)
    # weights: apart by at most Adam's largest move (about lr per step) in each of the two runs over the two
    # steps; the conv biases in front of batch norms have a zero gradient up to rounding, whose sign Adam
    # turns into a full step either way
    move = 2 * runs[True].cfg["lr_g"] * 2
    for (k, v), v2 in zip(runs[True].G.state_dict().items(), runs[False].G.state_dict().values()):
        torch.testing.assert_close(v, v2, rtol=1e-4, atol=move, msg=k)
    # the checkpoint of a channels_last run rebuilds the same generator
    g, _ = load_generator(tmp_path / "True" / "checkpoints" / "latest.pt")
    z, y = torch.randn(2, 128), torch.tensor([0, 3])
    shadow = copy.deepcopy(runs[True].ema.shadow).to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        assert torch.equal(g(z, y), shadow.eval()(z, y))


def test_amp_auto_turns_bf16_on_only_for_a_cpu_with_native_bf16(monkeypatch, tmp_path):
    from attnorm.training import gan as gan_training
    from attnorm.training.config import native_bf16_cpu
    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("flags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("flags\t\t: fpu sse2 avx512f avx512bw avx512_vnni\n")
    assert native_bf16_cpu(with_bf16) and not native_bf16_cpu(without)
    assert not native_bf16_cpu(tmp_path / "missing")
    for native in (True, False):
        monkeypatch.setattr(gan_training, "native_bf16_cpu", lambda native=native: native)
        assert resolve_config(overrides={"amp": None})["amp"] is native
        assert resolve_config(overrides={"amp": None, "device": "cuda"})["amp"] is False
        assert resolve_config(overrides={"amp": False})["amp"] is False
        assert resolve_config(overrides={"amp": True})["amp"] is True


@pytest.mark.parametrize("reuse", [False, True])
def test_reuse_fakes_runs_g_first_and_one_g_forward_per_step(tmp_path, reuse):
    cfg = resolve_config(overrides=dict(TINY, steps=3, d_steps=1, reuse_fakes=reuse))
    run = GANTraining(cfg, tmp_path / str(reuse))
    assert [p.name for p in run.loop.phases] == (["G", "D"] if reuse else ["D", "G"])
    calls = []
    run.G.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    run.run()
    assert len(calls) == (3 if reuse else 6)
    stats = read_stats(tmp_path / str(reuse) / "stats.jsonl")
    assert [r["step"] for r in stats] == [1, 2, 3] and all(math.isfinite(r["D/loss"]) for r in stats)


def test_the_triton_key_switches_an_s_triton_paths_on_cuda_only(tmp_path, caplog):
    """``triton=true``: on a CUDA device both Triton switches are on for the process; elsewhere the
    run logs one line and keeps the PyTorch path; ``false`` turns them off again."""
    from attnorm.layers import regional
    from attnorm.training.config import use_triton
    try:
        assert use_triton(True, torch.device("cuda", 0)) is True  # only sets the switches: no GPU needed
        assert regional._TRITON["enabled"] and regional._TRITON_SUMS["enabled"]
        assert use_triton(False, torch.device("cuda", 0)) is False
        assert not regional._TRITON["enabled"] and not regional._TRITON_SUMS["enabled"]
        with caplog.at_level(logging.WARNING, logger="attnorm.training.config"):
            assert use_triton(True, torch.device("cpu")) is False
        assert "triton=true applies to CUDA devices only" in caplog.text
        assert not regional._TRITON["enabled"] and not regional._TRITON_SUMS["enabled"]
        # a CPU run with the key set trains as without it
        assert resolve_config()["triton"] is False
        run = GANTraining(resolve_config(overrides=dict(TINY, steps=1, triton=True)), tmp_path / "run")
        assert not regional._TRITON_SUMS["enabled"]
        run.run()
        assert json.loads((tmp_path / "run" / "config.json").read_text())["triton"] is True
    finally:
        regional.triton_statistics(False)
        regional.triton_pixel_sums(False)


def test_share_fakes_keeps_the_phase_order_and_one_g_forward_per_step(tmp_path):
    cfg = resolve_config(overrides=dict(TINY, steps=3, d_steps=1, share_fakes=True))
    run = GANTraining(cfg, tmp_path)
    assert [p.name for p in run.loop.phases] == ["D", "G"]
    calls = []
    run.G.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    before = {k: v.clone() for k, v in run.G.state_dict().items()}
    run.run()
    assert len(calls) == 3
    assert any(not torch.equal(before[k], v) for k, v in run.G.state_dict().items() if "weight" in k)  # G trained
    stats = read_stats(tmp_path / "stats.jsonl")
    assert [r["step"] for r in stats] == [1, 2, 3] and all(math.isfinite(r["G/loss"]) for r in stats)
    assert all(r["G/grad_norm"] > 0 for r in stats)


def test_init_g_starts_g_and_its_ema_from_a_file_and_d_warmup_keeps_g_fixed(tmp_path):
    from attnorm.checkpoints import export_gan_generator
    src = GANTraining(resolve_config(overrides=dict(TINY, steps=3, seed=5)), tmp_path / "src")
    src.run()
    exported = export_gan_generator(tmp_path / "src" / "checkpoints" / "latest.pt", tmp_path / "g.safetensors")
    want = {k: v.clone() for k, v in load_generator(exported)[0].state_dict().items()}
    # a run with another seed: without init_g its G would start elsewhere
    cfg = resolve_config(overrides=dict(TINY, steps=4, seed=9, init_g=str(exported), d_warmup_steps=3))
    run = GANTraining(cfg, tmp_path / "ft")
    for k, v in run.G.state_dict().items():
        assert torch.equal(v, want[k]), k
    for k, v in run.ema.shadow.state_dict().items():
        assert torch.equal(v, want[k]), k
    d0 = {k: v.clone() for k, v in run.D.state_dict().items()}
    after = []
    run.loop.sample_fn, run.loop.sample_every = (lambda step: after.append(
        (step, {k: v.detach().clone() for k, v in run.G.named_parameters()}))), 1
    run.run()
    stats = read_stats(tmp_path / "ft" / "stats.jsonl")
    assert [("G/loss" in r) for r in stats] == [False, False, False, True]  # the G phase from step 4 only
    for step, weights in after[:3]:  # D trained alone: G's weights are the file's
        assert all(torch.equal(v, want[k]) for k, v in weights.items()), step
    assert not all(torch.equal(v, want[k]) for k, v in after[3][1].items())  # then G trains
    assert [step for step, _ in after] == [1, 2, 3, 4]
    assert any(not torch.equal(v, d0[k]) for k, v in run.D.state_dict().items())  # D trained from step 1


def test_init_g_refuses_a_generator_built_differently_in_one_line(tmp_path):
    from attnorm.checkpoints import export_gan_generator
    src = GANTraining(resolve_config(overrides=dict(TINY, steps=1)), tmp_path / "src")
    src.run()
    exported = export_gan_generator(tmp_path / "src" / "checkpoints" / "latest.pt", tmp_path / "g.safetensors")
    with pytest.raises(ValueError, match=r"^init_g=.*g\.safetensors: that generator is built differently from this "
                                         r"run's \(ch: run 16, file 8\)"):
        GANTraining(resolve_config(overrides=dict(TINY, ch=16, init_g=str(exported))), tmp_path / "bad")
    with pytest.raises(ValueError, match=r"^init_g: generator checkpoint .*missing\.safetensors not found$"):
        GANTraining(resolve_config(overrides=dict(TINY, init_g=str(tmp_path / "missing.safetensors"))), tmp_path / "b2")


def test_amp_forced_on_a_cpu_without_native_bf16_warns_once_in_one_line(tmp_path, monkeypatch, caplog):
    from attnorm.training import config as training_config
    for native, warned in ((False, True), (True, False)):
        monkeypatch.setattr(training_config, "native_bf16_cpu", lambda native=native: native)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="attnorm.training.config"):
            GANTraining(resolve_config(overrides=dict(TINY, amp=True)), tmp_path / str(native))
        lines = [r.getMessage() for r in caplog.records if "native bf16" in r.getMessage()]
        assert len(lines) == (1 if warned else 0) and all("amp=false" in m and "\n" not in m for m in lines)
    caplog.clear()
    monkeypatch.setattr(training_config, "native_bf16_cpu", lambda: False)
    with caplog.at_level(logging.WARNING, logger="attnorm.training.config"):
        GANTraining(resolve_config(overrides=dict(TINY, amp=False)), tmp_path / "off")
    assert not [r for r in caplog.records if "native bf16" in r.getMessage()]
