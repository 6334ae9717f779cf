"""benchmarks/bench_kernel_threading.py: AN's CPU kernels with the samples split in torch's OpenMP team
against a pool of Python threads, alternating in one process."""

import json

import pytest
import torch

from attnorm.layers import cpu_fused

from _scripts import load_benchmark

needs_openmp = pytest.mark.skipif(cpu_fused._load() is None or not cpu_fused._STATE["openmp"],
                                  reason=f"the kernels do not split samples in OpenMP here: {cpu_fused.summary()}")


pytestmark = pytest.mark.benchmarks  # a benchmark script's test: `python -m pytest -m benchmarks` (pyproject.toml)


def test_alternate_times_each_way_with_its_threading_set_and_restores_it():
    bench = load_benchmark("bench_kernel_threading")
    before = cpu_fused._STATE["openmp_wanted"]
    seen = []
    times = bench.alternate(lambda: seen.append(cpu_fused._STATE["openmp_wanted"]), rounds=3, repeats=2)
    # who goes first alternates: round 0 OpenMP then pool, round 1 pool then OpenMP, ...
    assert seen == [True] * 2 + [False] * 4 + [True] * 4 + [False] * 2
    assert len(times[True]) == len(times[False]) == 3 and cpu_fused._STATE["openmp_wanted"] == before
    rep = bench.summarise({True: [2.0, 3.0, 1.0], False: [4.0, 3.0, 4.0]})
    assert rep["openmp_over_pool"] == pytest.approx(0.5)  # the median of 0.5, 1.0, 0.25
    assert rep["range"] == pytest.approx([0.25, 1.0]) and rep["openmp_ms"] == 2.0 and rep["pool_ms"] == 4.0


@needs_openmp
def test_writes_both_ways_for_the_layer_and_a_training_step(tmp_path):
    bench = load_benchmark("bench_kernel_threading")
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--threads", "2", "--rounds", "2", "--steps", "1", "--batch", "2", "--channels", "8",
                           "--size", "8", "--out", str(out), "--set", "ch=8", "batch_size=4", "resolution=16",
                           "procedural_classes=2", "procedural_length=16"]) == 0
    finally:
        torch.set_num_threads(threads)  # the script sets the process's threads
    rep = json.loads((out / "results.json").read_text())
    for key in ("layer", "step"):
        r = rep[key]
        assert len(r["rounds_ms"]["openmp"]) == len(r["rounds_ms"]["pool"]) == 2
        assert min(r["rounds_ms"]["openmp"] + r["rounds_ms"]["pool"]) > 0
    assert rep["env"]["an_cpu_kernels"] == "on (openmp)"
    md = (out / "results.md").read_text()
    assert f"| {rep['step']['openmp_ms']:.2f} | {rep['step']['pool_ms']:.2f} | {rep['step']['openmp_over_pool']:.3f}" in md


def test_the_benchmark_leaves_the_kernel_switch_as_it_found_it(monkeypatch):
    bench = load_benchmark("bench_kernel_threading")
    for before in (None, False):
        monkeypatch.setitem(cpu_fused._STATE, "enabled", before)
        seen = []
        monkeypatch.setattr(bench, "_main", lambda argv: seen.append(cpu_fused._STATE["enabled"]) or 0)
        assert bench.main([]) == 0 and seen == [True] and cpu_fused._STATE["enabled"] is before
