"""The `vqgan-lc` command: token round trips through files, eval report, one-line errors."""
import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from vqgan_lc.cli import main
from vqgan_lc.tokenizer.model import VQModel


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("ckpt") / "tok"
    tiny_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_encode_decode_reconstruct_export(checkpoint, images, tmp_path):
    paths = sorted(str(p) for p in images.glob("im*.png"))
    assert main(["encode", str(checkpoint), *paths, "--out", str(tmp_path / "tok")]) == 0
    tokens = np.load(tmp_path / "tok" / "im0.npy")
    assert tokens.shape == (8, 8) and tokens.dtype == np.int32 and tokens.max() < 32
    assert main(["decode", str(checkpoint), str(tmp_path / "tok" / "im0.npy"), "--out", str(tmp_path / "dec")]) == 0
    assert main(["reconstruct", str(checkpoint), *paths, "--out", str(tmp_path / "rec")]) == 0
    decoded = np.asarray(Image.open(tmp_path / "dec" / "im0.png"))
    recon = np.asarray(Image.open(tmp_path / "rec" / "im0.png"))
    assert decoded.shape == (32, 32, 3) and np.array_equal(decoded, recon)  # decode(encode(x)) == reconstruct(x)
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "exp")]) == 0
    assert VQModel.from_pretrained(tmp_path / "exp").quantizer.codebook.shape == (32, 4)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(folder):
    """{relative path: permission bits} of every file under `folder`."""
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


EVAL = ["--batch-size", "2", "--fid", "off"]


@pytest.fixture(scope="module")
def evaluated(checkpoint, images, tmp_path_factory):
    """One eval run (under umask 022), shared: it is the slow part of these tests."""
    out = tmp_path_factory.mktemp("eval") / "ev"
    old = os.umask(0o022)
    try:
        assert main(["eval", str(checkpoint), "--data", str(images), "--out", str(out), *EVAL]) == 0
    finally:
        os.umask(old)
    return out


def test_eval_writes_report(evaluated):
    modes = _modes(evaluated)  # the same mode for every output, as any other new file gets
    assert "report.json" in modes and set(modes.values()) == {0o644}, modes
    report = json.loads((evaluated / "report.json").read_text())
    for key in ["codebook_size", "utilization", "perplexity", "psnr", "psnr_y", "ssim", "perceptual",
                "perceptual_name", "fd_lite0", "num_images"]:
        assert key in report, key
    assert report["num_images"] == 3 and report["codebook_size"] == 32
    assert (evaluated / "reconstructions.png").is_file()


def test_errors_are_one_line(checkpoint, tmp_path, capsys):
    assert main(["encode", str(tmp_path / "nope"), "x.png", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqgan-lc encode: error:") and "\n" not in err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 2, 2), dtype=np.float32))
    assert main(["decode", str(checkpoint), str(bad), "--out", str(tmp_path / "d")]) == 2
    assert "expected a 2-D integer array" in capsys.readouterr().err
    assert main(["train", "no-such-recipe"]) == 2
    assert "unknown recipe" in capsys.readouterr().err


def test_console_script_lists_presets():
    out = subprocess.run([sys.executable, "-m", "vqgan_lc.cli", "presets"], capture_output=True, text=True, check=True)
    assert "vqgan-lc-f16-100k" in out.stdout and "paper-f16-100k" in out.stdout


def test_help_and_version_import_nothing_heavy():
    code = ("import sys, vqgan_lc.cli as c; p = c.build_parser(); "
            "print(sorted(m for m in ('torch', 'faiss', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    out = subprocess.run([sys.executable, "-m", "vqgan_lc", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("vqgan-lc ")


def test_train_help_lists_every_set_key(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "model.quantizer.codebook_size" in text and "max_steps" in text and "loss.disc_start" in text


def test_outputs_never_overwrite_inputs_and_never_each_other(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(1)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / folder / "cat.png")
    before = (tmp_path / "a" / "cat.png").read_bytes()
    paths = [str(tmp_path / "a" / "cat.png"), str(tmp_path / "b" / "cat.png")]
    assert main(["reconstruct", str(checkpoint), paths[0], "--out", str(tmp_path / "a")]) == 2
    assert "would overwrite an input" in capsys.readouterr().err
    assert (tmp_path / "a" / "cat.png").read_bytes() == before
    assert main(["encode", str(checkpoint), *paths, "--out", str(tmp_path / "tok")]) == 0
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["0_cat.npy", "1_cat.npy"]


def test_partial_success_reports_each_unreadable_input(checkpoint, images, tmp_path, capsys):
    paths = sorted(str(p) for p in images.glob("*.png"))  # 3 readable + broken.png
    assert main(["encode", str(checkpoint), *paths, "--out", str(tmp_path / "tok")]) == 0
    captured = capsys.readouterr()
    assert "3 token arrays written" in captured.out and "1 unreadable input(s) skipped" in captured.out
    assert [line for line in captured.err.splitlines() if line.startswith("skipped ")] == [
        line for line in captured.err.splitlines() if "broken.png" in line]


def test_bad_token_files_and_bad_values_fail_in_one_line(checkpoint, tmp_path, capsys):
    np.save(tmp_path / "empty.npy", np.zeros((0, 8), dtype=np.int32))
    np.savez(tmp_path / "archive.npz", a=np.zeros((8, 8), dtype=np.int32))
    (tmp_path / "file").write_text("not a folder")
    cases = [
        (["decode", str(checkpoint), str(tmp_path / "empty.npy"), "--out", str(tmp_path / "d")], "no empty side"),
        (["decode", str(checkpoint), str(tmp_path / "archive.npz"), "--out", str(tmp_path / "d")], "npz"),
        (["encode", str(checkpoint), "x.png", "--out", str(tmp_path / "file")], "not a folder"),
        (["train", "cpu-tiny-lc", "--out", str(tmp_path / "r"), "--set", "betas=0.5"], "betas"),
        (["train", "cpu-tiny-lc", "--out", str(tmp_path / "r"), "--set", "max_steps=-3"], "max_steps"),
        (["eval", str(checkpoint), "--data", "demo:eval:4", "--out", str(tmp_path / "e"), "--device", "cuda"],
         "no CUDA device"),
    ]
    for argv, expected in cases:
        if "cuda" in argv and __import__("torch").cuda.is_available():
            continue
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err and "Traceback" not in err, (argv, err)


TINY_TRAIN = ["model.autoencoder.resolution=32", "model.autoencoder.ch=8", "model.autoencoder.ch_mult=1,2,2",
              "model.autoencoder.num_res_blocks=1", "model.autoencoder.z_channels=8",
              "model.autoencoder.norm_groups=4", "model.quantizer.codebook_size=64", "model.quantizer.codebook_dim=16",
              "batch_size=4", "loss.perceptual=none", "device=cpu", "save_every=1", "num_workers=0"]


def test_resume_alone_continues_and_refuses_changed_settings(tmp_path, capsys, umask_022):
    run = tmp_path / "run"
    assert main(["train", "cpu-tiny-lc", "--data", "demo:train:16", "--out", str(run), "--set", *TINY_TRAIN,
                 "max_steps=2"]) == 0
    assert main(["train", "--resume", str(run), "--set", "lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "lr differ(s) from the saved run" in err
    assert main(["train", "--resume", str(run), "--set", "max_steps=3"]) == 0
    assert "trained to step 3 (1 step in this run); tokenizer saved in" in capsys.readouterr().out
    # a run already at its last step: the last line says nothing was trained, and nothing is written
    weights = run / "tokenizer" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "nothing trained" in out and "already at step 3" in out and "saved" not in out
    assert weights.stat().st_mtime_ns == before
    # every file of the run (checkpoint, weights, config, tensorboard, lock) has the usual mode
    modes = _modes(run)
    assert {"train_state.pt", "tokenizer/model.safetensors", "train_config.json"} <= set(modes), modes
    assert set(modes.values()) == {0o644}, modes


def test_a_second_process_cannot_write_a_locked_run_folder(tmp_path):
    from vqgan_lc.files import DirectoryLock

    code = ("import sys; from vqgan_lc.files import DirectoryLock\n"
            "try:\n    DirectoryLock(sys.argv[1]).acquire()\nexcept RuntimeError as e:\n    print(e)")
    with DirectoryLock(tmp_path / "run"):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True)
        assert "in use by another process (pid" in out.stdout
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True)
    assert out.stdout == ""  # released


def test_a_second_trainer_on_the_same_run_folder_gets_one_line(tmp_path, capsys):
    """Two real training processes on one --out: the second names the first and writes nothing."""
    run = tmp_path / "run"
    argv = ["train", "cpu-tiny-lc", "--data", "demo:train:16", "--out", str(run), "--set", *TINY_TRAIN,
            "max_steps=100000", "save_every=100000"]
    first = subprocess.Popen([sys.executable, "-m", "vqgan_lc", *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        lock = run / ".lock"
        while not (lock.is_file() and lock.read_text() == f"pid {first.pid}" and (run / "train_config.json").is_file()):
            assert first.poll() is None and time.monotonic() < deadline, "the first trainer did not start"
            time.sleep(0.2)
        config_before = (run / "train_config.json").stat().st_mtime_ns
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert f"in use by another process (pid {first.pid})" in err and "\n" not in err, err
        assert (run / "train_config.json").stat().st_mtime_ns == config_before
        assert first.poll() is None  # the first one is untouched
    finally:
        first.kill()
        first.wait()


@pytest.fixture
def small_disk(tmp_path, mounted_tmpfs):
    """A 256 KiB tmpfs: a tiny training run's checkpoint (about 1.5 MB) does not fit."""
    (tmp_path / "disk").mkdir()
    with mounted_tmpfs(tmp_path / "disk", "size=256k") as folder:
        yield folder


def _error_line(stderr: str) -> str:
    """The one error line of a command that failed after its work began: only the progress bars
    of that work may come before it (closed, so that the error starts its own line)."""
    *bars, line = stderr.strip().split("\n")
    assert all("%|" in bar for bar in bars) and "Traceback" not in stderr, stderr
    return line


def test_disk_full_during_a_checkpoint_is_one_line_and_leaves_no_temp_file(small_disk, capsys):
    run = small_disk / "run"
    assert main(["train", "cpu-tiny-lc", "--data", "demo:train:16", "--out", str(run), "--set", *TINY_TRAIN,
                 "max_steps=2"]) == 2
    err = _error_line(capsys.readouterr().err)
    assert err.startswith("vqgan-lc train: error: no space left on device writing "), err
    assert "train_state.pt" in err and "\n" not in err and "Traceback" not in err, err
    assert not [p.name for p in run.rglob("*.tmp")]  # the half-written checkpoint was removed
    assert not (run / "train_state.pt").exists()


def test_disk_full_while_eval_writes_its_report(checkpoint, images, evaluated, small_disk, capsys):
    """The grid fits and the report does not: eval fails at its last write, in one line."""
    page = 4096
    grid_pages = -(-(evaluated / "reconstructions.png").stat().st_size // page)  # the same grid again
    total = os.statvfs(small_disk).f_blocks * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (total - grid_pages * page))
    capsys.readouterr()
    out = small_disk / "ev"
    assert main(["eval", str(checkpoint), "--data", str(images), "--out", str(out), *EVAL]) == 2
    err = _error_line(capsys.readouterr().err)
    assert err.startswith("vqgan-lc eval: error: no space left on device writing "), err
    assert "report.json" in err and "\n" not in err and "Traceback" not in err, err
    assert (out / "reconstructions.png").is_file()  # completed files are kept
    assert sorted(p.name for p in out.iterdir()) == ["reconstructions.png"]  # no temp file left


def test_codebook_build_lists_each_unreadable_image_once(tmp_path, capsys):
    from torch import nn

    from vqgan_lc.backbones import register_backbone, wrap_module
    from vqgan_lc.codebook import load_codebook

    def tiny(weights=None, pretrained=True):
        torch.manual_seed(0)
        return wrap_module(nn.Conv2d(3, 4, kernel_size=8, stride=8), input_size=32, name="test-skip-tiny", dim=4)

    register_backbone("test-skip-tiny", tiny)
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(data / f"{i}.png")
    (data / "broken.png").write_bytes(b"\x89PNG broken")
    assert main(["codebook", "build", str(data), "--size", "4", "--backbone", "test-skip-tiny", "--pool", "2",
                 "--workers", "0", "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--out",
                 str(tmp_path / "cb.safetensors")]) == 0
    listings = list((tmp_path / "cache").rglob("skipped.txt"))
    assert len(listings) == 1
    lines = listings[0].read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(data / "broken.png") + "\t"), lines
    assert load_codebook(tmp_path / "cb.safetensors").metadata["num_skipped"] == 1


def test_disk_full_in_a_safetensors_write_is_one_line_too(checkpoint, small_disk, capsys):
    """safetensors reports a full disk as its own error type, not an OSError: caught the same way."""
    total = os.statvfs(small_disk).f_blocks * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * total)  # every page taken; empty files still fit
    out = small_disk / "exp"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vqgan-lc export: error: no space left on device writing {out}"), err
    assert "\n" not in err and "Traceback" not in err, err
    assert not out.exists()  # neither the weights nor their temporary file are left, nor the empty --out


def test_train_refuses_a_folder_holding_a_run_unless_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "cpu-tiny-lc", "--data", "demo:train:16", "--out", str(run), "--set", *TINY_TRAIN, "max_steps=1"]
    assert main(argv) == 0
    (run / "notes.txt").write_text("the user's own file")
    weights = run / "tokenizer" / "model.safetensors"
    before = weights.read_bytes()
    assert main([*argv[:-1], "max_steps=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{run} already holds a training run" in err and "--resume" in err and "--overwrite" in err
    assert weights.read_bytes() == before and json.loads((run / "train_config.json").read_text())["max_steps"] == 1
    assert main(["train", "--resume", str(run), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "drop --out" in capsys.readouterr().err
    assert main([*argv[:-1], "max_steps=2", "--overwrite"]) == 0  # a new run replaces the old one
    assert json.loads((run / "train_config.json").read_text())["max_steps"] == 2
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (run / "notes.txt").read_text() == "the user's own file"  # only the run's own files were replaced
    capsys.readouterr()
    assert main(["info", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "tokenizer run" and info["step"] == "2 (max_steps=2)"
    assert info["EMA"].startswith("none") and info["exported model"].endswith("model.safetensors")


def test_train_gen_help_lists_model_keys_of_the_named_preset_and_gives_examples(capsys):
    with pytest.raises(SystemExit):
        main(["train-gen", "--help"])
    text = capsys.readouterr().out
    for key in ("model.n_layer", "model.depth", "model.model_channels", "max_steps", "ema_decay"):
        assert key in text, key
    assert "examples:" in text and "train-gen dit-tiny --cache" in text and "--resume" in text
    with pytest.raises(SystemExit):
        main(["train-gen", "dit-S", "--help"])
    text = capsys.readouterr().out
    depth = next(line for line in text.splitlines() if line.strip().startswith("model.depth"))
    assert depth.split()[-1] == "12"  # dit-S's depth, not the class default
    assert "model.* keys of gpt-tiny" not in text and "model.in_channels" in text and "from the cache" in text
