"""benchmarks/select_gan_checkpoint.py: every kept checkpoint exported and scored as evaluate_gan scores it, the
lowest FID chosen and re-scored on other latents; scores cached so a killed selection resumes."""

import json

import pytest

from _scripts import load_benchmark
from attnorm import cli
from attnorm.checkpoints import load_gan_generator
from attnorm.evaluation.gan import evaluate_gan


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


def test_a_folder_without_checkpoints_is_one_line(tmp_path):
    sel = load_benchmark("select_gan_checkpoint")
    with pytest.raises(SystemExit) as exc:
        sel.main([str(tmp_path)])
    assert "is not a train-gan run folder" in str(exc.value)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(SystemExit) as exc:
        sel.main([str(tmp_path)])
    assert "no checkpoint of" in str(exc.value) and "keep_every" in str(exc.value)
