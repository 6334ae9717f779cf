"""benchmarks/bench_train_step.py: times a real training run with a config key set two ways (a boolean key off
and on, by default channels_last: both layouts; or KEY=A,B) and reports them."""

import json
import statistics

import pytest
import torch

from _scripts import load_benchmark


pytestmark = pytest.mark.benchmarks  # a benchmark script's test: `python -m pytest -m benchmarks` (pyproject.toml)


def test_times_both_layouts_and_reports_the_median_ratio(tmp_path):
    bench = load_benchmark("bench_train_step")
    out = tmp_path / "out"
    assert bench.main(["--amp", "off", "--rounds", "3", "--steps", "1", "--warmup", "1", "--out", str(out),
                       "--set", "ch=8", "batch_size=4", "resolution=16", "procedural_classes=2",
                       "procedural_length=16"]) == 0
    rep = json.loads((out / "results.json").read_text())
    (row,) = rep["rows"]
    assert row["amp"] is False and rep["args"]["set"][0] == "ch=8"
    rounds = row["rounds_s"]
    assert len(rounds["a"]) == len(rounds["b"]) == 3 and min(rounds["a"] + rounds["b"]) > 0
    assert row["a_ms"] == pytest.approx(1000 * statistics.median(rounds["a"]))
    assert row["b_ms"] == pytest.approx(1000 * statistics.median(rounds["b"]))
    assert row["b_over_a"] == pytest.approx(row["b_ms"] / row["a_ms"])
    # the headline ratio pairs each round's B with the same round's A
    per_round = sorted(b / a for a, b in zip(rounds["a"], rounds["b"]))
    assert row["paired_b_over_a"] == pytest.approx(per_round[1])
    assert row["paired_range"] == pytest.approx([per_round[0], per_round[2]])
    assert rep["env"]["code"] and rep["env"]["torch"] and rep["args"]["compare"] == "channels_last"
    assert rep["key"] == "channels_last" and rep["values"] == [False, True]
    md = (out / "results.md").read_text()
    assert "channels_last=false ms/step" in md and "channels_last=true / channels_last=false" in md
    # channels_last changes the layout, not the arithmetic: the same FLOPs, counted for real
    assert row["flops"]["a"] == row["flops"]["b"] > 10**6 and row["flop_ratio"] == 1.0
    assert (f"| False | {row['a_ms']:.1f} | {row['b_ms']:.1f} | {row['paired_b_over_a']:.3f} | "
            f"{per_round[0]:.3f}-{per_round[2]:.3f} | {row['b_over_a']:.3f} | 1.000 |") in md


def test_step_flops_counts_exactly_one_training_step():
    bench = load_benchmark("bench_train_step")
    a, b = torch.randn(6, 5), torch.randn(5, 7)
    calls = []

    class Loop:
        def train_step(self):
            calls.append(1)
            torch.mm(a, b)  # 2 * 6 * 5 * 7 = 420 FLOPs
            torch.relu(a)   # elementwise: not counted

    class Run:
        loop = Loop()
    assert bench.step_flops(Run()) == 420 and calls == [1]


def test_the_two_runs_really_differ_in_layout(tmp_path, monkeypatch):
    bench = load_benchmark("bench_train_step")
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


def test_compare_times_another_key_and_refuses_a_non_boolean_one(tmp_path, monkeypatch, capsys):
    bench = load_benchmark("bench_train_step")
    seen = []
    real, resolve = bench.TASKS["gan"]

    def build(cfg, run_dir):
        seen.append((cfg["reuse_fakes"], cfg["channels_last"], cfg["attention"]))
        run = real(cfg, run_dir)
        # what was built, not only what was asked: G has an AN layer exactly when attention is "an"
        seen.append(any(type(m).__name__ == "AttentiveNorm" for m in run.G.modules()))
        return run
    monkeypatch.setitem(bench.TASKS, "gan", (build, resolve))
    small = ["--set", "ch=8", "batch_size=4", "resolution=16", "procedural_classes=2", "procedural_length=16", "d_steps=1"]
    assert bench.main(["--compare", "reuse_fakes", "--amp", "off", "--rounds", "1", "--steps", "1", "--warmup", "0",
                       "--no-flops", "--out", str(tmp_path / "r"), *small]) == 0
    assert "flops" not in json.loads((tmp_path / "r" / "results.json").read_text())["rows"][0]
    assert seen == [(False, True, "an"), True, (True, True, "an"), True]  # only the compared key differs
    assert "reuse_fakes=true ms/step" in (tmp_path / "r" / "results.md").read_text()
    seen.clear()
    assert bench.main(["--compare", "attention=none,an", "--amp", "off", "--rounds", "1", "--steps", "1",
                       "--warmup", "0", "--out", str(tmp_path / "a"), *small]) == 0
    assert seen == [(False, True, "none"), False, (False, True, "an"), True]
    rep = json.loads((tmp_path / "a" / "results.json").read_text())
    assert rep["labels"] == ["attention=none", "attention=an"]
    (row,) = rep["rows"]
    assert row["flops"]["b"] > row["flops"]["a"] > 0  # AN's products add work
    assert "| attention=none ms/step | attention=an ms/step | attention=an / attention=none |" in \
        (tmp_path / "a" / "results.md").read_text()
    for bad, why in (("lr_g", "not a boolean config key"), ("no_such_key", "is not a config key"),
                     ("attention=an", "give exactly two values"), ("attention=none,an,sa", "give exactly two values"),
                     ("attention=,an", "give exactly two values")):
        with pytest.raises(SystemExit) as exc:
            bench.main(["--compare", bad, "--out", str(tmp_path / "x"), *small])
        assert f"--compare {bad}: " in str(exc.value) and why in str(exc.value)
    # a value the config parser takes but the models refuse: one line, before any timing
    with pytest.raises(SystemExit) as exc:
        bench.main(["--compare", "attention=foo,an", "--amp", "off", "--out", str(tmp_path / "y"), *small])
    assert str(exc.value).startswith("error: --compare attention=foo,an (with --set ch=8") and \
        "unknown attention kind 'foo'" in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "y").exists()


def test_profile_reports_the_ops_that_make_up_the_difference(tmp_path):
    """--profile: each setting's op profile covers the profiled steps, and the difference table names the AN layer's
    own autograd node and its batched products as what attention=an adds over attention=none."""
    bench = load_benchmark("bench_train_step")
    small = ["--set", "ch=8", "batch_size=4", "resolution=16", "procedural_classes=2", "procedural_length=16", "d_steps=1"]
    assert bench.main(["--compare", "attention=none,an", "--amp", "off", "--rounds", "1", "--steps", "1", "--warmup", "1",
                       "--no-flops", "--profile", "2", "--out", str(tmp_path / "p"), *small]) == 0
    (row,) = json.loads((tmp_path / "p" / "results.json").read_text())["rows"]
    a, b = row["op_profile"]["a"], row["op_profile"]["b"]
    assert "_AttentiveNormFn" in b and "_AttentiveNormFn" not in a
    # per step (d_steps 1): G's layer drawing the D phase's fakes, D's on reals and fakes in one batch, then G's
    # and D's again in the G phase
    assert b["_AttentiveNormFn"]["calls"] == pytest.approx(4.0)
    # AN's products: its fused CPU kernels where they are built, else batched matrix products
    from attnorm.layers import cpu_fused
    op = "attnorm::an_backward" if cpu_fused.active() else "aten::bmm"
    assert a.get(op, {"ms": 0.0})["ms"] < b[op]["ms"]
    if op != "aten::bmm":
        assert b[op]["calls"] == pytest.approx(3.0)  # the backward of D's layer (D phase), of D's and G's (G phase)
    diff = {r["op"]: r for r in row["op_difference"]}
    assert diff[op]["diff_ms"] == pytest.approx(b[op]["ms"] - a.get(op, {"ms": 0.0})["ms"])
    more = [r["diff_ms"] for r in row["op_difference"] if r["diff_ms"] > 0]
    assert more == sorted(more, reverse=True) and op in [r["op"] for r in row["op_difference"][:15]]
    md = (tmp_path / "p" / "results.md").read_text()
    assert "Profile, amp False (2 steps of each under torch.profiler" in md and f"| `{op}` |" in md


def test_profile_difference_orders_both_ways():
    bench = load_benchmark("bench_train_step")
    a = {"x": {"ms": 1.0, "calls": 1}, "y": {"ms": 5.0, "calls": 2}, "z": {"ms": 2.0, "calls": 1}}
    b = {"x": {"ms": 4.0, "calls": 3}, "y": {"ms": 1.0, "calls": 2}, "w": {"ms": 0.5, "calls": 1}}
    rows = bench.profile_difference(a, b, top=5)
    assert [(r["op"], r["diff_ms"]) for r in rows] == [("x", 3.0), ("w", 0.5), ("y", -4.0), ("z", -2.0)]
    assert rows[1]["a_calls"] == 0.0 and rows[3]["b_ms"] == 0.0
    assert [r["op"] for r in bench.profile_difference(a, b, top=1)] == ["x", "y"]
