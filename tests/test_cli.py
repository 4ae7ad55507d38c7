"""The `vqgan-lc` command: token round trips through files, eval report, one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vqgan_lc.cli import main
from vqgan_lc.tokenizer.config import AutoencoderConfig, TokenizerConfig
from vqgan_lc.quantize import QuantizerConfig
from vqgan_lc.tokenizer.model import VQModel


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    ae = AutoencoderConfig(resolution=32, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                           z_channels=8, norm_groups=4)
    model = VQModel(TokenizerConfig(ae, QuantizerConfig(kind="lc", codebook_size=32, dim=4, codebook_dim=16)))
    path = tmp_path_factory.mktemp("ckpt") / "tok"
    model.save_pretrained(path)
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


def test_eval_writes_report(checkpoint, images, tmp_path):
    assert main(["eval", str(checkpoint), "--data", str(images), "--out", str(tmp_path / "ev"),
                 "--batch-size", "2"]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    for key in ["codebook_size", "utilization", "perplexity", "psnr", "psnr_y", "ssim", "perceptual",
                "perceptual_name", "fd_lite0", "num_images"]:
        assert key in report, key
    assert report["num_images"] == 3 and report["codebook_size"] == 32
    assert (tmp_path / "ev" / "reconstructions.png").is_file()


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
