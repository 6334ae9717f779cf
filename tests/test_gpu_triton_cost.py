"""benchmarks/gpu_triton_cost.py: the Triton paths' first-call cost in fresh processes (the GPU run itself needs CUDA)."""

import argparse
import statistics

import pytest

from _scripts import load_benchmark


pytestmark = pytest.mark.benchmarks  # a benchmark script's test: `python -m pytest -m benchmarks` (pyproject.toml)


def test_break_even_is_the_extra_first_calls_over_the_saving_per_call():
    tc = load_benchmark("gpu_triton_cost")
    eager = {"first_s": 0.020, "second_s": 0.010, "steady_s": 0.010}
    triton = {"first_s": 1.025, "second_s": 0.005, "steady_s": 0.005}
    # 1.0 s more in the first two calls, 5 ms saved per call: 200 calls of eager's 10 ms
    assert tc.break_even_s(eager, triton) == pytest.approx(2.0)
    assert tc.break_even_s(eager, {**triton, "first_s": 0.010}) == 0.0  # no extra cost: ahead at once
    assert tc.break_even_s(eager, {**triton, "steady_s": 0.011}) is None  # slower once warm: never


def test_a_fresh_process_reports_each_calls_time(tmp_path):
    tc = load_benchmark("gpu_triton_cost")
    args = argparse.Namespace(device="cpu", batch=2)
    out = tc.run_child(args, 8, False, str(tmp_path / "cache"))
    assert "error" not in out, out
    times = out["times_s"]
    assert len(times) == tc.CALLS and min(times) > 0
    assert out["first_s"] == times[0] and out["second_s"] == times[1]
    assert out["steady_s"] == statistics.median(times[2:])
    assert out["process_s"] > sum(times)  # the process also imported torch and built the layer


def test_needs_cuda_and_says_so_in_one_line(capsys):
    tc = load_benchmark("gpu_triton_cost")
    assert tc.main(["--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA device" in err[0]
