"""The layer benchmark runs end to end on tiny sizes and skips what cannot fit."""

import json
import shutil

import pytest

from attnorm import bench, cli


def test_run_reports_every_variant_and_ratios():
    report = bench.run(sizes=(8, 32), batch=1, channels=16, entities=2, repeats=1, warmup=0, memory=False)
    rows = {(r["variant"], r["size"]): r for r in report["results"]}
    assert set(rows) == {(v, s) for v in bench.DEFAULT_VARIANTS for s in (8, 32)}
    assert all(r["status"] == "ok" and r["median_ms"] > 0 and r["peak_mib"] is None for r in rows.values())
    assert [t["target"] for t in report["targets"]] == [t.name for t in bench.TARGETS]
    measured = 0
    for spec, got in zip(bench.TARGETS, report["targets"]):
        assert spec.numerator in bench.VARIANTS and spec.denominator in bench.VARIANTS
        assert got["goal"] == f"{spec.op} {spec.goal}"
        num, den = rows.get((spec.numerator, spec.size)), rows.get((spec.denominator, spec.size))
        if num is None or num.get(spec.key) is None:  # size not run, or memory not measured
            assert got["ratio"] is None and got["met"] is None
            continue
        measured += 1
        ratio = num[spec.key] / den[spec.key]
        assert got["ratio"] == pytest.approx(ratio, rel=1e-12)
        # one round each (repeats=1): the paired ratio is that round's ratio, the same number here
        assert got["paired_ratio"] == pytest.approx(ratio, rel=1e-12)
        assert got["met"] is (ratio >= spec.goal if spec.op == ">=" else ratio <= spec.goal)
    assert measured == sum(t.size == 32 and t.key == "median_ms" for t in bench.TARGETS) > 0


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_an_with_compiled_statistics_is_a_variant_of_its_own():
    from attnorm.layers import regional, statistics_compiled
    report = bench.run(sizes=(8,), batch=1, channels=16, entities=2, repeats=1, warmup=0, memory=False,
                       variants=("an", "an_cstats"))
    assert [(r["variant"], r["status"]) for r in report["results"]] == [("an", "ok"), ("an_cstats", "ok")]
    assert regional._COMPILED["failed"] is None  # it really ran compiled, no fallback
    assert not statistics_compiled()  # and the setting was restored for everything else


def test_target_ratio_is_the_ratio_of_medians():
    results = [{"variant": "an", "size": 64, "status": "ok", "median_ms": 2.0},
               {"variant": "sa", "size": 64, "status": "ok", "median_ms": 10.0}]
    target = [t for t in bench.targets(results) if t["target"] == "AN vs SA: speed-up at 64"][0]
    assert target["ratio"] == 5.0 and target["met"] is True


def test_paired_ratio_is_the_median_of_the_rounds_ratios_and_decides_the_verdict():
    # rounds 1-2 ran on a busy machine (both variants 2x slower), rounds 3-5 on a quiet one; AN took
    # 1.9x conv1x1+IN in every round. The medians pair a slow AN round with a fast conv1x1+IN one.
    an = [76.0, 76.0, 38.0, 38.0, 38.0 * 1.1]
    conv = [40.0, 40.0, 20.0, 20.0, 22.0]
    results = [{"variant": "an", "size": 32, "status": "ok", "median_ms": 38.0, "times_ms": an},
               {"variant": "conv_in", "size": 32, "status": "ok", "median_ms": 22.0, "times_ms": conv}]
    (t,) = [t for t in bench.targets(results) if t["target"] == "AN / conv1x1+IN time at 32"]
    assert t["ratio"] == pytest.approx(38.0 / 22.0)
    assert t["paired_ratio"] == pytest.approx(1.9) and t["paired_range"] == pytest.approx([1.9, 1.9])
    assert t["met"] is True
    an[2:] = [50.0, 50.0, 55.0]  # the three quiet rounds at 2.5x: the paired ratio says so
    (t,) = [t for t in bench.targets(results) if t["target"] == "AN / conv1x1+IN time at 32"]
    assert t["paired_ratio"] == pytest.approx(2.5) and t["met"] is False
    config = {"device": "cpu", "threads": 1, "torch": "x", "batch": 8, "channels": 128, "entities": 16, "repeats": 5,
              "sizes": [32]}
    table = bench.format_table({"config": config, "results": results, "targets": bench.targets(results)})
    assert "2.50  (rounds 1.90-2.50; medians" in table


def test_paired_ratio_helper_and_its_refusal():
    # per-round ratios 2.0, 1.5, 3.0, 1.8: median 1.9; the ratio of medians (22.5 / 10) would be 2.25
    ratio, span = bench.paired_ratio([20.0, 30.0, 15.0, 27.0], [10.0, 20.0, 5.0, 15.0])
    assert ratio == pytest.approx(1.9) and span == pytest.approx([1.5, 3.0])
    with pytest.raises(ValueError, match="equally long"):
        bench.paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        bench.paired_ratio([], [])


def test_timed_rounds_alternate_the_order_of_the_variants(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "build", lambda variant, *a, **k: (lambda: calls.append(variant)))
    monkeypatch.setattr(bench, "count_dispatches", lambda step: 0)
    bench.run(sizes=(8,), batch=1, channels=4, entities=2, repeats=3, warmup=0, memory=False,
              variants=("an", "sa", "conv_in"))
    assert calls == ["an", "sa", "conv_in", "conv_in", "sa", "an", "an", "sa", "conv_in"]


def test_variants_over_the_memory_budget_are_skipped():
    report = bench.run(sizes=(8,), batch=1, channels=16, entities=2, repeats=1, warmup=0,
                       memory=False, max_mem_gb=1e-6, variants=("rn_literal",))
    (row,) = report["results"]
    assert row["status"] == "skipped" and "max-mem-gb" in row["reason"]
    assert "skipped" in bench.format_table(report)


def test_cpu_peak_memory_grows_with_the_literal_tensors(tmp_path):
    fast = bench.peak_memory("rn_fast", 2, 16, 16, 32, "cpu")
    literal = bench.peak_memory("rn_literal", 2, 16, 16, 32, "cpu")
    assert fast is not None and literal is not None
    # literal holds several (b, h, w, c, n) = 2 MiB float32 tensors, fast only (b, c, hw)-sized ones
    assert literal > 4 * 2**20 and literal > 3 * fast


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    cli.main(["bench", "--sizes", "4", "--batch", "1", "--channels", "16", "--entities", "2",
              "--repeats", "1", "--warmup", "0", "--no-memory", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["config"]["sizes"] == [4]
    assert "targets:" in capsys.readouterr().out


def test_cli_bad_input_is_one_error_line(capsys):
    from _cli import cli_error
    assert "unknown variant 'nope'" in cli_error(capsys, ["bench", "--variants", "an,nope", "--no-memory"])
    assert "expected comma-separated integers" in cli_error(capsys, ["bench", "--sizes", "4,x"])
    assert "must be between 1 and 4096, got 0" in cli_error(capsys, ["bench", "--sizes", "0"])


def test_autocast_runs_the_forward_in_the_asked_dtype():
    import torch
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append((type(m).__name__, o.dtype)) if isinstance(m, torch.nn.Conv2d) else None)
    try:
        bench.build("conv_in", 1, 16, 2, 8, "cpu", autocast="bf16")()
        bench.build("conv_in", 1, 16, 2, 8, "cpu")()
    finally:
        handle.remove()
    assert seen == [("Conv2d", torch.bfloat16), ("Conv2d", torch.float32)]
    with pytest.raises(ValueError, match="unknown autocast"):
        bench.build("an", 1, 16, 2, 8, "cpu", autocast="fp8")
    report = bench.run(sizes=(8,), batch=1, channels=16, entities=2, repeats=1, warmup=0, memory=False,
                       variants=("an", "conv_in"), autocast="bf16")
    assert report["config"]["autocast"] == "bf16" and all(r["status"] == "ok" for r in report["results"])
    assert "autocast=bf16" in bench.format_table(report)


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_gives_every_layer_its_input_and_weights_in_that_layout(channels_last):
    import torch
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    seen = []

    other = torch.contiguous_format if channels_last else torch.channels_last

    def record(m, inputs, output):
        # the layer's input (only in the asked layout: a (b, c, h, w) map with h, w > 1 is not both),
        # and every convolution's weight; the layers' inner maps are their own business
        if isinstance(m, (bench.AttentiveNorm, bench.SelfAttention2d, torch.nn.Sequential)):
            x = inputs[0]
            seen.append((type(m).__name__, x.is_contiguous(memory_format=fmt), not x.is_contiguous(memory_format=other)))
        if isinstance(m, torch.nn.Conv2d):
            seen.append(("Conv2d weight", m.weight.is_contiguous(memory_format=fmt)))
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        for variant in ("an", "sa", "conv_in"):
            bench.build(variant, 2, 16, 4, 8, "cpu", channels_last=channels_last)()
    finally:
        handle.remove()
    names = [s[0] for s in seen]
    assert {"AttentiveNorm", "SelfAttention2d", "Sequential", "Conv2d weight"} <= set(names)
    assert all(all(flags) for _, *flags in seen), [s for s in seen if not all(s[1:])]
    report = bench.run(sizes=(8,), batch=1, channels=16, entities=2, repeats=1, warmup=0, memory=False,
                       variants=("an", "conv_in"), channels_last=channels_last)
    assert report["config"]["channels_last"] is channels_last
    assert f"channels_last={channels_last}" in bench.format_table(report)


def test_cli_channels_last_flag_reaches_the_report(tmp_path):
    out = tmp_path / "b.json"
    cli.main(["bench", "--sizes", "4", "--batch", "1", "--channels", "16", "--entities", "2", "--variants", "an",
              "--repeats", "1", "--warmup", "0", "--no-memory", "--channels-last", "--json", str(out)])
    assert json.loads(out.read_text())["config"]["channels_last"] is True


def test_cuda_graph_steps_start_from_fresh_gradients(monkeypatch):
    """Under --compile reduce-overhead each step's gradients start from None (a replay must not
    accumulate into the previous replay's outputs); eager steps accumulate as before."""
    import torch
    monkeypatch.setattr(torch, "compile", lambda f, **kwargs: f)  # the step logic, without compiling
    def grads_after(steps, mode):
        torch.manual_seed(0)
        step = bench.build("conv_in", 2, 8, 2, 4, "cpu", compile_mode=mode)
        module = step.__closure__ and next(c.cell_contents for c in step.__closure__
                                           if isinstance(c.cell_contents, torch.nn.Module))
        for _ in range(steps):
            step()
        return module[0].weight.grad.clone()

    once = grads_after(1, "reduce-overhead")
    assert torch.allclose(grads_after(2, "reduce-overhead"), once)
    assert torch.allclose(grads_after(2, None), 2 * grads_after(1, None))


def test_dispatch_count_counts_kernel_ops_and_not_views():
    import torch
    x = torch.ones(4, 3)
    assert bench.count_dispatches(lambda: x.mul(2).view(-1).t().add(1).sum()) == 3
    assert bench.count_dispatches(lambda: x.transpose(0, 1).unsqueeze(0).expand(2, 3, 4)) == 0


def test_an_forward_backward_dispatches_few_ops():
    """AN's eager time on a GPU is its op count times the launch cost (session 6, H200: ~12 us per
    op beside ~0.7 ms fixed): the per-entity statistics were rewritten with fused ops
    (233 -> 175 -> 165 ops for a training forward+backward with SSR). A guard against regressions."""
    from attnorm.layers import cpu_fused
    with cpu_fused.cpu_kernels_enabled(False):  # the PyTorch path, which a GPU runs
        report = bench.run(sizes=(8,), batch=2, channels=16, entities=4, repeats=1, warmup=1, memory=False,
                           variants=("an", "conv_in"))
    ops = {r["variant"]: r["dispatched_ops"] for r in report["results"]}
    assert ops["conv_in"] <= 20 and 100 <= ops["an"] <= 170, ops
    assert "aten ops per forward+backward" in bench.format_table(report)
    if cpu_fused.active():  # the CPU kernels take the statistics and every pass over the map (82 ops)
        report = bench.run(sizes=(8,), batch=2, channels=16, entities=4, repeats=1, warmup=1, memory=False,
                           variants=("an",))
        assert report["results"][0]["dispatched_ops"] <= 90


def test_the_triton_variants_are_skipped_with_their_reason_where_triton_cannot_run(monkeypatch):
    from attnorm.layers import triton_stats
    monkeypatch.setattr(triton_stats, "available", lambda: False)
    report = bench.run(sizes=(8,), batch=1, channels=16, entities=2, repeats=1, warmup=0, memory=False,
                       variants=("an",) + bench.TRITON_VARIANTS)
    rows = {r["variant"]: r for r in report["results"]}
    assert rows["an"]["status"] == "ok"
    for v in bench.TRITON_VARIANTS:
        assert rows[v]["status"] == "skipped" and f"{v} needs the triton package" in rows[v]["reason"]


@pytest.mark.parametrize("variant,stats,sums,msum", [("an", False, False, False), ("an_triton", True, False, False),
                                                      ("an_tsums", False, True, False), ("an_tall", True, True, False),
                                                      ("an_msum", False, False, True),
                                                      ("an_tall_msum", True, True, True)])
def test_each_an_variant_switches_its_paths_on_for_its_step_only(monkeypatch, variant, stats, sums, msum):
    """What each variant's step runs with: the statistics and pixel-sum switches as seen from inside
    the layer's forward and backward (the pixel sums are called in both), and off again after."""
    import warnings

    from attnorm.layers import attentive, regional, triton_stats
    seen = []
    real = attentive.pixel_sum

    def spy(a, b):
        seen.append((regional._TRITON["enabled"], regional._TRITON_SUMS["enabled"]))
        return real(a, b)
    monkeypatch.setattr(attentive, "pixel_sum", spy)
    small = []
    real_small = attentive._small_mm

    def small_spy(a, b):
        small.append(attentive._SMALL_SUMS["enabled"])
        return real_small(a, b)
    monkeypatch.setattr(attentive, "_small_mm", small_spy)
    if variant in bench.TRITON_VARIANTS:  # build's check passes; the statistics kernels fail (the eager path runs)
        monkeypatch.setattr(triton_stats, "applicable", lambda *a: True)
        monkeypatch.setattr(triton_stats, "statistics_forward", lambda *a: (_ for _ in ()).throw(RuntimeError("x")))
    from attnorm.layers import cpu_fused
    with warnings.catch_warnings(), cpu_fused.cpu_kernels_enabled(False):  # the PyTorch path, which these switch
        warnings.simplefilter("ignore")  # the (patched) Triton statistics fail and fall back
        step = bench.build(variant, 2, 16, 4, 8, "cpu")
        step()
    regional._TRITON["failed"] = None
    assert len(seen) == 5 and set(seen) == {(stats, sums)}, seen
    assert len(small) == 3 and set(small) == {msum}, small  # W_v mean(X) and SSR's two gradients
    assert not regional._TRITON["enabled"] and not regional._TRITON_SUMS["enabled"]
    assert not attentive._SMALL_SUMS["enabled"]


def test_cuda_graphs_need_cuda_and_a_layer_variant(capsys):
    from _cli import cli_error
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        bench.build("an", 1, 16, 2, 8, "cpu", cuda_graphs=True)
    assert "--cuda-graphs needs a CUDA device" in cli_error(
        capsys, ["bench", "--device", "cpu", "--cuda-graphs", "--no-memory"])
    assert "give one of them" in cli_error(capsys, ["bench", "--cuda-graphs", "--compile", "default"])


def test_profile_script_lists_the_layers_ops_by_time():
    from _scripts import load_benchmark
    from attnorm.layers import cpu_fused
    prof = load_benchmark("gpu_profile_an")
    with cpu_fused.cpu_kernels_enabled(False):  # the PyTorch path, which a GPU runs
        r = prof.profile_step("an", 1, 4, "cpu", steps=1, top=10_000)  # every op: which ones rank first depends on load
    times = [row["us_per_step"] for row in r["top"]]
    assert times == sorted(times, reverse=True) and 0 < sum(times) <= r["total_us_per_step"] * (1 + 1e-9)
    # the fused projection [entities / tau; W_v] X is there with its (b, n + c, c) weight
    # (a bmm on the CPU, where the bias is added after it; a baddbmm elsewhere)
    assert any(row["name"] in ("aten::bmm", "aten::baddbmm") and "[1, 144, 128]" in row["shapes"] for row in r["top"])


def test_small_product_probe_times_forms_of_the_same_products():
    """Every form the probe times computes its product (against float64 from the operands' own values), and
    the probe reports each product at both batches."""
    import torch
    from _scripts import load_benchmark
    prof = load_benchmark("gpu_profile_an")
    torch.manual_seed(0)
    for batch in (8, 32):
        cases = prof._product_cases(batch, "cpu")
        assert set(cases) == {"wv_mean", "ssr_gq", "ssr_gk"}
        shapes = {"wv_mean": (batch, 128), "ssr_gq": (16, 129), "ssr_gk": (16, 128)}
        for product, forms in cases.items():
            want = forms["f64"]()
            assert tuple(want.shape) == shapes[product] and want.dtype == torch.float64
            for name, fn in forms.items():
                got = fn().double()
                assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max()), (batch, product, name)
    rows = prof.small_mm_probe("cpu", repeats=1)
    assert [(r["batch"], r["product"]) for r in rows] == [(b, p) for b in (8, 32) for p in ("wv_mean", "ssr_gq", "ssr_gk")]
    assert all(r["mm_us"] > 0 for r in rows)


def test_gan_step_benchmark_compiles_g_and_d_and_marks_graph_steps(monkeypatch):
    """bench_gan.py --compile MODE: the loss runs torch.compile(G) and torch.compile(D); under
    reduce-overhead every step starts a new CUDA-graph step (torch.compile stubbed: the wiring only)."""
    import torch
    from _scripts import load_benchmark
    bg = load_benchmark("bench_gan")
    compiled, marks = [], []
    monkeypatch.setattr(torch, "compile", lambda m, mode=None, dynamic=None: compiled.append((type(m).__name__, mode)) or m)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    step, _ = bg.make_step("none", 32, 8, 2, 3, torch.device("cpu"), compile_mode="reduce-overhead")
    step()
    step()
    assert compiled == [("Generator", "reduce-overhead"), ("Discriminator", "reduce-overhead")]
    assert len(marks) == 2
    compiled.clear()
    bg.make_step("none", 32, 8, 2, 3, torch.device("cpu"))[0]()
    assert compiled == [] and len(marks) == 2


def test_split_pixel_sum_equals_bmm():
    import torch
    from _scripts import load_benchmark
    prof = load_benchmark("gpu_profile_an")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 8, 64, generator=g)
    b = torch.randn(3, 5, 64, generator=g).transpose(1, 2)
    for k in (1, 4, 16):
        assert torch.allclose(prof.split_pixel_sum(a, b, k), torch.bmm(a, b), atol=1e-5)


def test_profile_script_keeps_freed_memory_on_the_cpu_like_attnorm_bench(monkeypatch, tmp_path):
    """gpu_profile_an.py --device cpu times what `attnorm bench` times: glibc told to keep freed
    blocks (recorded in the report); --glibc-default-malloc leaves glibc alone."""
    import json

    from _scripts import load_benchmark

    from attnorm.training import allocator
    prof = load_benchmark("gpu_profile_an")
    for flag, want_calls in (([], 2), (["--glibc-default-malloc"], 0)):
        calls = []

        class FakeLibc:
            def mallopt(self, param, value):
                calls.append((param, value))
                return 1
        monkeypatch.setattr(allocator, "_libc", lambda: FakeLibc())
        monkeypatch.setattr(allocator, "_applied", False)
        out = tmp_path / f"p{len(flag)}.json"
        assert prof.main(["--device", "cpu", "--sizes", "4", "--batch", "1", "--top", "3", "--json", str(out)] + flag) == 0
        report = json.loads(out.read_text())
        assert len(calls) == want_calls and report["retain_freed_memory"] is (want_calls == 2)
        assert report["profiles"][0]["size"] == 4 and len(report["profiles"][0]["top"]) == 3


def test_the_report_says_whether_the_cpu_kernels_ran():
    from attnorm.layers import cpu_fused
    kw = dict(sizes=(8,), batch=1, channels=8, entities=2, repeats=1, warmup=0, memory=False, variants=("an",))
    with cpu_fused.cpu_kernels_enabled(False):
        off = bench.run(**kw)
    assert off["config"]["cpu_kernels"] == "off" and "cpu_kernels=off" in bench.format_table(off)
    on = bench.run(**kw)["config"]["cpu_kernels"]
    if cpu_fused._load() is None:
        assert on == f"unavailable ({cpu_fused.status()['failed']})"
    elif cpu_fused.status()["wide"]:
        assert on == f"on ({cpu_fused.status()['threading']})"
    else:  # built for 128-bit vectors: off unless asked for
        assert on == f"off here ({cpu_fused.NARROW_REASON})"
        with cpu_fused.cpu_kernels_enabled(True):
            assert bench.run(**kw)["config"]["cpu_kernels"] == f"on ({cpu_fused.status()['threading']})"
