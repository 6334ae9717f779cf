"""Generic training loop (attnorm.training.loop) on a toy regression: no GAN involved."""

import json
import logging
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from attnorm.checkpoints import load_checkpoint
from attnorm.training.loop import (EMA, BatchStream, NonFiniteLossError, Phase, TrainingLoop, get_rng_state,
                                   read_stats, set_rng_state)



class ToyData:
    """y = x @ w_true + noise; labels are unused ints."""

    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return torch.cat([self.x[i], self.y[i:i + 1]]), 0


class ToyLoss:
    """Phase "fit": MSE plus a term using all three RNGs, so resume must restore them."""

    def __init__(self, model, nan_at=None):
        self.model, self.nan_at, self.calls = model, nan_at, 0

    def run_phase(self, name, batch):
        self.calls += 1
        xy, _ = batch
        noise = torch.randn(()) * 1e-3 + float(np.random.rand()) * 1e-3 + random.random() * 1e-3
        loss = (self.model(xy[:, :4]).squeeze(1) - xy[:, 4]).pow(2).mean() + noise
        if self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float("nan")
        loss.backward()
        return {"fit/loss": loss.detach(), "fit/noise": noise}


def make_loop(run_dir, steps, nan_at=None, **kw):
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.3)
    ema = EMA(model, decay=0.9)
    loop = TrainingLoop([Phase("fit", model, opt)], ToyLoss(model, nan_at), BatchStream(ToyData(), 8, seed=1),
                        run_dir, total_steps=steps, ema=ema, log_every=1,
                        extra_state={"config": {"width": 4, "name": "toy"}}, **kw)
    return loop, model, ema


def losses(run_dir):
    return [(r["step"], r["fit/loss"]) for r in read_stats(run_dir / "stats.jsonl")]


def test_resume_is_exact(tmp_path):
    full, model_full, _ = make_loop(tmp_path / "a", 12, ckpt_every=5)
    full.run()

    class Kill(Exception):
        pass

    def kill_at_7(step):
        if step == 7:
            raise Kill()

    part, _, _ = make_loop(tmp_path / "b", 12, ckpt_every=5, sample_every=1, sample_fn=kill_at_7)
    with pytest.raises(Kill):
        part.run()
    assert [s for s, _ in losses(tmp_path / "b")] == list(range(1, 8))  # steps 6, 7 ran past the checkpoint
    resumed, model_res, ema_res = make_loop(tmp_path / "b", 12, ckpt_every=5)
    assert resumed.resume() == 5
    resumed.run()
    assert losses(tmp_path / "b") == losses(tmp_path / "a")  # identical floats, no duplicated steps
    assert torch.equal(model_full.weight, model_res.weight)
    assert torch.equal(full.ema.shadow.weight, ema_res.shadow.weight)
    # the loss did go down: the loop really trains
    first, last = losses(tmp_path / "a")[0][1], losses(tmp_path / "a")[-1][1]
    assert last < 0.5 * first


def test_keep_every_keeps_each_such_steps_checkpoint_beside_latest(tmp_path):
    # every 3rd step's state is kept (also where ckpt_every does not fall), as it was at that step
    loop, model, _ = make_loop(tmp_path / "a", 7, ckpt_every=5, keep_every=3)
    weights = {}
    real_step = loop.train_step

    def recording_step():
        out = real_step()
        weights[loop.step + 1] = model.weight.detach().clone()  # the weights that step ends with
        return out
    loop.train_step = recording_step
    loop.run()
    ck = tmp_path / "a" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["latest.pt", "step_0000003.pt", "step_0000006.pt"]
    for step in (3, 6):
        state = load_checkpoint(ck / f"step_{step:07d}.pt")
        assert state["step"] == step
        assert torch.equal(state["modules"]["fit"]["weight"], weights[step])
    assert not torch.equal(weights[3], weights[6])
    assert load_checkpoint(ck / "latest.pt")["step"] == 7
    # a kept checkpoint resumes like latest.pt: from step 3 to 7 it ends where the uninterrupted run did
    again, model_again, _ = make_loop(tmp_path / "b", 7, ckpt_every=0)
    again.resume(ck / "step_0000003.pt")
    again.run()
    assert again.step == 7 and torch.equal(model_again.weight, model.weight)


def test_keep_every_copies_where_hard_links_are_refused(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError("links not supported here")
    monkeypatch.setattr("attnorm.training.loop.os.link", no_links)
    loop, model, _ = make_loop(tmp_path, 2, ckpt_every=0, keep_every=2)
    loop.run()
    ck = tmp_path / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["latest.pt", "step_0000002.pt"]  # no temporary file left
    assert (ck / "step_0000002.pt").read_bytes() == (ck / "latest.pt").read_bytes()
    assert (ck / "step_0000002.pt").stat().st_ino != (ck / "latest.pt").stat().st_ino  # a copy, not a link


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    loop, model, _ = make_loop(tmp_path, 4, ckpt_every=2)
    loop.run()
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["latest.pt"]  # no temporary file left behind
    state = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")  # torch.load(weights_only=True)
    assert state["step"] == 4 and state["extra"]["config"] == {"width": 4, "name": "toy"}
    assert torch.equal(state["modules"]["fit"]["weight"], model.weight)
    assert isinstance(state["rng"]["torch"], torch.Tensor)


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    loop, model, _ = make_loop(tmp_path, 10, nan_at=6, ckpt_every=2)
    with pytest.raises(NonFiniteLossError, match=r"step 6: fit/loss = nan.*latest.pt \(step 4\)"):
        loop.run()
    state = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["modules"]["fit"].values())
    assert all(math.isfinite(r["fit/loss"]) for r in read_stats(tmp_path / "stats.jsonl"))
    # the NaN step was not applied to the weights
    assert torch.isfinite(model.weight).all()


def test_nan_before_any_checkpoint(tmp_path):
    loop, _, _ = make_loop(tmp_path, 10, nan_at=1, ckpt_every=5)
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written yet"):
        loop.run()


def test_ema_matches_reference():
    m = nn.Linear(2, 1)
    ema = EMA(m, decay=0.8)
    ref = m.weight.detach().clone()
    for k in range(3):
        with torch.no_grad():
            m.weight.add_(1.0 + k)
        ema.update()
        ref = 0.8 * ref + 0.2 * m.weight.detach()
    torch.testing.assert_close(ema.shadow.weight, ref)
    warm = EMA(m, decay=0.8, start_step=1)
    with torch.no_grad():
        m.weight.add_(5.0)
    warm.update()  # before start_step the shadow copies the module
    assert torch.equal(warm.shadow.weight, m.weight)


def test_ema_copies_buffers_of_every_dtype():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(m, decay=0.9)
    m.train()
    m(torch.randn(8, 3))  # moves running_mean/var (float) and num_batches_tracked (int64)
    ema.update()
    for (name, b), bs in zip(m.named_buffers(), ema.shadow.buffers()):
        assert torch.equal(bs, b) and bs.dtype == b.dtype, name


def test_grad_norm_is_the_norm_of_all_gradients_together():
    from attnorm.training.loop import _grad_norm
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False))
    g = torch.Generator().manual_seed(0)
    for p in m.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    m[0].bias.grad = None  # parameters without a gradient are left out
    want = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in m.parameters() if p.grad is not None))
    assert _grad_norm(m) == pytest.approx(want, rel=1e-6)
    assert _grad_norm(nn.Linear(2, 2)) == 0.0


def test_batch_stream_epochs_and_ranks():
    ds = ToyData(20)
    s = BatchStream(ds, 4, seed=3)
    seen = [s.next()[0][:, 0] for _ in range(5)]  # one epoch: each item exactly once
    allx = torch.cat(seen)
    assert sorted(allx.tolist()) == sorted(ds.x[:, 0].tolist())
    state = s.state_dict()
    nxt = s.next()[0]
    s2 = BatchStream(ds, 4, seed=3)
    s2.load_state_dict(state)
    assert torch.equal(s2.next()[0], nxt)
    r0, r1 = BatchStream(ds, 2, seed=3, rank=0, world_size=2), BatchStream(ds, 2, seed=3, rank=1, world_size=2)
    assert torch.equal(torch.cat([r0.next()[0], r1.next()[0]]), BatchStream(ds, 4, seed=3).next()[0])


def test_rng_state_roundtrip():
    state = get_rng_state()
    a = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    json.dumps(state["python"])  # plain types


def test_progress_lines_go_to_the_logger(tmp_path, caplog):
    loop, _, _ = make_loop(tmp_path, 3)
    with caplog.at_level(logging.INFO, logger="attnorm.training.loop"):
        loop.run()
    lines = [r.getMessage() for r in caplog.records if r.name == "attnorm.training.loop"]
    stats = read_stats(tmp_path / "stats.jsonl")
    assert len(lines) == 3 and all(r.levelno == logging.INFO for r in caplog.records)
    for line, rec in zip(lines, stats):  # each line: step, the interval's losses (as in stats.jsonl), speed
        assert line.startswith(f"step {rec['step']}/3 | fit/loss {rec['fit/loss']:.4f} fit/noise ")
        assert line.endswith(" it/s") and "grad_norm" not in line
    other = make_loop(tmp_path / "quiet", 2, is_main=False)[0]  # DDP ranks > 0 log nothing
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="attnorm.training.loop"):
        other.run()
    assert not caplog.records


def test_resume_applies_the_optimizer_settings_it_was_built_with(tmp_path):
    """Issue 12 (X3): a resumed loop keeps the learning rate / betas of its (new) optimizers, not the
    checkpoint's, and says what changed; with apply_optimizer_settings=False it restores them as saved."""
    first, _, _ = make_loop(tmp_path, 2, ckpt_every=2)
    first.run()
    again, model, _ = make_loop(tmp_path, 4)
    opt = again.phases[0].optimizer
    opt.param_groups[0]["lr"], opt.param_groups[0]["betas"] = 0.05, (0.5, 0.9)
    assert again.resume() == 2
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["betas"] == (0.5, 0.9)
    assert again.resume_changes == {"fit": {"lr": [0.3, 0.05], "betas": [[0.9, 0.999], [0.5, 0.9]]}}
    assert opt.state[model.weight]["step"] == 2  # the moments and step count are the checkpoint's
    event = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[-1])
    assert event["event"] == "resume" and event["step"] == 2 and event["changed"] == again.resume_changes
    kept, _, _ = make_loop(tmp_path, 4)
    kept.phases[0].optimizer.param_groups[0]["lr"] = 0.05
    kept.resume(apply_optimizer_settings=False)
    assert kept.phases[0].optimizer.param_groups[0]["lr"] == 0.3 and kept.resume_changes == {}


def test_interrupt_finishes_the_step_checkpoints_and_resumes_exactly(tmp_path):
    """Issue 12 (M15): SIGINT during a step -> the step completes, a checkpoint of it is written,
    run() returns with stop_reason "interrupted"; resuming gives the uninterrupted run's numbers."""
    import os
    import signal
    full, model_full, _ = make_loop(tmp_path / "a", 8, ckpt_every=0)
    full.run()
    part, _, _ = make_loop(tmp_path / "b", 8, ckpt_every=0)
    loss = part.loss
    real = loss.run_phase

    def run_phase(name, batch):
        if loss.calls == 4:  # during step 5
            os.kill(os.getpid(), signal.SIGINT)
        return real(name, batch)
    loss.run_phase = run_phase
    before = signal.getsignal(signal.SIGINT)  # default, or SIG_IGN in a background job
    part.run()
    assert part.stop_reason == "interrupted" and part.step == 5
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")["step"] == 5
    assert signal.getsignal(signal.SIGINT) is before  # the handler in place before the run is back
    resumed, model_res, _ = make_loop(tmp_path / "b", 8, ckpt_every=0)
    resumed.resume()
    resumed.run()
    assert losses(tmp_path / "b") == losses(tmp_path / "a") and torch.equal(model_full.weight, model_res.weight)


def test_resume_refuses_other_checkpoints_in_one_line(tmp_path):
    from attnorm.errors import CheckpointError
    loop, _, _ = make_loop(tmp_path, 1)
    loop.run()
    other, _, _ = make_loop(tmp_path, 2)
    other.extra_state = {"task": "inpaint"}
    state = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    state["extra"]["task"] = "gan"
    torch.save(state, tmp_path / "gan.pt")
    with pytest.raises(CheckpointError, match="is a checkpoint of train-gan, not of train-inpaint"):
        other.resume(tmp_path / "gan.pt")
    wider = TrainingLoop([Phase("fit", nn.Linear(5, 1), torch.optim.Adam(nn.Linear(5, 1).parameters()))],
                         None, BatchStream(ToyData(), 8), tmp_path, total_steps=2)
    with pytest.raises(CheckpointError, match="does not fit this run's models .*size mismatch"):
        wider.resume()
    (tmp_path / "stats.jsonl").write_text('{"step": 1}\n{"step": 2, "fit/lo')  # a line torn by kill -9
    make_loop(tmp_path, 2)[0].resume()
    assert [r["step"] for r in read_stats(tmp_path / "stats.jsonl")] == [1]


class RecordingSGD(torch.optim.SGD):
    """Plain SGD that records the learning rate each update used."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.used: list[float] = []

    def step(self, closure=None):
        self.used.append(self.param_groups[0]["lr"])
        return super().step(closure)


def schedule_loop(run_dir, steps, schedule, **kw):
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    model = nn.Linear(4, 1)
    opt = RecordingSGD(model.parameters(), lr=0.1)
    loop = TrainingLoop([Phase("fit", model, opt)], ToyLoss(model), BatchStream(ToyData(), 8, seed=1), run_dir,
                        total_steps=steps, log_every=1, lr_schedule=schedule, **kw)
    return loop, model, opt


def test_final_learning_rate_scales_the_last_fraction_of_the_steps_only(tmp_path):
    """The two-phase recipe inside one run: the last half of 6 steps at a quarter of the rate; the
    optimizer keeps its base rate (what a checkpoint holds), so resuming reports no changed setting."""
    from attnorm.training.config import FinalLearningRate
    loop, model, opt = schedule_loop(tmp_path, 6, FinalLearningRate(0.5, 0.25), ckpt_every=4)
    w0 = model.weight.detach().clone()
    loop.run()
    assert opt.used == pytest.approx([0.1, 0.1, 0.1, 0.025, 0.025, 0.025])
    assert opt.param_groups[0]["lr"] == 0.1
    assert [r["lr_mult"] for r in read_stats(tmp_path / "stats.jsonl")] == [1, 1, 1, 0.25, 0.25, 0.25]
    assert not torch.equal(model.weight, w0)
    saved = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert saved["optimizers"]["fit"]["param_groups"][0]["lr"] == 0.1
    again, _, opt2 = schedule_loop(tmp_path, 8, FinalLearningRate(0.5, 0.25))
    assert again.resume() == 6 and again.resume_changes == {}
    again.run()  # steps 7, 8 of 8: past the first half
    assert opt2.used == pytest.approx([0.025, 0.025])


def test_progress_is_the_further_of_steps_and_time(tmp_path):
    from attnorm.training.config import FinalLearningRate
    loop, _, _ = schedule_loop(tmp_path, 10, None, max_seconds=100)
    loop.step, loop.elapsed = 3, 50.0
    assert loop.progress() == 0.5
    loop.elapsed = 10.0
    assert loop.progress() == pytest.approx(0.3)
    loop.elapsed = 500.0
    assert loop.progress() == 1.0
    sched = FinalLearningRate(0.3, 0.25)
    assert [sched(p) for p in (0.0, 0.69, 0.7, 1.0)] == [1.0, 1.0, 0.25, 0.25]
    assert FinalLearningRate.from_config({"lr_final_fraction": 0.0, "lr_final_mult": 0.25}) is None
    assert FinalLearningRate.from_config({}) is None
    with pytest.raises(ValueError, match="lr_final_fraction"):
        FinalLearningRate(1.5, 0.25)
