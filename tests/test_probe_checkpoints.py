"""Probe suite, part 2: bad checkpoints and devices (issue 12).

Cases M7 (truncated, random, empty checkpoints; a .safetensors whose header lies), M8 (a
malicious pickle: refused as unsafe, never executed, no advice to turn weights_only off), M9
(the other task's checkpoint in sample and in --resume), M12 (bad or missing device), and the
cases that already behaved: P03 (missing checkpoint), P11 (no pickle code ever runs), P12/P13
(the other task's checkpoint refused by export-inpaint and evaluate inpaint).
"""

import json
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from _probe import probe, run_ok, snapshot

MARKER = "attnorm_probe_pwned"


class _Evil:
    """Unpickling this runs ``os.system("touch MARKER")``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def files(tmp_path, gan_ckpt):
    """Broken checkpoints, plus an image and a mask."""
    good = gan_ckpt.read_bytes()
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 3])
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    marker = tmp_path / MARKER
    with open(tmp_path / "evil2.pt", "wb") as f:  # protocol 2: a GLOBAL opcode
        pickle.dump({"format": "attnorm-train-v1", "x": _Evil(marker)}, f, protocol=2)
    with open(tmp_path / "evil4.pt", "wb") as f:  # protocol 4: STACK_GLOBAL
        pickle.dump({"x": _Evil(marker)}, f, protocol=4)
    torch.save({"format": "attnorm-train-v1", "x": _Evil(marker)}, tmp_path / "evil_zip.pt")  # torch's zip format
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(4)}, str(tmp_path / "ok.safetensors"),
              metadata={"format": "attnorm-inpaint-generator-v1", "config": "{}"})
    raw = (tmp_path / "ok.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header["a"]["shape"] = [1000000]  # claims 4 MB, holds 16 bytes
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    (tmp_path / "lie.safetensors").write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "img.png")
    m = np.zeros((16, 16), np.uint8)
    m[4:8, 4:8] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    return tmp_path


def _users(t, ckpt):
    """Every command that reads a checkpoint given by the user."""
    return [
        ["sample", "--ckpt", ckpt, "--n", "1", "--out", t / "s.png"],
        ["inpaint", "--ckpt", ckpt, "--image", t / "img.png", "--mask", t / "mask.png", "--out", t / "o.png"],
        ["export-inpaint", ckpt, t / "x.safetensors"],
        ["export-gan", ckpt, t / "x.safetensors"],
        ["evaluate", "gan", "--ckpt", ckpt, "--n", "2", "--metrics", "acc"],
        ["evaluate", "inpaint", "--ckpt", ckpt, "--masks", t, "--out", t / "ev"],
    ]


# ---------------------------------------------------------------------------- M7
@pytest.mark.parametrize("name, fragment", [
    ("empty.pt", "is empty (0 bytes)"),
    ("trunc.pt", "is truncated or corrupt"),
    ("random.pt", "is not a PyTorch checkpoint"),
])
def test_m7_broken_checkpoints_are_one_line(files, capsys, name, fragment):
    for argv in _users(files, files / name):
        probe(capsys, argv, name, fragment, "pass a checkpoint written by attnorm")
    assert not (files / "s.png").exists() and not (files / "o.png").exists() and not (files / "x.safetensors").exists()


def test_m7_safetensors_with_a_lying_header(files, capsys):
    line = probe(capsys, ["inpaint", "--ckpt", files / "lie.safetensors", "--image", files / "img.png", "--mask",
                          files / "mask.png", "--out", files / "o.png"],
                 "lie.safetensors is not a readable safetensors")
    assert "invalid shape" in line
    probe(capsys, ["sample", "--ckpt", files / "lie.safetensors", "--out", files / "s.png"],
          "lie.safetensors is not a readable safetensors file")
    probe(capsys, ["sample", "--ckpt", files / "ok.safetensors", "--out", files / "s.png"],
          "is not a GAN generator .safetensors file", "it is an inpainting generator")
    probe(capsys, ["train-gan", "--out", files / "r", "--resume"], "config.json not found")
    # a safetensors file whose weights do not fit the config in its metadata
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(4)}, str(files / "wrong.safetensors"),
              metadata={"format": "attnorm-inpaint-generator-v1", "config": json.dumps({"width": 0.125})})
    probe(capsys, ["inpaint", "--ckpt", files / "wrong.safetensors", "--image", files / "img.png", "--mask",
                   files / "mask.png", "--out", files / "o.png"], "its weights do not match its generator config")


# ---------------------------------------------------------------------------- M8 / P11
@pytest.mark.parametrize("name", ["evil2.pt", "evil4.pt", "evil_zip.pt"])
def test_m8_p11_malicious_pickle_is_refused_as_unsafe_and_never_runs(files, capsys, name):
    for argv in _users(files, files / name):
        line = probe(capsys, argv, f"refused to load {files / name}", "posix.system",
                     "attnorm loads only checkpoints holding tensors and plain data")
        assert "weights_only" not in line
    # the run folder of a resumed training holds the same file
    run = files / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(files / name, run / "checkpoints" / "latest.pt")
    (run / "config.json").write_text(json.dumps({"steps": 3, "ch": 8}))
    probe(capsys, ["train-gan", "--out", run, "--resume", "--steps", "4"], "refused to load", "posix.system")
    assert not (files / MARKER).exists() and not os.path.exists(MARKER)


# ---------------------------------------------------------------------------- M9 / P12 / P13
def test_m9_other_tasks_checkpoint_in_sample_and_resume(tmp_path, capsys, gan_run, inpaint_run):
    inp_ckpt = inpaint_run / "checkpoints" / "latest.pt"
    gan_ckpt = gan_run / "checkpoints" / "latest.pt"
    probe(capsys, ["sample", "--ckpt", inp_ckpt, "--out", tmp_path / "s.png"],
          "is a checkpoint of train-inpaint", "use it with attnorm inpaint", "not of train-gan")
    probe(capsys, ["layouts", "--ckpt", inp_ckpt, "--out", tmp_path / "l.png"], "is a checkpoint of train-inpaint")
    before = snapshot(inpaint_run), snapshot(gan_run)
    probe(capsys, ["train-gan", "--out", inpaint_run, "--resume", "--steps", "5"],
          "config.json is not the config of a train-gan run", "resume a run with the command that started it")
    probe(capsys, ["train-inpaint", "--out", gan_run, "--resume", "--steps", "5"],
          "config.json is not the config of a train-inpaint run")
    # the right config but the other task's checkpoint
    for src, cfg_from, cmd, other in ((inp_ckpt, gan_run, "train-gan", "train-inpaint"),
                                      (gan_ckpt, inpaint_run, "train-inpaint", "train-gan")):
        run = tmp_path / cmd
        (run / "checkpoints").mkdir(parents=True)
        shutil.copy(cfg_from / "config.json", run / "config.json")
        shutil.copy(src, run / "checkpoints" / "latest.pt")
        probe(capsys, [cmd, "--out", run, "--resume", "--steps", "5"], f"is a checkpoint of {other}",
              f"not of {cmd}", f"resume it with attnorm {other}")
    assert (snapshot(inpaint_run), snapshot(gan_run)) == before


def test_p12_p13_other_tasks_checkpoint_refused_by_inpaint_commands(tmp_path, capsys, gan_ckpt, inpaint_run):
    probe(capsys, ["export-inpaint", gan_ckpt, tmp_path / "x.safetensors"], "is a checkpoint of train-gan",
          "not of train-inpaint")
    probe(capsys, ["export-gan", inpaint_run / "checkpoints" / "latest.pt", tmp_path / "x.safetensors"],
          "is a checkpoint of train-inpaint", "not of train-gan")
    probe(capsys, ["export-gan", gan_ckpt, tmp_path / "x"], "has no extension", "must end with .safetensors")
    m = tmp_path / "m"
    run_ok(capsys, ["masks", "--out", m, "--n", "1", "--size", "16"])
    probe(capsys, ["evaluate", "inpaint", "--ckpt", gan_ckpt, "--masks", m, "--out", tmp_path / "e"],
          "is a checkpoint of train-gan")
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "e").exists()


# ---------------------------------------------------------------------------- M12 / P03
def test_m12_bad_or_missing_device(tmp_path, capsys, gan_ckpt, inpaint_gen):
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    commands = [
        ["sample", "--ckpt", gan_ckpt, "--out", tmp_path / "s.png"],
        ["inpaint", "--ckpt", inpaint_gen, "--image", img, "--mask", img, "--out", tmp_path / "o.png"],
        ["train-gan", "--out", tmp_path / "g", "--steps", "1"],
        ["train-inpaint", "--out", tmp_path / "i", "--steps", "1"],
        ["evaluate", "gan", "--ckpt", gan_ckpt, "--n", "2", "--metrics", "acc"],
        ["bench", "--sizes", "4", "--no-memory", "--json", ""],
    ]
    for argv in commands:
        probe(capsys, argv + ["--device", "banana"], "unknown device 'banana'", "use cpu, cuda, cuda:N or mps")
        if not torch.cuda.is_available():
            probe(capsys, argv + ["--device", "cuda"], "device 'cuda' is not available", "use --device cpu")
        else:
            n = torch.cuda.device_count()
            probe(capsys, argv + ["--device", f"cuda:{n}"], "does not exist")
    probe(capsys, ["train-gan", "--out", tmp_path / "g", "--steps", "1", "device=banana"], "unknown device")
    assert not (tmp_path / "g").exists() and not (tmp_path / "s.png").exists()


def test_p03_missing_checkpoint(tmp_path, capsys):
    probe(capsys, ["sample", "--ckpt", tmp_path / "none.pt"], "none.pt not found", "RUN_DIR/checkpoints/latest.pt")
    probe(capsys, ["inpaint", "--ckpt", tmp_path / "none.pt", "--image", tmp_path / "i.png", "--mask",
                   tmp_path / "m.png", "--out", tmp_path / "o.png"], "not found")
