"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is as fast and far more robust on a shared, busy 2-core CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def gan_run(tmp_path_factory):
    """One tiny `attnorm train-gan` run shared by the command and evaluation tests: 2 steps, batch 4,
    ch 8, 3 procedural classes of dataset seed 1, 3 fixed z per class in the sample grids."""
    from attnorm import cli
    out = tmp_path_factory.mktemp("gan_run")
    assert cli.main(["train-gan", "--out", str(out), "--steps", "2", "--batch-size", "4", "--seed", "1", "ch=8",
                     "procedural_classes=3", "procedural_length=64", "log_every=1", "samples_per_class=3"]) == 0
    return out


@pytest.fixture(scope="session")
def gan_ckpt(gan_run):
    """The checkpoint of :func:`gan_run`."""
    return gan_run / "checkpoints" / "latest.pt"
