"""benchmarks/select_gan_checkpoint.py: every kept checkpoint exported and scored as evaluate_gan scores it, the
lowest FID chosen and re-scored on other latents; scores cached so a killed selection resumes."""

import json
import shutil

import pytest

from _scripts import load_benchmark
from attnorm import cli
from attnorm.checkpoints import load_gan_generator
from attnorm.evaluation.gan import evaluate_gan


pytestmark = pytest.mark.benchmarks  # a benchmark script's test: `python -m pytest -m benchmarks` (pyproject.toml)


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("kept_run")
    assert cli.main(["train-gan", "--out", str(out), "--steps", "5", "--batch-size", "4", "--seed", "1", "ch=8",
                     "procedural_classes=3", "procedural_length=64", "samples_per_class=1", "keep_every=2",
                     "ckpt_every=0"]) == 0
    return out


def test_scores_every_kept_checkpoint_and_chooses_the_lowest_fid(kept_run, tmp_path, monkeypatch):
    sel = load_benchmark("select_gan_checkpoint")
    assert list(sel.candidates(kept_run)) == [2, 4, 5]  # kept ones and latest.pt
    assert list(sel.candidates(kept_run, 3)) == [4, 5]
    calls = []
    real = sel.evaluate_gan

    def counting(**kw):
        calls.append((kw["checkpoint"].name, kw["seed"], kw["floor"]))
        return real(**kw)
    monkeypatch.setattr(sel, "evaluate_gan", counting)
    out = tmp_path / "sel"
    assert sel.main([str(kept_run), "--n", "12", "--standing-stats", "2", "--out", str(out)]) == 0
    rep = json.loads((out / "results.json").read_text())
    rows = {int(s): r for s, r in rep["rows"].items()}
    assert sorted(rows) == [2, 4, 5]
    best = min(rows, key=lambda s: rows[s]["fid"])
    assert rep["best_step"] == best and rep["confirm"]["seed"] == 1
    for step in rows:  # each file is that step's EMA G with standing statistics
        meta = load_gan_generator(out / f"step_{step:07d}.safetensors")[1]["meta"]
        assert meta["source_step"] == step and meta["standing_stats"]["batches"] == 2
    # the numbers are evaluate_gan's on the exported file (independent call, same seed)
    direct = evaluate_gan(checkpoint=out / "step_0000004.safetensors", metrics="acc,pr,fid", n=12, seed=0)
    assert rows[4]["fid"] == pytest.approx(direct["metrics"]["fid"]["value"])
    assert rows[4]["recall"] == pytest.approx(direct["metrics"]["pr"]["recall"])
    assert rep["floor"]["fid"] > 0 and rep["floor"]["acc"] >= 0
    assert calls == [("step_0000002.safetensors", 0, True), ("step_0000004.safetensors", 0, False),
                     ("step_0000005.safetensors", 0, False), (f"step_{best:07d}.safetensors", 1, False)]
    md = (out / "results.md").read_text()
    assert f"| **{best}** (chosen) | {rows[best]['acc']:.3f} |" in md and "real-vs-real floor" in md
    # a second call reuses every score; with --from 3 the floor is scored once more (its first candidate had none)
    calls.clear()
    assert sel.main([str(kept_run), "--n", "12", "--standing-stats", "2", "--out", str(out)]) == 0
    assert calls == []
    assert sel.main([str(kept_run), "--from", "3", "--n", "12", "--standing-stats", "2", "--out", str(out)]) == 0
    assert calls[0] == ("step_0000004.safetensors", 0, True)  # the floor, on this selection's first candidate
    assert calls[1:] in ([], [(f"step_{min((4, 5), key=lambda s: rows[s]['fid']):07d}.safetensors", 1, False)])
    with pytest.raises(SystemExit) as exc:  # cached scores of another sample size are not reused silently
        sel.main([str(kept_run), "--n", "16", "--standing-stats", "2", "--out", str(out)])
    assert "holds scores made with {'n': 12, 'standing_stats': 2}" in str(exc.value) and "another --out" in str(exc.value)


def test_a_run_still_training_is_scored_at_the_steps_its_files_hold(kept_run, tmp_path, monkeypatch):
    """latest.pt is replaced while the selection runs (a live run writes it every ckpt_every steps):
    every exported file must still hold the step it is labelled with."""
    sel = load_benchmark("select_gan_checkpoint")
    run = tmp_path / "run"
    shutil.copytree(kept_run, run)
    real_export, calls = sel.export_gan_generator, []

    def export_while_training(ck, out, **kw):
        if not calls:  # the trainer moves on: latest.pt now holds another step (here: step 2's checkpoint)
            shutil.copyfile(run / "checkpoints" / "step_0000002.pt", run / "checkpoints" / "latest.pt")
        calls.append(ck)
        return real_export(ck, out, **kw)
    monkeypatch.setattr(sel, "export_gan_generator", export_while_training)
    out = tmp_path / "sel"
    assert sel.main([str(run), "--n", "12", "--standing-stats", "2", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert sorted(int(s) for s in rows) == [2, 4, 5]
    for step in rows:
        assert load_gan_generator(out / f"step_{int(step):07d}.safetensors")[1]["meta"]["source_step"] == int(step)
    assert calls[-1] == out / "latest_snapshot.pt"  # step 5 came from the copy taken before the trainer moved on


def test_a_folder_without_checkpoints_is_one_line(tmp_path):
    sel = load_benchmark("select_gan_checkpoint")
    with pytest.raises(SystemExit) as exc:
        sel.main([str(tmp_path)])
    assert "is not a train-gan run folder" in str(exc.value)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(SystemExit) as exc:
        sel.main([str(tmp_path)])
    assert "no checkpoint of" in str(exc.value) and "keep_every" in str(exc.value)
