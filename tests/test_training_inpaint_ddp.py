"""train-inpaint with 2 CPU processes (gloo): gradients averaged over the ranks, replicas in sync."""

import os

import pytest
import torch
import torch.distributed as dist
from _ddp import rank_process, spawn_two

from attnorm.training.loop import read_stats

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available in this build")

TINY = dict(resolution=32, width=0.125, critic_width=0.125, batch_size=2, d_steps=1, warmup_steps=1, steps=3,
            log_every=1, ckpt_every=3, sample_every=0, sample_count=2, ema_decay=0.9, ema_start=0,
            num_entities=4, threads=1)


def _worker(rank: int, port: int, tmp: str) -> None:
    with rank_process(rank, port, tmp) as out:
        from attnorm.training.distributed import average_gradients
        from attnorm.training.inpaint import InpaintTraining, resolve_config
        lin = torch.nn.Linear(2, 1, bias=False)
        lin.weight.grad = torch.full((1, 2), float(rank + 1))
        average_gradients(lin, 2)
        out["avg"] = lin.weight.grad.clone()
        trainer = InpaintTraining(resolve_config(overrides=TINY), os.path.join(tmp, "run"))
        out["init_G"] = {k: v.clone() for k, v in trainer.G.state_dict().items()}
        out["first_batch"] = trainer.data.next().load()[0].clone()
        trainer.data = type(trainer.data)(trainer.dataset, TINY["batch_size"], seed=trainer.cfg["seed"],
                                          rank=rank, world_size=2)  # rewind the stream
        trainer.loop.data = trainer.data
        trainer.run()
        out["G"] = {k: v.clone() for k, v in trainer.G.state_dict().items()}
        out["D"] = {k: v.clone() for k, v in trainer.D.state_dict().items()}
        out["step"] = trainer.loop.step


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inpaint_ddp")
    return tmp, spawn_two(_worker, tmp)


def test_gradients_are_averaged_over_ranks(ddp):
    _, (r0, r1) = ddp
    assert torch.equal(r0["avg"], torch.full((1, 2), 1.5)) and torch.equal(r1["avg"], r0["avg"])


def test_replicas_identical_after_adversarial_steps_and_data_differs(ddp):
    _, (r0, r1) = ddp
    assert r0["step"] == r1["step"] == 3
    assert not torch.equal(r0["first_batch"], r1["first_batch"])  # each rank its own slice
    for net in ("G", "D"):
        diff = [k for k in r0[net] if not torch.equal(r0[net][k], r1[net][k])]
        assert diff == [], f"{net} diverged between ranks: {diff[:3]}"
    moved = [k for k in r0["G"] if not torch.equal(r0["G"][k], r0["init_G"][k])]
    assert moved  # training did change the weights


def test_only_rank0_writes(ddp):
    tmp, _ = ddp
    run = tmp / "run"
    assert [r["step"] for r in read_stats(run / "stats.jsonl")] == [1, 2, 3]
    assert (run / "config.json").exists() and (run / "checkpoints" / "latest.pt").exists()
