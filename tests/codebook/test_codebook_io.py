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
    save_codebook(tmp_path / "a.safetensors", np.arange(6, dtype=np.float16).reshape(3, 2), {})
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


# ---- degenerate codebooks ------------------------------------------------------------------

def _write_raw(path, tensor):
    """A codebook file written without save_codebook's checks (as another tool might)."""
    from safetensors.torch import save_file

    save_file({"codebook": tensor.contiguous()}, str(path))
    return path


@pytest.mark.parametrize("vectors, message", [
    (torch.zeros(8, 4), "all zeros"),
    (torch.full((8, 4), 0.5), "all 8 codebook entries are the same vector"),
    (torch.tensor([[0.0, 1.0], [float("inf"), 2.0], [3.0, float("nan")]]), r"NaN or infinite values \(2 of 3 entries\)"),
    (torch.zeros(0, 4), r"expected a non-empty \(N, C\) matrix, got shape \(0, 4\)"),
])
def test_degenerate_codebooks_are_refused_on_save_and_load(tmp_path, vectors, message):
    with pytest.raises(ValueError, match=message) as err:
        save_codebook(tmp_path / "cb.safetensors", vectors, {})
    assert "\n" not in str(err.value) and "vqgan-lc codebook build" in str(err.value)
    assert not (tmp_path / "cb.safetensors").exists()
    path = _write_raw(tmp_path / "raw.safetensors", vectors)
    with pytest.raises(ValueError, match=message) as err:
        load_codebook(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_codebook_info_refuses_a_nan_codebook_in_one_line(tmp_path, capsys):
    from vqgan_lc.cli import main

    vectors = torch.randn(6, 3)
    vectors[2, 1] = float("nan")
    path = _write_raw(tmp_path / "nan.safetensors", vectors)
    assert main(["codebook", "info", str(path)]) == 2
    captured = capsys.readouterr()
    assert "nan" not in captured.out.lower()
    err = captured.err.strip()
    assert "NaN or infinite values (1 of 6 entries)" in err and "\n" not in err


def test_an_lc_tokenizer_refuses_a_degenerate_codebook_file(tmp_path):
    from vqgan_lc.tokenizer import VQModel, get_preset

    path = _write_raw(tmp_path / "zeros.safetensors", torch.zeros(16, 6))
    with pytest.raises(ValueError, match="all zeros"):
        VQModel(get_preset("vqgan-lc-tiny"), str(path))


def test_one_entry_and_distinct_entries_pass_without_warning(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="vqgan_lc.codebook.io"):
        save_codebook(tmp_path / "one.safetensors", torch.tensor([[0.5, -1.0]]), {})
        assert load_codebook(tmp_path / "one.safetensors").codebook_size == 1
        # rows equal in their first columns but not everywhere are distinct entries
        vectors = torch.zeros(10, 6)
        vectors[:, 5] = torch.arange(10.0)
        vectors[3, 0] = -0.0  # -0.0 and 0.0 are the same value
        save_codebook(tmp_path / "ok.safetensors", vectors, {})
        load_codebook(tmp_path / "ok.safetensors")
    assert caplog.records == []


def test_heavy_duplication_warns_in_one_line(tmp_path, caplog):
    vectors = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    vectors[15:] = vectors[0]  # 5 of 20 entries repeat entry 0: 25%
    vectors[14] = vectors[1]  # and one copy of another entry
    with caplog.at_level("WARNING", logger="vqgan_lc.codebook.io"):
        save_codebook(tmp_path / "dup.safetensors", vectors, {})
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "6 of 20 codebook entries (30%) repeat an earlier entry" in message and "14 are usable" in message
    assert "\n" not in message
    caplog.clear()
    with caplog.at_level("WARNING", logger="vqgan_lc.codebook.io"):
        assert torch.equal(load_codebook(tmp_path / "dup.safetensors").vectors, vectors)
    assert len(caplog.records) == 1 and str(tmp_path / "dup.safetensors") in caplog.records[0].getMessage()
    caplog.clear()
    vectors[15:] = torch.randn(5, 8)
    vectors[14] = torch.randn(8)
    vectors[19] = vectors[18]  # 1 of 20 (5%): below the threshold
    with caplog.at_level("WARNING", logger="vqgan_lc.codebook.io"):
        save_codebook(tmp_path / "few.safetensors", vectors, {})
    assert caplog.records == []
