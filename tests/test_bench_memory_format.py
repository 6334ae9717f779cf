"""benchmarks/bench_memory_format.py: times both layouts of a real training run and reports them."""

import json
import statistics

import pytest
import torch

from _scripts import load_benchmark


def test_times_both_layouts_and_reports_the_median_ratio(tmp_path):
    bench = load_benchmark("bench_memory_format")
    out = tmp_path / "out"
    assert bench.main(["--amp", "off", "--rounds", "3", "--steps", "1", "--warmup", "1", "--out", str(out),
                       "--set", "ch=8", "batch_size=4", "resolution=16", "procedural_classes=2",
                       "procedural_length=16"]) == 0
    rep = json.loads((out / "results.json").read_text())
    (row,) = rep["rows"]
    assert row["amp"] is False and rep["args"]["set"][0] == "ch=8"
    rounds = row["rounds_s"]
    assert len(rounds["nchw"]) == len(rounds["channels_last"]) == 3 and min(rounds["nchw"] + rounds["channels_last"]) > 0
    assert row["nchw_ms"] == pytest.approx(1000 * statistics.median(rounds["nchw"]))
    assert row["channels_last_ms"] == pytest.approx(1000 * statistics.median(rounds["channels_last"]))
    assert row["speedup"] == pytest.approx(row["nchw_ms"] / row["channels_last_ms"])
    assert rep["env"]["code"] and rep["env"]["torch"]
    assert f"| False | {row['nchw_ms']:.1f} | {row['channels_last_ms']:.1f} |" in (out / "results.md").read_text()


def test_the_two_runs_really_differ_in_layout(tmp_path, monkeypatch):
    bench = load_benchmark("bench_memory_format")
    seen = []

    def spy(task, weight_of):
        real, resolve = bench.TASKS[task]

        def build(cfg, run_dir):
            run = real(cfg, run_dir)
            w = weight_of(run)
            seen.append((task, cfg["channels_last"], w.dim() == 4 and w.shape[-1] > 1
                         and w.is_contiguous(memory_format=torch.channels_last)))
            return run
        monkeypatch.setitem(bench.TASKS, task, (build, resolve))

    spy("gan", lambda run: run.G.conv_out.parametrizations.weight.original)
    spy("inpaint", lambda run: next(m.weight for m in run.G.modules()
                                    if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)))
    bench.time_settings(None, {"ch": 8, "batch_size": 4, "resolution": 16, "procedural_classes": 2,
                               "procedural_length": 16}, False, rounds=1, steps=1, warmup=0)
    bench.time_settings(None, {"resolution": 32, "width": 0.125, "critic_width": 0.125, "batch_size": 2,
                               "warmup_steps": 0}, False, rounds=1, steps=1, warmup=0, task="inpaint")
    assert seen == [("gan", False, False), ("gan", True, True), ("inpaint", False, False), ("inpaint", True, True)]
