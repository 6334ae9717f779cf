"""The Triton statistics kernels against the eager statistics and the layer's eager path
(the cases are in ``tests/triton_cases.py``).

They run where the ``triton`` package is installed: on a CUDA device when there is one, else on
the CPU through Triton's interpreter. Without Triton they are skipped (the package does not need
it; PyTorch's CUDA builds bring it). The cases run in a fresh process: Triton decides between
compiling and interpreting when a kernel is defined, and other tests (torch.compile's inductor)
import and configure Triton in this one."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _run_cases(env: dict, selection: str) -> int:
    cases = Path(__file__).with_name("triton_cases.py")
    res = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
                          "-p", "no:warnings", "-k", selection, str(cases)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    summary = res.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed(, \d+ skipped)?(, \d+ deselected)? in .*", summary), summary
    return int(summary.split()[0])


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package")
def test_triton_statistics_cases():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if torch.cuda.is_available():
        assert _run_cases(env, "") >= 50
    else:  # the parity cases in the interpreter; the kernels compiled (not run) for a Hopper GPU
        assert _run_cases({**env, "TRITON_INTERPRET": "1"}, "not hopper") >= 20
        assert _run_cases(env, "hopper") == 7
