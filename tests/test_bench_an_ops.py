"""benchmarks/bench_an_ops.py: AN's forward op by op; the ops it times must compose the layer's output."""

import json

import pytest

from _scripts import load_benchmark


pytestmark = pytest.mark.benchmarks  # a benchmark script's test: `python -m pytest -m benchmarks` (pyproject.toml)


def test_the_timed_ops_compose_the_layers_output_and_are_all_reported(tmp_path):
    ops = load_benchmark("bench_an_ops")
    out = tmp_path / "res"
    assert ops.main(["--shapes", "2x16x8,3x8x4", "--entities", "4", "--repeats", "3", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert [(c["b"], c["c"], c["side"], c["n"]) for c in report["cases"]] == [(2, 16, 8, 4), (3, 8, 4, 4)]
    for case in report["cases"]:
        # the forward these ops compose (sigma 0.5, non-trivial affine) is the layer's own, to rounding
        assert case["parity_max_abs"] < 1e-5
        assert len(case["ops"]) == 14 and all(v > 0 for v in case["ops"].values())
        macs = case["b"] * (case["n"] + case["c"]) * case["c"] * case["side"] ** 2
        for form in case["projection"].values():
            assert form["gmac_per_s"] == pytest.approx(macs / form["us"] / 1e3)
    assert "| statistics (b, c, n) |" in (out / "results.md").read_text()


def test_the_forward_ops_follow_the_layer_when_it_changes(monkeypatch):
    ops = load_benchmark("bench_an_ops")
    # a layer whose forward differs from the ops (here: twice the residual branch) fails the check
    from attnorm.layers import AttentiveNorm
    original = AttentiveNorm.forward
    monkeypatch.setattr(AttentiveNorm, "forward", lambda self, x: x + 2 * (original(self, x) - x))
    _, parity = ops.forward_ops(2, 16, 4, 4, 1)
    assert parity > 1e-2


def test_bad_shapes_are_one_line(tmp_path, capsys):
    ops = load_benchmark("bench_an_ops")
    with pytest.raises(SystemExit) as exc:
        ops.main(["--shapes", "16x16", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "give BATCHxCHANNELSxSIDE cases" in capsys.readouterr().err
