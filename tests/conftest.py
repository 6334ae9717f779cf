"""Shared test settings."""

import os

# The suite runs in one worker per core (pytest-xdist, pyproject.toml). A test that runs torch on two threads then
# shares the cores with the other workers, and OpenMP's default of spinning at every barrier made such tests 5-7x
# slower (a demo run on the idle cores, now in tests/test_gan_cli.py's min-steps test: 3.6 s alone, 26 s beside
# another worker); sleeping threads cost little.
# Set before torch (and its OpenMP runtime) load; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


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


@pytest.fixture(scope="session")
def inpaint_run(tmp_path_factory):
    """One tiny `attnorm train-inpaint` run (2 steps, 16 px, width 0.125, global+local critics after
    one warm-up step), for the probes that need a train-inpaint checkpoint."""
    from attnorm import cli
    out = tmp_path_factory.mktemp("inpaint_run")
    assert cli.main(["train-inpaint", "--out", str(out), "--steps", "2", "--batch-size", "2", "--resolution", "16",
                     "width=0.125", "critic_width=0.125", "warmup_steps=1", "d_steps=1", "num_entities=4",
                     "sample_count=1"]) == 0
    return out


@pytest.fixture(scope="session")
def inpaint_gen(tmp_path_factory):
    """A tiny untrained inpainting generator file (save_inpaint_generator format)."""
    from attnorm.checkpoints import save_inpaint_generator
    from attnorm.models.inpaint import InpaintGenerator
    path = tmp_path_factory.mktemp("inpaint_gen") / "g.pt"
    torch.manual_seed(0)
    save_inpaint_generator(path, InpaintGenerator(width=0.125, num_entities=4))
    return path
