"""`vqgan-lc info`: what a run, model folder, cache or samples folder is, read from its files."""
import json
from pathlib import Path

import pytest

from vqgan_lc.cli import main
from vqgan_lc.cli.info import KINDS, describe, folder_kind


def _info(capsys, path) -> dict:
    assert main(["info", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_generator_run_says_family_step_classes_tokenizer_cache_and_ema(tiny_generator_run, capsys):
    root = tiny_generator_run
    rows = _info(capsys, root / "run")
    assert rows["kind"] == "generator run" and rows["family"] == "dit (dit-tiny)"
    assert rows["step"].startswith("2 (max_steps=2)")
    assert rows["classes"] == "2: 0=cat, 1=dog"
    assert rows["tokenizer"] == str((root / "tokenizer").resolve())
    assert rows["cache"] == str(root / "latents") and "16 entries" in rows["codebook"]
    # two steps leave ~2% of the initial weights in the EMA: the row says so
    assert rows["EMA"].startswith("decay 0.9999 over 2 steps") and rows["EMA"].endswith("train longer")
    assert "step 2" in rows["last checkpoint"] and "train-gen --resume" in rows["last checkpoint"]
    assert main(["info", str(root / "run")]) == 0  # the plain listing: one "label: value" line per row
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split(":", 1)[0] == "kind" and len(lines) == len(rows)


def test_model_cache_and_samples_folders(tiny_generator_run, capsys):
    root = tiny_generator_run
    model = _info(capsys, root / "run" / "generator")
    assert model["kind"] == "model folder (vqgan-lc-dit)" and model["num classes"] == 2
    assert "in run" in model and model["weights"].endswith("model.safetensors")
    tokenizer = _info(capsys, root / "tokenizer")
    assert tokenizer["quantizer"] == "lc" and tokenizer["codebook"].startswith("16 entries")
    cache = _info(capsys, root / "latents")
    assert cache["kind"] == "latents cache" and cache["classes"] == "2: 0=cat, 1=dog"
    assert cache["items"].startswith("4 stored") and cache["grid"].startswith("8x8")
    samples = _info(capsys, root / "samples")
    assert samples["kind"] == "samples folder" and samples["samples"].startswith("2 in the report, 2 PNGs")


def test_a_new_kind_of_folder_is_one_function(tmp_path):
    (tmp_path / "notebook.json").write_text("{}")
    assert pytest.raises(ValueError, describe, tmp_path)

    def notebook(folder: Path):
        return {"kind": "lab notebook"} if (folder / "notebook.json").is_file() else None

    folder_kind(notebook)
    try:
        assert describe(tmp_path) == {"path": str(tmp_path), "kind": "lab notebook"}
    finally:
        KINDS.remove(notebook)
