"""Probe suite, part 4: training runs under faults, and the error boundary itself (issue 12).

Cases X2 (a run folder is never overwritten without --resume or --overwrite), X3 (--resume
applies changed learning rates and records it), M13 (--resume before any checkpoint), M15
(Ctrl-C saves a checkpoint and exits cleanly), M16 (full disk while saving a checkpoint or a
mask set; temporary files of killed writers), and the cases that already behaved: P09 (kill -9
then --resume is bit-identical to an uninterrupted run), P10 (a NaN stops the run and keeps
the last good checkpoint). Also: ``--debug`` / ``ATTNORM_DEBUG`` show the traceback, internal
errors keep theirs, and every case id of issue 12 has a probe.
"""

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from _probe import CASE_IDS, child, dead_pid, digest, file_size_limit, probe, run_ok, snapshot
from attnorm import cli
from attnorm.checkpoints import load_checkpoint
from attnorm.training.loop import read_stats

TINY = ["--batch-size", "8", "--resolution", "16", "ch=8", "procedural_classes=3", "procedural_length=64",
        "samples_per_class=1", "log_every=1"]


def _train(capsys, out, steps, *extra, ok=True):
    argv = ["train-gan", "--out", out, "--steps", str(steps), *TINY, *extra]
    return run_ok(capsys, argv) if ok else argv


def _step(path) -> int:
    return int(load_checkpoint(path)["step"])


def _weights(path) -> dict:
    return load_checkpoint(path)["modules"]["G"]


# ---------------------------------------------------------------------------- X2
def test_x2_a_run_folder_is_never_overwritten_silently(tmp_path, capsys):
    run = tmp_path / "run"
    _train(capsys, run, 3, "keep_every=2")
    assert _step(run / "checkpoints" / "step_0000002.pt") == 2  # keep_every through the CLI
    before = snapshot(run)
    probe(capsys, _train(capsys, run, 2, ok=False), f"run folder {run} already holds a run",
          "continue it with --resume", "start it over with --overwrite")
    assert snapshot(run) == before  # checkpoint, config.json, stats.jsonl, samples untouched
    probe(capsys, _train(capsys, run, 5, "--resume", "--overwrite", ok=False), "not allowed with argument")
    # --overwrite: a fresh run whose statistics do not mix with the old one's
    _train(capsys, run, 2, "--overwrite")
    assert _step(run / "checkpoints" / "latest.pt") == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.pt"]  # the old run's kept ones too
    assert [r["step"] for r in read_stats(run / "stats.jsonl")] == [1, 2]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000002.png"]
    assert json.loads((run / "config.json").read_text())["steps"] == 2


# ---------------------------------------------------------------------------- X3 / P10
def test_x3_resume_applies_changed_learning_rates_and_p10_nan_keeps_the_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    _train(capsys, run, 2, "class_lr_mult=2", "lr_g=1e-4", "lr_d=4e-4")
    out = _train(capsys, run, 3, "--resume", "lr_g=1e-5", "lr_d=2e-5")
    assert "resume: applied changed optimizer settings: D lr 0.0004 -> 2e-05; G/0 lr 0.0001 -> 1e-05; " \
           "G/1 lr 0.0002 -> 2e-05" in out
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert [g["lr"] for g in state["optimizers"]["G"]["param_groups"]] == [1e-5, 2e-5]
    assert [g["lr"] for g in state["optimizers"]["D"]["param_groups"]] == [2e-5]
    assert state["extra"]["config"]["lr_g"] == 1e-5 == json.loads((run / "config.json").read_text())["lr_g"]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert events == [{"event": "resume", "step": 2, "time": events[0]["time"],
                       "changed": {"D": {"lr": [4e-4, 2e-5]}, "G/0": {"lr": [1e-4, 1e-5]},
                                   "G/1": {"lr": [2e-4, 2e-5]}}}]
    # P10: absurd learning rates (applied on resume, as the NaN message advises) make the loss NaN:
    # rc 1, the message names the last good checkpoint, which stays as it was
    good = digest(run / "checkpoints" / "latest.pt")
    capsys.readouterr()
    assert cli.main([str(a) for a in _train(capsys, run, 6, "--resume", "lr_g=1e38", "lr_d=1e38", ok=False)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert re.search(r"training stopped at step \d: .* is not finite; the last good checkpoint is .*latest.pt "
                     r"\(step 3\); resume from it with --resume, e.g. with lower learning rates", err), err
    assert digest(run / "checkpoints" / "latest.pt") == good


# ---------------------------------------------------------------------------- M13
def test_m13_resume_before_the_first_checkpoint(tmp_path, capsys, gan_run):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(gan_run / "config.json", run / "config.json")
    probe(capsys, ["train-gan", "--out", run, "--resume"], "no checkpoint to resume from at",
          "train without --resume to start the run")
    _train(capsys, run, 2)  # then starting it works (no checkpoint: nothing to protect)
    probe(capsys, _train(capsys, run, 1, "--resume", ok=False), "steps=1 is before the checkpoint's step 2",
          "pass --steps N (steps=N) with N > 2")
    out = _train(capsys, run, 2, "--resume")  # already there: nothing to do, no error
    assert "stopped at step 2 (done)" in out


# ---------------------------------------------------------------------------- M15
def test_m15_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, capsys):
    run = tmp_path / "run"
    proc = child(["train-gan", "--out", run, "--steps", "100000", *TINY, "ckpt_every=0", "sample_every=0"])
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (run / "stats.jsonl").is_file() and len((run / "stats.jsonl").read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    step = _step(run / "checkpoints" / "latest.pt")
    assert err.strip().splitlines() == [f"interrupted at step {step}; checkpoint {run / 'checkpoints' / 'latest.pt'} "
                                        f"saved; continue with --resume"]
    assert "interrupted: finishing this step and saving a checkpoint" in out
    assert read_stats(run / "stats.jsonl")[-1]["step"] == step
    assert not [p for p in (run / "checkpoints").iterdir() if p.name != "latest.pt"]
    _train(capsys, run, step + 1, "--resume")
    assert _step(run / "checkpoints" / "latest.pt") == step + 1


def test_m15_second_ctrl_c_stops_at_once(tmp_path, capsys, monkeypatch):
    """Two interrupts within one step: the first asks for a checkpoint, the second stops now:
    one line, status 130, and the last checkpoint stays as it was."""
    from attnorm.training import loop as loop_module
    run = tmp_path / "run"
    _train(capsys, run, 2)
    good = digest(run / "checkpoints" / "latest.pt")
    real_step = loop_module.TrainingLoop.train_step
    before = signal.getsignal(signal.SIGINT)  # default, or SIG_IGN in a background job

    def train_step(self):
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self)
    monkeypatch.setattr(loop_module.TrainingLoop, "train_step", train_step)
    capsys.readouterr()
    assert cli.main([str(a) for a in _train(capsys, run, 10, "--resume", ok=False)]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["attnorm train-gan: interrupted"]
    assert digest(run / "checkpoints" / "latest.pt") == good
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


# ---------------------------------------------------------------------------- M16
def test_m16_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path, capsys, gan_run):
    run = tmp_path / "run"
    shutil.copytree(gan_run, run)
    ckpt = run / "checkpoints" / "latest.pt"
    good = digest(ckpt)
    assert ckpt.stat().st_size > 64_000
    with file_size_limit(64_000):  # enough for config.json, stats.jsonl and the sample grid
        line = probe(capsys, ["train-gan", "--out", run, "--resume", "--steps", "3"], f"cannot write {ckpt}",
                     "File too large", "write elsewhere", "the previous file is unchanged")
    assert "PytorchStreamWriter" not in line and "enforce fail" not in line
    assert digest(ckpt) == good
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["latest.pt"]
    run_ok(capsys, ["train-gan", "--out", run, "--resume", "--steps", "3"])  # with space again it resumes
    assert _step(ckpt) == 3


def test_m16_full_disk_leaves_no_partial_mask_set(tmp_path, capsys):
    out = tmp_path / "m"
    run_ok(capsys, ["masks", "--out", out, "--n", "4", "--size", "32", "--seed", "0"])
    before = snapshot(out)
    with file_size_limit(150):  # a mask PNG is larger
        probe(capsys, ["masks", "--out", out, "--n", "4", "--size", "32", "--seed", "1"],
              f"cannot write the mask set to {out}", "File too large", f"nothing in {out} was changed")
    assert snapshot(out) == before  # the old set, complete, index included; no 0-byte PNG, no staging folder
    with file_size_limit(150):
        probe(capsys, ["masks", "--out", tmp_path / "new", "--n", "2", "--size", "32"], "nothing in")
    assert list((tmp_path / "new").iterdir()) == []


def test_m16_temporary_files_of_killed_writers_are_removed_on_the_next_start(tmp_path, capsys, gan_run):
    run = tmp_path / "run"
    shutil.copytree(gan_run, run)
    ckpts = run / "checkpoints"
    dead = dead_pid()
    stale = [ckpts / f".latest.pt.tmp{dead}", ckpts / f"latest.pt.tmp{dead}"]  # this and the old naming
    live = ckpts / f".latest.pt.tmp{os.getppid()}"  # a writer that still runs: left alone
    for p in stale + [live]:
        p.write_bytes(b"half a checkpoint")
    (run / "stats.jsonl").write_text((run / "stats.jsonl").read_text() + '{"step": 3, "D/lo')  # torn by the kill
    run_ok(capsys, ["train-gan", "--out", run, "--resume", "--steps", "3"])
    assert not any(p.exists() for p in stale) and live.exists()
    assert [r["step"] for r in read_stats(run / "stats.jsonl")] == [1, 2, 3]
    stage = tmp_path / "m" / f".masks-staging-{dead}"
    stage.mkdir(parents=True)
    (stage / "mask_00000.png").write_bytes(b"")
    run_ok(capsys, ["masks", "--out", tmp_path / "m", "--n", "1", "--size", "16"])
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["mask_00000.png", "masks.csv", "masks.json"]


# ---------------------------------------------------------------------------- P09
def test_p09_kill_9_then_resume_is_bit_identical(tmp_path, capsys):
    run, ref = tmp_path / "run", tmp_path / "ref"
    proc = child(["train-gan", "--out", run, "--steps", "100000", *TINY, "ckpt_every=1", "sample_every=0"])
    try:
        deadline, step = time.time() + 120, 0
        while time.time() < deadline and step < 3:
            time.sleep(0.05)
            try:
                step = _step(run / "checkpoints" / "latest.pt")
            except (FileNotFoundError, ValueError):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _step(run / "checkpoints" / "latest.pt")
    total = killed_at + 2
    _train(capsys, run, total, "--resume", "ckpt_every=1", "sample_every=0")
    _train(capsys, ref, total, "ckpt_every=1", "sample_every=0")
    a, b = _weights(run / "checkpoints" / "latest.pt"), _weights(ref / "checkpoints" / "latest.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time", "it_s")} for r in rs]  # noqa: E731
    assert strip(read_stats(run / "stats.jsonl")) == strip(read_stats(ref / "stats.jsonl"))
    assert not [p for p in (run / "checkpoints").iterdir() if p.name != "latest.pt"]


# ---------------------------------------------------------------------------- the boundary itself
def test_debug_shows_the_traceback_and_internal_errors_keep_theirs(tmp_path, capsys, monkeypatch):
    argv = ["sample", "--ckpt", str(tmp_path / "none.pt")]
    capsys.readouterr()
    assert cli.main(argv + ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("attnorm sample: error: checkpoint")
    monkeypatch.setenv("ATTNORM_DEBUG", "1")
    assert cli.main(argv) == 2 and "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("ATTNORM_DEBUG")
    # a bug is not a user error: it is not turned into an error line
    from attnorm.cli import gan as gan_commands

    def broken(args):
        raise RuntimeError("an internal bug")
    monkeypatch.setattr(gan_commands, "sample", broken)
    with pytest.raises(RuntimeError, match="an internal bug"):
        cli.main(argv)


def test_every_case_of_issue_12_has_a_probe():
    names = set()
    for path in Path(__file__).parent.glob("test_probe_*.py"):
        names |= set(re.findall(r"^def test_(\w+)", path.read_text(), flags=re.M))
    covered = set()
    for name in names:
        for part in name.split("_"):
            if re.fullmatch(r"x\d|m\d{1,2}|p\d{2}", part):
                covered.add(part)
    assert len(CASE_IDS) == 47 and covered == set(CASE_IDS), sorted(set(CASE_IDS) ^ covered)
