"""codebook build / info from the command line, on a tiny registered backbone."""
import pytest
import torch
from torch import nn

from vqgan_lc.backbones import register_backbone, wrap_module
from vqgan_lc.codebook import load_codebook
from vqgan_lc.cli import main

CALLS = {"forward": 0}


class CountingConv(nn.Conv2d):
    def forward(self, x):
        CALLS["forward"] += 1
        return super().forward(x)


def _tiny(weights=None, pretrained=True):
    torch.manual_seed(0)
    return wrap_module(CountingConv(3, 4, kernel_size=8, stride=8), input_size=32, name="test-cli-tiny", dim=4)


register_backbone("test-cli-tiny", _tiny)


@pytest.fixture
def dataset(tmp_path, write_images):
    write_images(tmp_path / "data", ("x", "y"))
    return tmp_path


def _build(root, *extra):
    return main(["codebook", "build", str(root / "data"), "--backbone", "test-cli-tiny", "--pool", "2",
                 "--workers", "0", "--no-progress", "--cache-dir", str(root / "cache"), *extra])


def test_build_per_class_then_reuse_cached_features_for_another_size(dataset, capsys):
    assert _build(dataset, "--size", "4", "--out", str(dataset / "cb4.safetensors")) == 0
    calls = CALLS["forward"]
    codebook = load_codebook(dataset / "cb4.safetensors")
    meta = codebook.metadata
    assert codebook.vectors.shape == (4, 4)
    assert (meta["mode"], meta["entries_per_class"], meta["class_names"]) == ("per-class", [2, 2], ["x", "y"])
    assert (meta["backbone"], meta["pooling"], meta["num_images"], meta["num_vectors"]) == ("test-cli-tiny", "avg2x2", 6, 24)
    assert len(meta["fingerprint"]) == 16 and meta["inertia"] > 0

    assert _build(dataset, "--size", "6", "--global", "--out", str(dataset / "cb6.safetensors")) == 0
    assert CALLS["forward"] == calls  # features came from the cache: no backbone call
    assert load_codebook(dataset / "cb6.safetensors").metadata["mode"] == "global"

    assert main(["codebook", "info", str(dataset / "cb4.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "4 x 4" in out and "mode: per-class" in out and "class_names: ['x', 'y']" in out


def test_cli_errors_are_one_line(dataset, capsys):
    assert _build(dataset, "--size", "25", "--out", str(dataset / "cb.safetensors")) == 2
    err = capsys.readouterr().err.strip()
    assert "exceeds the 24 feature vectors" in err and "\n" not in err
    assert main(["codebook", "info", str(dataset / "missing.safetensors")]) == 2
    assert "codebook file not found" in capsys.readouterr().err
    assert main(["codebook", "build", str(dataset / "nowhere"), "--size", "2", "--out", "x"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
