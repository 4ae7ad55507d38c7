import os

import numpy as np
import pytest
import torch

from vqgan_lc.codebook import Codebook, describe_codebook, load_codebook, save_codebook


def test_round_trip_keeps_vectors_and_typed_metadata(tmp_path):
    vectors = torch.randn(12, 5)
    meta = {"backbone": "efficientnet-lite0", "k": 12, "inertia": 3.25, "seed": 0,
            "entries_per_class": [6, 6], "class_names": ["cat", "dog"]}
    path = tmp_path / "sub" / "cb.safetensors"
    save_codebook(path, vectors, meta)
    codebook = load_codebook(path)
    assert isinstance(codebook, Codebook)
    assert torch.equal(codebook.vectors, vectors) and codebook.vectors.dtype == torch.float32
    for key, value in meta.items():
        assert codebook.metadata[key] == value
    assert codebook.metadata["size"] == 12 and codebook.metadata["dim"] == 5
    assert os.listdir(tmp_path / "sub") == ["cb.safetensors"]  # no temporary file left behind


def test_numpy_and_fp16_inputs_are_stored_as_float32(tmp_path):
    save_codebook(tmp_path / "a.safetensors", np.ones((3, 2), np.float16), {})
    assert load_codebook(tmp_path / "a.safetensors").vectors.dtype == torch.float32


def test_bad_inputs_and_files_give_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"expected a non-empty \(N, C\) matrix"):
        save_codebook(tmp_path / "x.safetensors", torch.zeros(4), {})
    with pytest.raises(ValueError, match="NaN or infinite"):
        save_codebook(tmp_path / "x.safetensors", torch.full((2, 2), float("nan")), {})
    with pytest.raises(FileNotFoundError, match="codebook file not found"):
        load_codebook(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"this is not safetensors")
    with pytest.raises(ValueError, match="is not a codebook file") as err:
        load_codebook(tmp_path / "junk.safetensors")
    assert "\n" not in str(err.value)
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no 'codebook' tensor"):
        load_codebook(tmp_path / "other.safetensors")


def test_description_lists_metadata_and_abbreviates_long_lists():
    text = describe_codebook(Codebook(torch.ones(4, 3), {"mode": "global", "classes": list(range(20))}), "cb.st")
    assert "4 x 3" in text and "mode: global" in text and "(20 items)" in text
