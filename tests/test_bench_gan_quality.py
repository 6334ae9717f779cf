"""benchmarks/bench_gan_quality.py: bad input ends in one line, not a traceback."""

import pytest
from _scripts import load_benchmark


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
