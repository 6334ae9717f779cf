"""train-inpaint on the generic loop: exact kill-and-resume, L1-only warm-up, NaN stop, sheets, CLI."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from _cli import cli_error
from attnorm import cli
from attnorm.checkpoints import load_checkpoint, load_inpaint_generator as load_generator
from attnorm.training.inpaint import InpaintTraining, check_config, resolve_config
from attnorm.training.loop import NonFiniteLossError, read_stats



TINY = dict(resolution=32, width=0.125, critic_width=0.125, batch_size=2, d_steps=2, warmup_steps=1, steps=4,
            log_every=1, ckpt_every=2, sample_every=0, sample_count=2, ema_decay=0.9, ema_start=0, num_entities=4)


def _trainer(tmp, **kw):
    return InpaintTraining(resolve_config(overrides={**TINY, **kw}), tmp)


def _losses(run_dir):
    return [{k: v for k, v in r.items() if k not in ("time", "it_s")} for r in read_stats(run_dir / "stats.jsonl")]


class Killed(Exception):
    pass


class _KillAtStep3(logging.Handler):
    """Raises in the middle of the loop: when it logs the progress line of step 3."""

    def emit(self, record):
        if record.getMessage().startswith("step 3/"):
            raise Killed


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, caplog):
    a = _trainer(tmp_path / "a")
    a.run()
    # run b is "killed" while logging step 3: after its step-2 checkpoint and after writing step 3's record
    b = _trainer(tmp_path / "b")
    caplog.set_level(logging.INFO, logger="attnorm.training.loop")
    killer = _KillAtStep3()
    logging.getLogger("attnorm.training.loop").addHandler(killer)
    try:
        with pytest.raises(Killed):
            b.run()
    finally:
        logging.getLogger("attnorm.training.loop").removeHandler(killer)
    assert len(read_stats(tmp_path / "b" / "stats.jsonl")) == 3  # one record past the checkpoint
    b2 = _trainer(tmp_path / "b")
    b2.run(resume=True)
    la, lb = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert [r["step"] for r in lb] == [1, 2, 3, 4]
    assert la == lb  # bit-identical floats, adversarial steps included
    assert "D/gp_global" in la[-1] and "G/g_adv" in la[-1]
    for k, v in a.G.state_dict().items():
        assert torch.equal(v, b2.G.state_dict()[k]), k
    for k, v in a.D.state_dict().items():
        assert torch.equal(v, b2.D.state_dict()[k]), k
    for k, v in a.ema.shadow.state_dict().items():
        assert torch.equal(v, b2.ema.shadow.state_dict()[k]), k


def test_warmup_has_no_critic_update_and_no_adversarial_term(tmp_path):
    t = _trainer(tmp_path, warmup_steps=2, steps=2, ckpt_every=0)
    d0 = {k: v.clone() for k, v in t.D.state_dict().items()}
    g0 = {k: v.clone() for k, v in t.G.state_dict().items()}
    t.run()
    assert all(torch.equal(v, t.D.state_dict()[k]) for k, v in d0.items())  # critics untouched
    assert not t.opt_d.state  # Adam never saw a gradient
    assert any(not torch.equal(v, t.G.state_dict()[k]) for k, v in g0.items())  # G trained
    for r in read_stats(tmp_path / "stats.jsonl"):
        assert r["D/adv_weight"] == 0 and r["G/adv_weight"] == 0
        assert "G/g_adv" not in r and "D/loss" not in r
        # independent recomputation: the G loss is the weighted L1 + orthogonality terms alone
        expected = 1.4 * r["G/hole_l1"] + 1.2 * r["G/known_l1"] + 0.2 * r["G/ortho"]
        assert r["G/loss"] == pytest.approx(expected, rel=1e-5)
    # after the warm-up the critics train and the adversarial weight is gan_weight
    t.loop.total_steps = 3
    t.run()
    last = read_stats(tmp_path / "stats.jsonl")[-1]
    assert last["step"] == 3 and last["G/adv_weight"] == pytest.approx(1e-3)
    assert last["G/loss"] == pytest.approx(1.4 * last["G/hole_l1"] + 1.2 * last["G/known_l1"]
                                           + 0.2 * last["G/ortho"] + 1e-3 * last["G/g_adv"], rel=1e-5)
    assert any(not torch.equal(v, t.D.state_dict()[k]) for k, v in d0.items())


def test_nan_stops_before_update_and_keeps_checkpoint(tmp_path):
    t = _trainer(tmp_path, steps=2, ckpt_every=2, warmup_steps=0)
    t.run()
    ckpt = tmp_path / "checkpoints" / "latest.pt"
    before = ckpt.read_bytes()
    with torch.no_grad():
        p = next(t.G.parameters())
        p[(0,) * p.dim()] = float("nan")  # (an index, not .view(-1): the weights may be channels-last)
    t.loop.total_steps = 4
    with pytest.raises(NonFiniteLossError, match=r"step 3.*latest\.pt \(step 2\)"):
        t.run()
    assert ckpt.read_bytes() == before and t.loop.step == 2


def test_sample_sheet_columns(tmp_path):
    t = _trainer(tmp_path, steps=1, sample_every=1, ckpt_every=0)
    t.run()
    sheet = np.asarray(Image.open(tmp_path / "samples" / "step_0000001.png"))
    r, pad = 32, 2
    assert sheet.shape == (2 * (r + pad) + pad, 5 * (r + pad) + pad, 3)

    def tile(row, col):
        y, x = pad + row * (r + pad), pad + col * (r + pad)
        return sheet[y:y + r, x:x + r]

    gt = ((t.sample_x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    hole = t.sample_m[:, 0].numpy() >= 0.5
    for i in range(2):
        np.testing.assert_array_equal(tile(i, 4), gt[i])  # ground truth
        assert (tile(i, 0)[hole[i]] == 255).all()  # input: hole shown white
        np.testing.assert_array_equal(tile(i, 0)[~hole[i]], gt[i][~hole[i]])
        np.testing.assert_array_equal(tile(i, 3)[~hole[i]], gt[i][~hole[i]])  # composite keeps known pixels
        np.testing.assert_array_equal(tile(i, 3)[hole[i]], tile(i, 2)[hole[i]])  # ... and the refined hole


def test_masks_per_sample_and_patch_critic(tmp_path):
    t = _trainer(tmp_path, critic="patch", steps=1, warmup_steps=0, ckpt_every=0)
    assert t.cfg["mask_kind"] == "mixed"
    x, m = t.dataset.load([0, 1, 2, 3])
    assert x.shape == (4, 3, 32, 32) and m.shape == (4, 1, 32, 32)
    assert len({tuple(mm.flatten().tolist()) for mm in m}) == 4  # a different mask per sample
    t.run()
    assert "D/d_hinge" in read_stats(tmp_path / "stats.jsonl")[-1]
    with pytest.raises(ValueError, match="unknown config key"):
        resolve_config(overrides={"stpes": 3})


def test_cli_run_then_inpaint_loads_ema(tmp_path, capsys):
    run = tmp_path / "run"
    overrides = [f"{k}={json.dumps(v)}" for k, v in TINY.items() if k not in ("steps",)]
    assert cli.main(["train-inpaint", "--out", str(run), "--steps", "2", *overrides, "ema_decay=0.5", "d_steps=1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run folder: {run}") and "step 2/2 | " in out and "stopped at step 2 (done)" in out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["steps"] == 2 and cfg["mask_kind"] == "box" and cfg["lr_g"] == 1e-4 and cfg["betas"] == [0.5, 0.9]
    # resume with a new step count continues from step 2
    assert cli.main(["train-inpaint", "--out", str(run), "--resume", "steps=3"]) == 0
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert state["step"] == 3
    g = load_generator(run / "checkpoints" / "latest.pt")
    assert g.config == state["extra"]["generator"]
    ema, raw = state["ema"]["shadow"], state["modules"]["G"]
    assert all(torch.equal(v, ema[k]) for k, v in g.state_dict().items())
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)
    g_raw = load_generator(run / "checkpoints" / "latest.pt", use_ema=False)
    assert all(torch.equal(v, raw[k]) for k, v in g_raw.state_dict().items())
    # export-inpaint: the EMA (or, with --no-ema, the trained) weights as .safetensors, with provenance
    ckpt = str(run / "checkpoints" / "latest.pt")
    assert cli.main(["export-inpaint", ckpt, str(tmp_path / "g.safetensors")]) == 0
    assert cli.main(["export-inpaint", ckpt, str(tmp_path / "raw.safetensors"), "--no-ema"]) == 0
    assert f"wrote {tmp_path / 'g.safetensors'}" in capsys.readouterr().out
    for name, weights, ref in (("g", "ema", ema), ("raw", "G", raw)):
        with safe_open(str(tmp_path / f"{name}.safetensors"), framework="pt") as f:
            meta = json.loads(f.metadata()["meta"])
            assert json.loads(f.metadata()["config"]) == state["extra"]["generator"]
            assert sorted(f.keys()) == sorted(ref) and all(torch.equal(f.get_tensor(k), ref[k]) for k in ref)
        assert meta["weights"] == weights and meta["step"] == 3 and meta["source"] == "latest.pt"
        assert meta["train_config"] == state["extra"]["config"]
    exported = load_generator(tmp_path / "g.safetensors")
    assert all(torch.equal(v, ema[k]) for k, v in exported.state_dict().items())
    assert "not found" in cli_error(capsys, ["export-inpaint", str(tmp_path / "none.pt"), str(tmp_path / "x.st")])
    torch.save({**state, "extra": {**state["extra"], "task": "gan"}}, tmp_path / "gan.pt")
    assert "gan.pt is a checkpoint of train-gan" in cli_error(capsys, ["export-inpaint", str(tmp_path / "gan.pt"),
                                                                      str(tmp_path / "x.safetensors")])
    assert "it must end with .safetensors, e.g." in cli_error(capsys, ["export-inpaint", ckpt, str(tmp_path / "x.st")])
    assert "config.json not found" in cli_error(capsys, ["train-inpaint", "--out", str(tmp_path / "nope"), "--resume"])
    assert "unknown config key" in cli_error(capsys, ["train-inpaint", "--out", str(tmp_path / "x"), "stpes=3"])
    assert "expected key=value" in cli_error(capsys, ["train-inpaint", "--out", str(tmp_path / "x"), "steps"])


def test_channels_last_is_on_by_default_and_trains_the_same_steps(tmp_path):
    assert check_config(resolve_config())["channels_last"] is True  # null resolves to on, on the CPU too
    assert check_config(resolve_config(overrides={"channels_last": False}))["channels_last"] is False
    runs = {}
    for cl in (True, False):
        run = _trainer(tmp_path / str(cl), channels_last=cl, steps=3)
        convs = [m.weight for net in (run.G, run.D) for m in net.modules()
                 if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]  # a 1x1 kernel is both formats
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) is cl for w in convs)
        run.run()
        runs[cl] = _losses(tmp_path / str(cl))
    # the layout changes the kernels' order of summation, not the maths (L1 warm-up step, then adversarial)
    assert [r["step"] for r in runs[True]] == [1, 2, 3] and "G/g_adv" in runs[True][-1]
    for a, b in zip(runs[True], runs[False]):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-4), k
