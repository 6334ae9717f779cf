"""GAN training under DistributedDataParallel: 2 CPU processes, gloo, tiny 16 px models.

One ``torch.multiprocessing.spawn`` (module fixture) runs every scenario in the same process
group and dumps each rank's final state; the tests compare the ranks' dumps and the run folders.
"""

import os
import traceback
import types

import pytest
import torch
import torch.distributed as dist
from _ddp import free_port, rank_process, spawn_two
from torch import nn

from attnorm.checkpoints import load_checkpoint
from attnorm.training.loop import read_stats

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available in this build")

TINY = dict(resolution=16, ch=8, batch_size=4, procedural_classes=4, procedural_length=64, log_every=1,
            ckpt_every=2, sample_every=0, samples_per_class=1, ema_decay=0.9, ema_start=1, threads=1)
TIME_LIMIT = 1.5  # s; rank 1's clock is made to run 50x faster in that scenario


def _state(trainer) -> dict:
    """A rank's final G/D/EMA state (clones) and loop outcome."""
    def sd(m):
        return {k: v.detach().clone() for k, v in m.state_dict().items()}
    return {"G": sd(trainer.G), "D": sd(trainer.D), "ema": sd(trainer.ema.shadow), "step": trainer.loop.step,
            "stop": trainer.loop.stop_reason,
            "bn_types": sorted({type(m).__name__ for m in trainer.G.modules() if isinstance(m, nn.BatchNorm2d)})}


def _bn_scenario(rank: int) -> dict:
    """DistributedBatchNorm2d on half of a global batch vs BatchNorm2d on all of it (parent checks)."""
    from attnorm.models.gan import DistributedBatchNorm2d
    torch.manual_seed(0)
    xg, wg = torch.randn(8, 3, 5, 5) * 3 + 1, torch.randn(8, 3, 5, 5)  # the same on both ranks
    bn = DistributedBatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.0, 0.3]))
    x = xg[rank * 4:(rank + 1) * 4].clone().requires_grad_(True)
    y = bn(x)
    (y * wg[rank * 4:(rank + 1) * 4]).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "running_mean": bn.running_mean.clone(),
            "running_var": bn.running_var.clone()}


def _worker(rank: int, port: int, tmp: str) -> None:
    # short timeout: a collective mismatch (e.g. ranks stopping at different steps) fails, not hangs
    with rank_process(rank, port, tmp, timeout_s=30) as out:
        from attnorm.training import loop as loop_mod
        from attnorm.training.gan import GANTraining, resolve_config
        out["bn"] = _bn_scenario(rank)

        def train(name, resume=False, **kw):
            t = GANTraining(resolve_config(overrides=dict(TINY, **kw)), os.path.join(tmp, name))
            t.run(resume=resume)
            return _state(t)

        out["a3"] = train("a", steps=3)                     # interrupted after 3 steps (checkpoint at 3)...
        out["a5"] = train("a", steps=5, resume=True)        # ...resumed to 5
        out["b5"] = train("b", steps=5)                     # uninterrupted 5 steps
        out["sync"] = train("sync", steps=3, sync_bn=True)  # G's BN over the global batch
        # R1 (double backward through DDP's forward) and LeCam, on the conv D
        out["r1"] = train("r1", steps=3, d_arch="conv", r1=1.0, lecam=0.1)
        # shared fakes: G's DDP forward in the D phase, its backward in the G phase
        out["share"] = train("share", steps=3, share_fakes=True, mode_seeking=1.0)
        real_time = loop_mod.time
        if rank == 1:  # rank 1 alone would pass the time limit after its first step
            loop_mod.time = types.SimpleNamespace(perf_counter=lambda: 50.0 * real_time.perf_counter())
        try:  # last scenario: a collective timeout here fails only its own test
            # with a learning-rate schedule on the same clock: the second half of the time at a quarter
            out["timed"] = train("timed", steps=100000, max_seconds=TIME_LIMIT, ckpt_every=0, log_every=1,
                                 lr_final_fraction=0.5, lr_final_mult=0.25)
        except Exception:
            out["timed"] = {"error": traceback.format_exc()}
        finally:
            loop_mod.time = real_time


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    return tmp, spawn_two(_worker, tmp)


def _same(a: dict, b: dict, keys=None) -> list[str]:
    """Names of the entries that differ (exactly) between two state dicts."""
    return [k for k in (keys or a) if not torch.equal(a[k], b[k])]


def _param_keys(G_or_D: dict) -> list[str]:
    return [k for k in G_or_D if not any(s in k for s in ("running_", "num_batches", "_u", "_v"))]


def test_replicas_stay_identical_while_ranks_see_different_data(ddp):
    _, (r0, r1) = ddp
    for net in ("G", "D"):
        assert _same(r0["b5"][net], r1["b5"][net], _param_keys(r0["b5"][net])) == [], f"{net} weights diverged"
    assert _same(r0["b5"]["D"], r1["b5"]["D"]) == []  # D's buffers (SN vectors) follow identical weights
    # without sync_bn each rank keeps its own BN statistics: proof that the ranks got different batches
    bn_keys = [k for k in r0["b5"]["G"] if k.endswith("running_mean")]
    assert bn_keys and _same(r0["b5"]["G"], r1["b5"]["G"], bn_keys) != []
    assert r0["b5"]["bn_types"] == ["BatchNorm2d"]


def test_r1_and_lecam_train_under_ddp_with_identical_replicas(ddp):
    tmp, (r0, r1) = ddp
    for net in ("G", "D"):
        assert _same(r0["r1"][net], r1["r1"][net], _param_keys(r0["r1"][net])) == [], f"{net} weights diverged"
    stats = read_stats(tmp / "r1" / "stats.jsonl")
    assert [r["step"] for r in stats] == [1, 2, 3]
    assert all(r["D/r1"] > 0 and r["D/lecam"] >= 0 for r in stats)


def test_shared_fakes_train_under_ddp_with_identical_replicas(ddp):
    tmp, (r0, r1) = ddp
    for net in ("G", "D"):
        assert _same(r0["share"][net], r1["share"][net], _param_keys(r0["share"][net])) == [], f"{net} weights diverged"
    stats = read_stats(tmp / "share" / "stats.jsonl")
    assert [r["step"] for r in stats] == [1, 2, 3] and all(r["G/grad_norm"] > 0 for r in stats)


def test_only_rank0_writes_one_run_folder(ddp):
    tmp, (r0, _) = ddp
    run = tmp / "b"
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert files == ["checkpoints/latest.pt", "config.json", "samples/step_0000005.png", "stats.jsonl"]
    stats = read_stats(run / "stats.jsonl")
    assert [r["step"] for r in stats] == [1, 2, 3, 4, 5]  # one writer: no duplicated records
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert state["step"] == 5 and len(state["rng_per_rank"]) == 2
    assert _same(state["modules"]["G"], r0["b5"]["G"]) == []
    assert _same(state["ema"]["shadow"], r0["b5"]["ema"]) == []


def test_resume_under_ddp_equals_the_uninterrupted_run(ddp):
    tmp, ranks = ddp
    for r in ranks:
        assert r["a3"]["step"] == 3 and r["a5"]["step"] == 5
        for net in ("G", "D", "ema"):
            assert _same(r["a5"][net], r["b5"][net]) == [], f"resumed {net} differs"
        assert _same(r["a3"]["G"], r["a5"]["G"], _param_keys(r["a3"]["G"])) != []  # it did train on
    loss_keys = ("D/loss", "D/real", "D/fake", "G/loss")
    a = [[rec[k] for k in loss_keys] for rec in read_stats(tmp / "a" / "stats.jsonl")]
    b = [[rec[k] for k in loss_keys] for rec in read_stats(tmp / "b" / "stats.jsonl")]
    assert a == b and len(a) == 5


def test_distributed_batchnorm_equals_batchnorm_over_the_global_batch(ddp):
    _, (r0, r1) = ddp
    torch.manual_seed(0)
    xg, wg = torch.randn(8, 3, 5, 5) * 3 + 1, torch.randn(8, 3, 5, 5)
    bn = nn.BatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.0, 0.3]))
    x = xg.clone().requires_grad_(True)
    y = bn(x)
    (y * wg).sum().backward()
    torch.testing.assert_close(torch.cat([r0["bn"]["y"], r1["bn"]["y"]]), y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r0["bn"]["x_grad"], r1["bn"]["x_grad"]]), x.grad, atol=1e-5, rtol=1e-5)
    for r in (r0, r1):
        torch.testing.assert_close(r["bn"]["running_mean"], bn.running_mean)
        torch.testing.assert_close(r["bn"]["running_var"], bn.running_var)


def test_sync_bn_shares_statistics_and_checkpoint_loads_into_plain_generator(ddp):
    from attnorm.models.gan import Generator
    from attnorm.checkpoints import load_gan_generator as load_generator
    tmp, (r0, r1) = ddp
    assert r0["sync"]["bn_types"] == ["DistributedBatchNorm2d"]
    assert _same(r0["sync"]["G"], r1["sync"]["G"]) == []  # weights and BN running statistics
    g, _ = load_generator(tmp / "sync" / "checkpoints" / "latest.pt", use_ema=False)
    assert type(g) is Generator and all(type(m) is nn.BatchNorm2d for m in g.modules()
                                        if isinstance(m, nn.BatchNorm2d))
    assert _same(g.state_dict(), r0["sync"]["G"]) == []
    with torch.no_grad():
        assert torch.isfinite(g(torch.randn(2, g.z_dim), torch.tensor([0, 1]))).all()


def test_time_limit_stops_every_rank_at_the_same_step(ddp):
    tmp, (r0, r1) = ddp
    s0, s1 = r0["timed"], r1["timed"]
    assert "error" not in s0 and "error" not in s1, s0.get("error", "") + s1.get("error", "")
    assert s0["step"] == s1["step"] and 1 <= s0["step"] < 100000
    assert s0["stop"] == s1["stop"] == f"time limit of {TIME_LIMIT:.0f} s reached"
    assert load_checkpoint(tmp / "timed" / "checkpoints" / "latest.pt")["step"] == s0["step"]
    assert s0["step"] > 1  # rank 0's clock decided, not rank 1's fast one
    # the learning-rate schedule followed rank 0's clock on both ranks: identical replicas, the rate
    # lowered part-way (rank 1's own clock would have lowered it from its second step)
    for net in ("G", "D"):
        assert _same(s0[net], s1[net], _param_keys(s0[net])) == [], f"{net} weights diverged"
    mults = [r["lr_mult"] for r in read_stats(tmp / "timed" / "stats.jsonl")]
    assert mults[:2] == [1.0, 1.0] and mults[-1] == 0.25 and mults == sorted(mults, reverse=True)


def test_torchrun_cli_two_processes(tmp_path):
    """`attnorm train-gan` under torchrun: exits 0, rank 0 alone prints and writes."""
    import subprocess
    import sys
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "attnorm.cli", "train-gan", "--out", str(out), "--steps", "2",
           "resolution=16", "ch=8", "batch_size=4", "procedural_classes=4", "procedural_length=64", "log_every=1",
           "sample_every=0", "samples_per_class=1", "threads=1", "sync_bn=true"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    assert res.stdout.count("stopped at step 2 (done)") == 1 and res.stdout.count("run folder:") == 1
    assert [r["step"] for r in read_stats(out / "stats.jsonl")] == [1, 2]
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["extra"]["config"]["sync_bn"] is True
