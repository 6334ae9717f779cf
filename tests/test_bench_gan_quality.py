"""benchmarks/bench_gan_quality.py: bad input ends in one line, not a traceback."""

import importlib.util
import sys
from pathlib import Path

import pytest


def _script():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gan_quality.py"
    sys.path.insert(0, str(path.parent))  # as when run as a script: its folder's _provenance module
    spec = importlib.util.spec_from_file_location("bench_gan_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
