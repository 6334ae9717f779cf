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
