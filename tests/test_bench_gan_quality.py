"""benchmarks/bench_gan_quality.py: bad input ends in one line, not a traceback."""

import pytest
from _scripts import load_benchmark


pytestmark = pytest.mark.benchmarks  # a benchmark script's test: `python -m pytest -m benchmarks` (pyproject.toml)


def _script():
    return load_benchmark("bench_gan_quality")


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _script().main(["ckpt", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "checkpoint" in last and "missing.pt not found" in last


def test_a_failing_evaluation_stops_with_one_line(tmp_path, capfd):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(SystemExit) as exc:
        _script().main(["ckpt", str(bad), "--n", "10", "--out", str(tmp_path / "o")])
    message = str(exc.value.code)
    assert message.startswith("bench_gan_quality: `attnorm evaluate` failed with exit status 2")
    err = capfd.readouterr().err  # the evaluate command's own error line
    assert "Traceback" not in err and "attnorm evaluate gan: error:" in err


def test_draws_judge_the_means_and_report_the_spread(gan_ckpt, tmp_path):
    """--draws 2: the values checked against the targets are the evaluation's means over the two draws,
    and the table shows each one's spread (the evaluation's own per-draw standard deviation)."""
    import json
    out = tmp_path / "o"
    _script().main(["ckpt", str(gan_ckpt), "--n", "30", "--draws", "2", "--out", str(out)])
    ev = json.loads((out / "evaluation.json").read_text())
    res = json.loads((out / "results.json").read_text())
    recall = ev["metrics"]["pr"]["over_draws"]["recall"]
    assert res["values"]["recall"]["value"] == sum(recall["values"]) / 2
    assert res["targets"]["recall"]["value"] == res["values"]["recall"]["value"]
    assert res["draws"] == 2 and res["spread_over_draws"]["recall"] == recall["std"]
    md = (out / "results.md").read_text()
    assert "means over 2 draws" in md and f"(sd {recall['std']:.2g})" in md
