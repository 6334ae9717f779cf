import subprocess
from pathlib import Path

import pytest

from attnorm.provenance import git_commit

ROOT = Path(__file__).resolve().parents[1]


def test_the_environment_names_the_commit_of_a_tree_without_git(monkeypatch):
    monkeypatch.setenv("ATTNORM_COMMIT", "6323db8")
    assert git_commit() == "6323db8"


def test_in_a_checkout_it_is_the_head_commit(monkeypatch):
    monkeypatch.delenv("ATTNORM_COMMIT", raising=False)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert git_commit().split(" ")[0] == head.stdout.strip()


def test_the_layer_benchmark_records_it(monkeypatch):
    from attnorm import bench
    monkeypatch.setenv("ATTNORM_COMMIT", "abc1234")
    report = bench.run(sizes=(4,), batch=1, channels=16, entities=2, repeats=1, warmup=0, memory=False,
                       variants=("conv_in",))
    assert report["config"]["code"] == "abc1234" and "code=abc1234" in bench.format_table(report)
