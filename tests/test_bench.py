"""The layer benchmark runs end to end on tiny sizes and skips what cannot fit."""

import json

from attnorm import bench, cli


def test_run_reports_every_variant_and_ratios():
    report = bench.run(sizes=(4, 8), batch=1, channels=16, entities=2, repeats=1, warmup=0,
                       memory=False, log=lambda *_: None)
    rows = {(r["variant"], r["size"]): r for r in report["results"]}
    assert set(rows) == {(v, s) for v in bench.VARIANTS for s in (4, 8)}
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows.values())
    assert len(report["targets"]) == 7
    assert all(t["ratio"] is None for t in report["targets"])  # no 32/64/128 rows measured


def test_target_ratio_is_the_ratio_of_medians():
    results = [{"variant": "an", "size": 64, "status": "ok", "median_ms": 2.0},
               {"variant": "sa", "size": 64, "status": "ok", "median_ms": 10.0}]
    target = [t for t in bench.targets(results) if t["target"] == "AN vs SA: speed-up at 64"][0]
    assert target["ratio"] == 5.0 and target["met"] is True


def test_variants_over_the_memory_budget_are_skipped():
    report = bench.run(sizes=(8,), batch=1, channels=16, entities=2, repeats=1, warmup=0,
                       memory=False, max_mem_gb=1e-6, variants=("rn_literal",), log=lambda *_: None)
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
