"""benchmarks/bench_layer_versions.py: the layer at a git revision against the working tree's, in one process."""

import json
from pathlib import Path

import pytest
import torch

from _scripts import load_benchmark

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs a git checkout"),
              pytest.mark.benchmarks]  # a benchmark script's test: `python -m pytest -m benchmarks` (pyproject.toml)


def test_loads_the_revisions_layer_as_a_separate_package(tmp_path):
    lv = load_benchmark("bench_layer_versions")
    import attnorm.layers
    old = lv.load_layers_at("HEAD", tmp_path)
    assert Path(old.__file__).resolve().parent == (tmp_path / "baseline_layers").resolve()
    assert old.AttentiveNorm is not attnorm.layers.AttentiveNorm
    # the same weights give the same layer output (HEAD's layer is the tree's, up to uncommitted edits)
    torch.manual_seed(0)
    new = attnorm.layers.AttentiveNorm(16, 4).eval()
    with torch.no_grad():
        new.sigma.fill_(0.5)
    twin = old.AttentiveNorm(16, 4).eval()
    twin.load_state_dict(new.state_dict())
    x = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), new(x), atol=1e-5, rtol=1e-5)
        assert (new(x) - x).abs().max() > 1e-3  # sigma 0.5: not the identity


def test_writes_both_timings_with_parity_and_ratios(tmp_path, capsys):
    lv = load_benchmark("bench_layer_versions")
    out = tmp_path / "res"
    assert lv.main(["--baseline", "HEAD", "--sizes", "4", "--channels", "16", "--entities", "4",
                    "--rounds", "3", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    res = report["sizes"]["4"]
    assert res["parity"]["output_max_abs"] < 1e-5 and res["parity"]["input_grad_max_abs"] < 1e-5
    assert res["parity"]["param_grad_max_rel"] < 1e-4
    for mode in ("cold", "warm"):
        rows = res[mode]
        assert set(rows) == {"baseline", "working tree", "conv1x1+IN"}
        assert rows["baseline"]["over_baseline"] == 1.0 and rows["conv1x1+IN"]["over_conv_in"] == 1.0
        for r in rows.values():
            assert len(r["times_ms"]) == 3 and r["median_ms"] > 0
            # the ratio to conv1x1+IN is the ratio of the medians of the kept rounds
            kept = r["times_ms"][2:]
            conv_kept = rows["conv1x1+IN"]["times_ms"][2:]
            assert r["over_conv_in"] == pytest.approx(sorted(kept)[0] / sorted(conv_kept)[0])
    assert report["config"]["baseline"].startswith("HEAD (")
    assert "| cold | working tree |" in (out / "results.md").read_text()


def test_an_unknown_revision_is_one_line(tmp_path):
    lv = load_benchmark("bench_layer_versions")
    with pytest.raises(SystemExit, match="git archive no-such-rev attnorm/layers failed"):
        lv.main(["--baseline", "no-such-rev", "--sizes", "4", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--rounds must be >= 3"):
        lv.main(["--rounds", "2", "--out", str(tmp_path / "x")])


def test_times_a_channels_last_bf16_input_under_autocast(tmp_path):
    # what AN gets inside the GAN presets' training; the yardstick (a float32 conv) runs under autocast too
    lv = load_benchmark("bench_layer_versions")
    out = tmp_path / "res"
    assert lv.main(["--baseline", "HEAD", "--sizes", "4", "--channels", "16", "--entities", "4", "--rounds", "3",
                    "--channels-last", "--bf16", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["config"]["input"] == "bfloat16 channels-last"
    parity = report["sizes"]["4"]["parity"]
    assert parity["output_max_abs"] < 0.05 and parity["input_grad_max_abs"] < 0.05  # bf16 rounding at most
    assert "input bfloat16 channels-last" in (out / "results.md").read_text()
