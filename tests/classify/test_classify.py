"""Classification on token maps: the model, save/load, and a tiny set it must learn end to end."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqgan_lc.classify import TokenClassifier, TokenClassifierConfig, classify, tokenizer_codes
from vqgan_lc.cli import main
from vqgan_lc.pretrained import load_pretrained
from vqgan_lc.tokenizer.model import VQModel

TINY = dict(codebook_size=32, grid=(4, 4), num_classes=3, code_dim=4, width=16, depth=1, heads=2)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    tiny_tokenizer(path, ch_mult=(1, 2, 2, 2))
    return path


@pytest.fixture(scope="module")
def two_class_folders(tmp_path_factory):
    """Noise images bright on the left or on the right: even a random tokenizer maps the two
    halves to different entries, so the side is readable from where the entries sit."""
    root = tmp_path_factory.mktemp("sets")
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("val", 6)):
        for name in ("left", "right"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 30, (32, 32, 3), dtype=np.uint8)
                half = slice(0, 16) if name == "left" else slice(16, 32)
                pixels[:, half] += 200
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("embed", ["codebook", "index"])
def test_logits_shape_save_load_and_bad_maps(embed, tmp_path):
    torch.manual_seed(0)
    config = TokenClassifierConfig(embed=embed, **TINY)
    model = TokenClassifier(config, torch.randn(32, 4) if embed == "codebook" else None).eval()
    tokens = torch.randint(0, 32, (5, 4, 4))
    logits = model(tokens)
    assert logits.shape == (5, 3)
    assert torch.equal(model(tokens.flatten(1)), logits)  # flat raster maps read the same
    model.save_pretrained(tmp_path / "clf")
    same = load_pretrained(tmp_path / "clf")  # found through pretrained.MODEL_TYPES
    assert isinstance(same, TokenClassifier)
    assert torch.equal(same(tokens), logits)
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        model(torch.full((1, 4, 4), 32))
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(1, 3, 3, dtype=torch.long))


def test_codebook_embedding_reads_the_entries_and_parameters_do_not_grow_with_n():
    small = TokenClassifier(TokenClassifierConfig(**{**TINY, "codebook_size": 32}), torch.randn(32, 4))
    large = TokenClassifier(TokenClassifierConfig(**{**TINY, "codebook_size": 4096}), torch.randn(4096, 4))
    assert small.num_parameters(trainable_only=True) == large.num_parameters(trainable_only=True)
    index = TokenClassifier(TokenClassifierConfig(**{**TINY, "codebook_size": 4096, "embed": "index"}))
    assert index.num_parameters(trainable_only=True) > large.num_parameters(trainable_only=True) + 4000 * 16
    # two ids with the same entry embed alike; the embedding depends on the entry, not the id
    codes = torch.randn(32, 4)
    codes[7] = codes[3]
    model = TokenClassifier(TokenClassifierConfig(**TINY), codes)
    assert torch.equal(model.embed(torch.tensor([[3]])), model.embed(torch.tensor([[7]])))
    with pytest.raises(ValueError, match="does not fit"):
        model.set_codes(torch.randn(31, 4))


def test_codes_are_the_entries_the_decoder_sees(tokenizer):
    model = VQModel.from_pretrained(tokenizer)
    codes = tokenizer_codes(tokenizer)
    indices = torch.tensor([[[0, 5], [31, 2]]])
    latents = model.quantizer.indices_to_latents(indices)
    assert torch.equal(latents[0, :, 1, 0], codes[31])


def test_learns_a_separable_tiny_set_and_a_finished_run_is_reused(tokenizer, two_class_folders, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "clf"
    overrides = ["model.width=16", "model.depth=1", "model.heads=2", "epochs=30", "batch_size=8", "lr=3e-3",
                 "warmup_epochs=0"]
    report = classify(tokenizer, str(two_class_folders / "train"), str(two_class_folders / "val"), out,
                      overrides=overrides, progress=False)
    assert report["num_val"] == 12 and report["num_train"] == 48 and report["num_classes"] == 2
    assert report["top1"] == 1.0, report
    assert report["embed"] == "codebook"
    saved = json.loads((out / "report.json").read_text())
    assert saved["top1"] == report["top1"]
    assert isinstance(load_pretrained(out / "run" / "classifier"), TokenClassifier)
    weights = out / "run" / "classifier" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = classify(tokenizer, str(two_class_folders / "train"), str(two_class_folders / "val"), out,
                     overrides=overrides, progress=False)
    assert again["top1"] == report["top1"] and weights.stat().st_mtime_ns == stamp  # not retrained
    with pytest.raises(ValueError, match="epochs"):
        classify(tokenizer, str(two_class_folders / "train"), str(two_class_folders / "val"), out,
                 overrides=[*overrides, "epochs=3"], progress=False)


def test_cli_classify_with_index_embedding(tokenizer, two_class_folders, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["classify", str(tokenizer), "--train", str(two_class_folders / "train"), "--val",
                 str(two_class_folders / "val"), "--out", str(out), "--embed", "index", "--set", "model.width=16",
                 "model.depth=1", "model.heads=2", "epochs=2", "batch_size=8"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["embed"] == "index" and 0.0 <= report["top1"] <= 1.0
    assert report["class_names"] == ["left", "right"] and set(report["per_class_top1"]) == {"left", "right"}
    assert "top-1" in capsys.readouterr().out
    # the folder is understood by the other commands: plot finds its run, info says what it is
    assert main(["plot", str(out)]) == 0 and (out / "run" / "metrics.png").is_file()
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"].startswith("classification") and info["classes"] == "2: 0=left, 1=right"
    # unlabelled images cannot be classified: one line, exit status 2
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(flat / f"{i}.png")
    assert main(["classify", str(tokenizer), "--train", str(flat), "--val", str(flat), "--out",
                 str(tmp_path / "bad")]) == 2
    assert "label" in capsys.readouterr().err


class _AlwaysRight(torch.nn.Module):
    """A classifier that answers class 1 ("right") for every token map."""

    def forward(self, tokens):
        return torch.tensor([[0.0, 1.0]]).expand(len(tokens), 2)


def test_held_out_classes_are_matched_by_name_not_position(tokenizer, two_class_folders, tmp_path):
    import shutil

    from vqgan_lc.classify.training import evaluate_classifier
    from vqgan_lc.generate.cache import CacheConfig, build_cache

    subset = tmp_path / "val-right-only"  # the held-out set has one of the two classes: its position 0
    shutil.copytree(two_class_folders / "val" / "right", subset / "right")
    build_cache(CacheConfig(tokenizer=str(tokenizer), data=str(subset), out=str(tmp_path / "cache"), workers=0,
                            progress=False))
    scores = evaluate_classifier(_AlwaysRight(), str(tmp_path / "cache"), class_names=["left", "right"])
    assert scores["top1"] == 1.0 and scores["per_class_top1"] == {"right": 1.0}
    with pytest.raises(ValueError, match="does not have"):  # a name the classifier never saw
        evaluate_classifier(_AlwaysRight(), str(tmp_path / "cache"), class_names=["left", "up"])


def test_one_class_or_an_unknown_class_name_is_refused_before_any_encoding(tokenizer, two_class_folders, tmp_path):
    import shutil

    one = tmp_path / "one"
    shutil.copytree(two_class_folders / "train" / "left", one / "left")
    with pytest.raises(ValueError, match="at least 2 classes"):
        classify(tokenizer, str(one), str(one), tmp_path / "out1", progress=False)
    renamed = tmp_path / "renamed"
    shutil.copytree(two_class_folders / "val" / "left", renamed / "left")
    shutil.copytree(two_class_folders / "val" / "right", renamed / "Right")
    with pytest.raises(ValueError, match=r"class\(es\) Right that .* does not have .*matched by name"):
        classify(tokenizer, str(two_class_folders / "train"), str(renamed), tmp_path / "out2", progress=False)
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()  # nothing was encoded
