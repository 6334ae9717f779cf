"""Probe suite, part 3: bad arguments and config values (issue 12).

Cases X4 (negative batch size), X5 (unbounded --scale), X8 (--truncation nan), M3 (output
paths of sample, layouts --json, export-inpaint), M5 (--n / --rows 0 or negative), M6 (bad
class), M10 (--batch-size 0), M11 (config values of the wrong type), M14 (--steps 0), M17
(masks --size 0 / negative / huge), M19 (bench --sizes), and the cases that already behaved:
P15 (unknown config key), P16/P17 (--resume without --out / in a folder that is no run), P18
(unknown command, mask kind, bench variant), P19 (interpolate --steps 1), P20 (unknown metric).

Every bad value is refused before any work: no output file and no run folder appear.
"""

import json

import pytest

from _probe import probe, run_ok


def _nothing_written(tmp_path, before=()):
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


# ---------------------------------------------------------------------------- X4 / M10 / M14 / M11
@pytest.mark.parametrize("cmd", ["train-gan", "train-inpaint"])
def test_x4_m10_m14_counts_out_of_bounds(tmp_path, capsys, cmd):
    run = tmp_path / "run"
    probe(capsys, [cmd, "--out", run, "--steps", "2", "--batch-size", "-2"], "--batch-size: must be >= 1, got -2")
    probe(capsys, [cmd, "--out", run, "--steps", "2", "--batch-size", "0"], "--batch-size: must be >= 1, got 0")
    probe(capsys, [cmd, "--out", run, "--steps", "0"], "--steps: must be >= 1, got 0")
    probe(capsys, [cmd, "--out", run, "--steps", "-5"], "--steps: must be >= 1, got -5")
    probe(capsys, [cmd, "--out", run, "batch_size=-2"], "config key 'batch_size' must be >= 1, got -2 in overrides")
    probe(capsys, [cmd, "--out", run, "steps=0"], "config key 'steps' must be >= 1, got 0 in overrides")
    probe(capsys, [cmd, "--out", run, "--seed", "-1"], "--seed: must be between 0 and 4294967295")
    probe(capsys, [cmd, "--out", run, "lr_g=-1"], "'lr_g' must be >= 0")
    probe(capsys, [cmd, "--out", run, "betas=[0.5]"], "'betas' must be two numbers in [0, 1)")
    probe(capsys, [cmd, "--out", run, "max_seconds=NaN"], "'max_seconds' must be finite")
    _nothing_written(tmp_path)


@pytest.mark.parametrize("cmd", ["train-gan", "train-inpaint"])
def test_m11_config_values_of_the_wrong_type(tmp_path, capsys, cmd):
    run = tmp_path / "run"
    width = "ch" if cmd == "train-gan" else "num_entities"
    probe(capsys, [cmd, "--out", run, f"{width}=abc"], f"config key '{width}' must be an integer, got \"abc\"",
          "in overrides")
    for name, body, fragment in (
            ("steps.json", {"steps": "two"}, "config key 'steps' must be an integer, got \"two\" (str) in"),
            ("batch.json", {"batch_size": 8.0}, "config key 'batch_size' must be an integer, got 8.0 (float) in"),
            ("bool.json", {"lr_g": True}, "config key 'lr_g' must be a number, got true"),
            ("list.json", [1, 2], "must hold a JSON object"),
    ):
        (tmp_path / name).write_text(json.dumps(body))
        probe(capsys, [cmd, "--out", run, "--config", tmp_path / name], fragment, name)
    (tmp_path / "bad.json").write_text("{steps: 3")
    probe(capsys, [cmd, "--out", run, "--config", tmp_path / "bad.json"], "bad.json is not valid JSON")
    probe(capsys, [cmd, "--out", run, "--config", tmp_path / "none.json"], "config file", "none.json not found")
    assert not run.exists()


# ---------------------------------------------------------------------------- X5 / X8 / M5 / M6 / M3
def test_x5_grid_scale_is_bounded(tmp_path, capsys, gan_ckpt):
    probe(capsys, ["sample", "--ckpt", gan_ckpt, "--classes", "0", "--n", "1", "--scale", "100000", "--out",
                   tmp_path / "big.png"], "the grid would be", "over the limit", "use a smaller --scale")
    probe(capsys, ["sample", "--ckpt", gan_ckpt, "--classes", "0", "--n", "1", "--scale", "0", "--out",
                   tmp_path / "big.png"], "--scale: must be >= 1, got 0")
    probe(capsys, ["interpolate", "--ckpt", gan_ckpt, "--from", "0", "--to", "1", "--scale", "100000",
                   "--out", tmp_path / "big.png"], "the grid would be")
    probe(capsys, ["layouts", "--ckpt", gan_ckpt, "--classes", "0", "--n", "1", "--scale", "5000",
                   "--out", tmp_path / "big.png"], "the grid would be")
    probe(capsys, ["sample", "--ckpt", gan_ckpt, "--n", "100000000", "--out", tmp_path / "big.png"],
          "the grid would be", "fewer images")
    _nothing_written(tmp_path)
    run_ok(capsys, ["sample", "--ckpt", gan_ckpt, "--classes", "0", "--n", "1", "--scale", "2", "--out",
                    tmp_path / "ok.png"])


def test_x8_truncation_must_be_a_positive_finite_number(tmp_path, capsys, gan_ckpt):
    for bad, fragment in (("nan", "expected a finite number, got 'nan'"), ("inf", "expected a finite number"),
                          ("-1", "must be > 0, got -1"), ("0", "must be > 0"), ("x", "expected a number, got 'x'")):
        probe(capsys, ["sample", "--ckpt", gan_ckpt, "--classes", "0", "--n", "2", "--truncation", bad, "--out",
                       tmp_path / "t.png"], "--truncation", fragment)
        probe(capsys, ["evaluate", "gan", "--ckpt", gan_ckpt, "--truncation", bad], "--truncation", fragment)
    _nothing_written(tmp_path)


def test_m5_image_counts_must_be_positive(tmp_path, capsys, gan_ckpt):
    for n in ("0", "-1"):
        probe(capsys, ["sample", "--ckpt", gan_ckpt, "--n", n, "--out", tmp_path / "s.png"],
              f"--n: must be >= 1, got {n}")
        probe(capsys, ["layouts", "--ckpt", gan_ckpt, "--n", n, "--out", tmp_path / "l.png"], "--n: must be >= 1")
        probe(capsys, ["interpolate", "--ckpt", gan_ckpt, "--from", "0", "--to", "1", "--rows", n, "--out",
                       tmp_path / "i.png"], "--rows: must be >= 1")
        probe(capsys, ["sample", "--ckpt", gan_ckpt, "--cols", n, "--out", tmp_path / "s.png"], "--cols")
        probe(capsys, ["evaluate", "gan", "--ckpt", gan_ckpt, "--n", n], "--n: must be >= 1")
        probe(capsys, ["masks", "--out", tmp_path / "m", "--n", n], "--n: must be >= 1")
    _nothing_written(tmp_path)


@pytest.mark.parametrize("bad, fragment", [
    ("99", "class 99 out of range 0..2"), ("-1", "class -1 out of range 0..2"),
    ("1.5", "unknown class '1.5'; use indices 0..2 or names"), ("banana", "unknown class 'banana'"),
])
def test_m6_bad_class_is_one_line(tmp_path, capsys, gan_ckpt, bad, fragment):
    probe(capsys, ["sample", "--ckpt", gan_ckpt, "--classes", bad, "--out", tmp_path / "s.png"], fragment)
    probe(capsys, ["interpolate", "--ckpt", gan_ckpt, "--from", bad, "--to", "0", "--out", tmp_path / "s.png"],
          fragment)
    probe(capsys, ["interpolate", "--ckpt", gan_ckpt, "--from", "0,1", "--to", "0", "--out", tmp_path / "s.png"],
          "--from takes one class")
    _nothing_written(tmp_path)


def test_m3_output_paths_of_sample_layouts_export(tmp_path, capsys, gan_ckpt, inpaint_run):
    probe(capsys, ["sample", "--ckpt", gan_ckpt, "--out", tmp_path / "grid"], "--out", "has no extension",
          str(tmp_path / "grid.png"))
    probe(capsys, ["layouts", "--ckpt", gan_ckpt, "--out", tmp_path / "l"], "has no extension")
    (tmp_path / "f").write_text("x")
    probe(capsys, ["layouts", "--ckpt", gan_ckpt, "--out", tmp_path / "l.png", "--json", tmp_path / "f" / "u.json"],
          "--json", "is a file, not a folder")
    probe(capsys, ["sample", "--ckpt", gan_ckpt, "--out", tmp_path / "s.png", "--out-dir", tmp_path / "f"],
          "--out-dir", "is a file; give a folder")
    ckpt = inpaint_run / "checkpoints" / "latest.pt"
    probe(capsys, ["export-inpaint", ckpt, tmp_path / "weights"], "has no extension", "must end with .safetensors")
    probe(capsys, ["export-inpaint", ckpt, tmp_path / "f" / "w.safetensors"], "is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    # missing folders are created
    run_ok(capsys, ["sample", "--ckpt", gan_ckpt, "--n", "1", "--out", tmp_path / "a" / "b" / "s.png"])
    run_ok(capsys, ["layouts", "--ckpt", gan_ckpt, "--n", "1", "--classes", "0", "--out", tmp_path / "a" / "l.png",
                    "--json", tmp_path / "c" / "d" / "u.json"])
    assert json.loads((tmp_path / "c" / "d" / "u.json").read_text())[0]["num_entities"] > 0
    run_ok(capsys, ["export-inpaint", ckpt, tmp_path / "e" / "w.safetensors"])
    assert (tmp_path / "a" / "b" / "s.png").is_file() and (tmp_path / "e" / "w.safetensors").is_file()


# ---------------------------------------------------------------------------- M17 / M19
def test_m17_mask_sizes_are_bounded(tmp_path, capsys):
    probe(capsys, ["masks", "--out", tmp_path / "m", "--size", "0"], "--size: must be >= 1, got 0")
    probe(capsys, ["masks", "--out", tmp_path / "m", "--size", "-32"], "--size: must be >= 1, got -32")
    probe(capsys, ["masks", "--out", tmp_path / "m", "--size", "100000"],
          "a mask of --size 100000 would be 100000x100000", "choose a smaller --size")
    probe(capsys, ["masks", "--out", tmp_path / "m", "--size", "8", "100000000"], "would be")
    probe(capsys, ["evaluate", "inpaint", "--method", "pushpull", "--masks", tmp_path, "--out", tmp_path / "e",
                   "--size", "100000"], "--size 100000 is over the pixel limit")
    _nothing_written(tmp_path)


def test_m19_bench_sizes(tmp_path, capsys):
    probe(capsys, ["bench", "--sizes", "abc"], "--sizes: expected an integer, got 'abc'", "comma-separated integers")
    probe(capsys, ["bench", "--sizes", "0"], "--sizes: must be between 1 and 4096, got 0")
    probe(capsys, ["bench", "--sizes", "16,-4"], "got -4")
    probe(capsys, ["bench", "--sizes", "100000"], "between 1 and 4096")
    probe(capsys, ["bench", "--sizes", ","], "expected comma-separated integers")
    probe(capsys, ["bench", "--repeats", "0"], "--repeats: must be >= 1")
    probe(capsys, ["bench", "--json", tmp_path], "is a folder; give a file name")


# ---------------------------------------------------------------------------- already handled
def test_p15_unknown_config_key(tmp_path, capsys):
    probe(capsys, ["train-gan", "--out", tmp_path / "r", "stepz=3"], "unknown config key(s) ['stepz']",
          "known keys")
    probe(capsys, ["train-gan", "--out", tmp_path / "r", "steps"], "expected key=value, got 'steps'")


def test_p16_p17_resume_needs_a_run(tmp_path, capsys):
    probe(capsys, ["train-gan", "--resume"], "--resume needs --out RUN_DIR")
    probe(capsys, ["train-inpaint", "--out", tmp_path / "nope", "--resume"], "config.json not found",
          "is " + str(tmp_path / "nope") + " a train-inpaint run folder?")


def test_p18_unknown_names(tmp_path, capsys):
    probe(capsys, ["masks", "--out", tmp_path / "m", "--kind", "stars"], "invalid choice: 'stars'")
    probe(capsys, ["bench", "--variants", "an,foo"], "unknown variant 'foo'")
    probe(capsys, ["masks", "--out", tmp_path / "m", "--bogus"], "unrecognized arguments: --bogus",
          "see attnorm masks --help")


def test_p19_interpolate_needs_two_steps(tmp_path, capsys, gan_ckpt):
    probe(capsys, ["interpolate", "--ckpt", gan_ckpt, "--from", "0", "--to", "1", "--steps", "1"],
          "--steps: must be >= 2, got 1")


def test_p20_unknown_metric(tmp_path, capsys, gan_ckpt):
    probe(capsys, ["evaluate", "gan", "--ckpt", gan_ckpt, "--metrics", "fid,psnr", "--n", "2"],
          "unknown metric(s) ['psnr']")
