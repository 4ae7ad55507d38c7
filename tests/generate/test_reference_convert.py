"""`vqgan-lc convert reference-*`: what a user holding the wrong, damaged or incomplete file sees."""
import argparse

import pytest
import torch

from reference_layouts import dit_state, mingpt_state, reference_tokenizer_state, tokenizer_config
from vqgan_lc.cli import main
from vqgan_lc.generate.reference import convert_reference


def _gpt_file(tmp_path, drop=None, codebook_size=40):
    state = {"transformer." + k: v for k, v in mingpt_state(45, 17, 2, 32).items()}
    state.update({"vqgan." + k: v
                  for k, v in reference_tokenizer_state(tokenizer_config(codebook_size=codebook_size)).items()})
    if drop:
        del state[drop]
    path = tmp_path / "gpt.pth"
    torch.save(state, path)
    return path


def _dit_file(tmp_path, model="DiT-XL/2", drop=None):
    ema = dit_state(8, 4, 2, 32, 2, 5, 16)
    if drop:
        del ema[drop]
    path = tmp_path / "dit.pth"
    torch.save({"ema": ema, "args": argparse.Namespace(model=model)}, path)
    return path


def _error(call) -> str:
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_wrong_family_names_the_right_command(tmp_path):
    gpt = _gpt_file(tmp_path)
    message = _error(lambda: convert_reference("dit", gpt, tmp_path / "a", num_heads=4))
    assert "GPT-LC" in message and "reference-gpt" in message
    sit = _dit_file(tmp_path, model="SiT-XL/2")
    message = _error(lambda: convert_reference("dit", sit, tmp_path / "b", num_heads=4))
    assert "SiT-LC" in message and "reference-sit" in message
    message = _error(lambda: convert_reference("ldm", _dit_file(tmp_path), tmp_path / "c"))
    assert "DiT-LC" in message and "reference-dit" in message
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # without saved arguments DiT-LC and SiT-LC weights look alike: either command is accepted
    bare = tmp_path / "bare.pth"
    torch.save(dit_state(8, 4, 2, 32, 1, 5, 16), bare)
    assert convert_reference("sit", bare, tmp_path / "d", num_heads=4)["family"] == "sit"
    assert "reference-dit or reference-sit" in _error(lambda: convert_reference("gpt", bare, tmp_path / "e"))


def test_truncated_file_is_one_line(tmp_path):
    path = _dit_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in _error(lambda: convert_reference("dit", path, tmp_path / "out", num_heads=4))


def test_missing_keys_are_named(tmp_path):
    message = _error(lambda: convert_reference("gpt", _gpt_file(tmp_path, drop="transformer.blocks.1.attn.key.weight"),
                                               tmp_path / "a", num_heads=4))
    assert "blocks.1.attn.key.weight" in message
    message = _error(lambda: convert_reference("dit", _dit_file(tmp_path, drop="blocks.1.mlp.fc2.bias"),
                                               tmp_path / "b", num_heads=4))
    assert "blocks.1.mlp.2.bias" in message or "blocks.1.mlp.fc2.bias" in message


def test_vocabulary_that_matches_no_class_count(tmp_path):
    message = _error(lambda: convert_reference("gpt", _gpt_file(tmp_path, codebook_size=45), tmp_path / "out",
                                               num_heads=4))
    assert "45" in message and "class count" in message


def test_existing_output_is_never_overwritten(tmp_path):
    path = _dit_file(tmp_path)
    convert_reference("dit", path, tmp_path / "out", num_heads=4)
    before = (tmp_path / "out/process.json").read_bytes()
    assert "already exists" in _error(lambda: convert_reference("dit", path, tmp_path / "out", num_heads=4))
    assert (tmp_path / "out/process.json").read_bytes() == before


def test_command_line(tmp_path, capsys):
    path = _dit_file(tmp_path)
    tokenizer = tmp_path / "vqgan-lc.pth"
    torch.save({"model": reference_tokenizer_state(tokenizer_config(resolution=16, ch_mult=(1, 2), dim=8)),
                "args": argparse.Namespace(embed_dim=8)}, tokenizer)
    assert main(["convert", "reference-dit", str(path), "--out", str(tmp_path / "out"), "--num-heads", "4",
                 "--tokenizer", str(tokenizer)]) == 0
    printed = capsys.readouterr().out
    assert "ddpm 250 steps" in printed and "tokenizer/" in printed
    assert (tmp_path / "out/tokenizer/model.safetensors").is_file()
    assert main(["convert", "reference-gpt", str(path), "--out", str(tmp_path / "gpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "reference-dit" in err
