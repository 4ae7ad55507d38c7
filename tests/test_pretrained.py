"""Hub loading, push_to_hub and model cards of `PretrainedModel` (no test touches the network:
the hub calls are replaced, or run with HF_HUB_OFFLINE=1 in a subprocess)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqgan_lc import model_card
from vqgan_lc.codebook.io import save_codebook
from vqgan_lc.pretrained import CARD_NAME, PROVENANCE_KEY, load_pretrained
from vqgan_lc.tokenizer import VQModel, get_preset
from vqgan_lc.tokenizer.checkpoint import export_for_inference

CODEBOOK_META = {"backbone": "efficientnet-lite0", "layer": "stride16", "input_size": 256, "pooling": "avg4x4",
                 "mode": "global", "k": 48, "seed": 7, "num_images": 30, "num_vectors": 480,
                 "fingerprint": "0123456789abcdef", "class_names": [f"class{i}" for i in range(40)]}


def _tiny_config():
    config = get_preset("vqgan-lc-tiny")
    config.quantizer.codebook_dim = 16
    return config


@pytest.fixture(scope="module")
def codebook_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("codebook") / "codebook.safetensors"
    save_codebook(path, torch.randn(48, 16, generator=torch.Generator().manual_seed(0)), CODEBOOK_META)
    return path


@pytest.fixture(scope="module")
def model(codebook_file):
    torch.manual_seed(0)
    return VQModel(_tiny_config(), codebook_file).eval()


def _front_matter(text: str) -> list[str]:
    lines = text.splitlines()
    assert lines[0] == "---"
    return lines[1:lines.index("---", 1)]


# --- model cards -----------------------------------------------------------------------------

def test_card_of_a_tokenizer_built_from_a_codebook_file(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "tok")
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    card = (folder / CARD_NAME).read_text()
    front = _front_matter(card)
    assert "library_name: vqgan-lc" in front and 'license: "mit"' in front
    for tag in ("vqgan-lc", "image-tokenizer", "arxiv:2406.11837"):
        assert f"- {json.dumps(tag)}" in front, tag
    assert "https://arxiv.org/abs/2406.11837" in card
    assert f"| parameters | {model.num_parameters():,} |" in card
    assert f"| trainable parameters | {model.num_parameters(trainable_only=True):,} |" in card
    assert "| codebook entries (N) | 48 |" in card and "| frozen entry width (C) | 16 |" in card
    # the codebook's origin comes from the file's metadata, scalars only (not 40 class names)
    for row in ("| backbone | efficientnet-lite0 |", "| layer | stride16 |", "| pooling | avg4x4 |",
                "| k-means mode | global |", "| seed | 7 |", "| dataset fingerprint | 0123456789abcdef |"):
        assert row in card, row
    assert "class7" not in card
    saved = json.loads((folder / "config.json").read_text())
    assert saved[PROVENANCE_KEY]["codebook"]["fingerprint"] == "0123456789abcdef"
    assert "## Training recipe" not in card and "## Evaluation" not in card


def test_provenance_survives_reloading_and_export(model, tmp_path):
    reloaded = load_pretrained(model.save_pretrained(tmp_path / "a"))
    assert reloaded.provenance["codebook"]["seed"] == 7
    assert torch.equal(reloaded.quantizer.codebook, model.quantizer.codebook)
    card = (reloaded.save_pretrained(tmp_path / "b") / CARD_NAME).read_text()
    assert "| dataset fingerprint | 0123456789abcdef |" in card
    exported = export_for_inference(model)
    assert "| backbone | efficientnet-lite0 |" in (exported.save_pretrained(tmp_path / "c") / CARD_NAME).read_text()


def test_a_tokenizer_without_a_codebook_file_says_so(tmp_path):
    config = get_preset("vqgan-tiny")
    config.quantizer.codebook_size = 32
    card = (VQModel(config).save_pretrained(tmp_path / "vq") / CARD_NAME).read_text()
    assert "| quantizer | vq |" in card and "Not recorded" in card


def test_card_shows_the_run_recipe_only_for_its_own_model(model, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recipe = {"data": "imagenet/train", "batch_size": 32, "grad_accum": 1, "recipe_gpus": 8, "lr": 5e-4,
              "out_dir": str(run), "loss": {"perceptual": "lpips-vgg", "disc_start": 50000},
              "model": json.loads(json.dumps(model.config.to_dict()))}
    (run / "train_config.json").write_text(json.dumps(recipe))
    card = (model.save_pretrained(run / "tokenizer") / CARD_NAME).read_text()
    assert "## Training recipe" in card and "Global batch 256 (8 processes x batch 32" in card
    assert "| lr | 0.0005 |" in card and "| loss.perceptual | lpips-vgg |" in card
    assert "| out_dir |" not in card  # where a run wrote is not part of its recipe
    recipe["model"]["quantizer"]["dim"] = 4  # another model's run
    (run / "train_config.json").write_text(json.dumps(recipe))
    assert "## Training recipe" not in (model.save_pretrained(run / "tokenizer") / CARD_NAME).read_text()


def test_card_shows_an_evaluation_report_with_its_protocol(model, tmp_path):
    report = {"psnr": 23.456789, "utilization": 0.99, "perceptual_name": "perceptual-lite0", "num_images": 50,
              "protocol": {"psnr": "mean over images of per-image PSNR on 8-bit reconstructions",
                           "notes": ["50 images is a small set", "FD-lite0 is not FID"]}}
    card = (model.save_pretrained(tmp_path / "given", report=report) / CARD_NAME).read_text()
    assert "## Evaluation" in card and "| psnr | 23.4568 |" in card and "| num_images | 50 |" in card
    assert "- **psnr**: mean over images of per-image PSNR" in card
    assert "- **notes**:\n  - 50 images is a small set\n  - FD-lite0 is not FID\n" in card
    # a report.json beside the folder is found; one without a protocol is not a vqgan-lc report
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert "## Evaluation" in (model.save_pretrained(tmp_path / "found") / CARD_NAME).read_text()
    (tmp_path / "report.json").write_text(json.dumps({"psnr": 1.0}))
    assert "## Evaluation" not in (model.save_pretrained(tmp_path / "found") / CARD_NAME).read_text()
    (tmp_path / "eval").mkdir()  # `vqgan-lc eval RUN/tokenizer --out RUN/eval`, as the README shows
    (tmp_path / "eval" / "report.json").write_text(json.dumps(report))
    assert "| psnr | 23.4568 |" in (model.save_pretrained(tmp_path / "tokenizer") / CARD_NAME).read_text()
    with pytest.raises(FileNotFoundError, match="report .*missing.json not found"):
        model.save_pretrained(tmp_path / "x", report=tmp_path / "missing.json")


def test_a_readme_written_by_someone_else_is_kept(model, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / CARD_NAME).write_text("# my own notes\n")
    model.save_pretrained(folder, license="apache-2.0")
    assert (folder / CARD_NAME).read_text() == "# my own notes\n"
    (folder / CARD_NAME).unlink()
    model.save_pretrained(folder, license="apache-2.0")
    assert 'license: "apache-2.0"' in (folder / CARD_NAME).read_text()


def test_generator_cards_name_their_family():
    text = model_card.render("vqgan-lc-dit", {"depth": 2, "hidden_size": 64}, parameters=1000, trainable=1000,
                             train_config={"generator": "sit-tiny", "model": {}, "lr": 1e-4, "batch_size": 4})
    front = _front_matter(text)
    assert '- "sit"' in front and '- "image-generation"' in front and '- "dit"' not in front
    assert "| depth | 2 |" in text and "## Codebook" not in text and "| lr | 0.0001 |" in text


# --- hub loading -----------------------------------------------------------------------------

@pytest.fixture
def fake_hub(model, tmp_path, monkeypatch):
    """`snapshot_download` answering from a local copy of a saved model; records its calls."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    snapshot = model.save_pretrained(tmp_path / "hub-snapshot")
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_a_hub_id_loads_through_snapshot_download(model, fake_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local folder named org/tokenizer
    loaded = VQModel.from_pretrained("org/tokenizer", revision="v1")
    assert fake_hub == [("org/tokenizer", {"revision": "v1", "allow_patterns": ["config.json", "model.safetensors",
                                                                                "README.md"]})]
    assert torch.equal(loaded.decoder.conv_out.weight, model.decoder.conv_out.weight)
    assert isinstance(load_pretrained("org/tokenizer"), VQModel) and fake_hub[-1][1]["revision"] is None


def test_a_local_folder_always_wins_over_the_hub(model, fake_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model.save_pretrained(Path("org") / "tokenizer")
    assert isinstance(load_pretrained("org/tokenizer"), VQModel)
    assert fake_hub == []
    with pytest.raises(FileNotFoundError, match="no pretrained model at"):  # a path, never a hub id
        load_pretrained(tmp_path / "missing" / "folder")
    assert fake_hub == []


@pytest.mark.parametrize("error,expected", [
    ("RepositoryNotFoundError", "is not a local folder nor a Hugging Face model repository"),
    ("RevisionNotFoundError", "has no revision 'v9'"),
    ("LocalEntryNotFoundError", "could not be reached"),
])
def test_hub_errors_are_one_line(tmp_path, monkeypatch, error, expected):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub import errors

    def snapshot_download(repo_id, **kwargs):
        # the HTTP errors want a live response object; the type is all the loader looks at
        err = getattr(errors, error).__new__(getattr(errors, error))
        Exception.__init__(err, "hub says no")
        raise err

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=expected) as err:
        load_pretrained("org/absent", revision="v9")
    assert "\n" not in str(err.value)


def test_offline_without_a_local_copy_is_one_line(tmp_path):
    pytest.importorskip("huggingface_hub")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    code = ("from vqgan_lc.pretrained import load_pretrained\n"
            "try:\n    load_pretrained('org/absent')\n"
            "except FileNotFoundError as err:\n    print(type(err).__name__, err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip()
    assert "\n" not in line and line.startswith("FileNotFoundError org/absent is not a local folder")
    assert "HF_HUB_OFFLINE=1 forbids fetching it" in line


def test_push_to_hub_uploads_a_saved_folder(model, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        calls["upload"] = (repo_id, sorted(os.listdir(folder)), (folder / CARD_NAME).read_text(), kwargs)
        calls["reloaded"] = load_pretrained(folder)  # what would be uploaded loads back
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    result = model.push_to_hub("me/vqgan-lc-tiny", private=True, token="t0ken", commit_message="first",
                               report={"psnr": 20.0, "protocol": "offline test"})
    assert result == "commit-info"
    assert calls["create"] == ("me/vqgan-lc-tiny", {"private": True, "exist_ok": True, "token": "t0ken"})
    repo, files, card, kwargs = calls["upload"]
    assert repo == "me/vqgan-lc-tiny" and files == ["README.md", "config.json", "model.safetensors"]
    assert kwargs["commit_message"] == "first" and kwargs["token"] == "t0ken"
    assert "\n# me/vqgan-lc-tiny\n" in card
    assert 'load_pretrained("me/vqgan-lc-tiny")' in card and "Protocol: offline test" in card
    assert torch.equal(calls["reloaded"].encoder.conv_in.weight, model.encoder.conv_in.weight)
    with pytest.raises(ValueError, match="org/name"):
        model.push_to_hub("not a repo id")


def test_a_training_run_writes_a_card_with_its_recipe(codebook_file, tmp_path):
    from vqgan_lc.tokenizer.losses import LossConfig
    from vqgan_lc.tokenizer.training import TokenizerTrainConfig, train_tokenizer

    tiny = ["autoencoder.resolution=32", "autoencoder.ch=8", "autoencoder.ch_mult=1,2,2",
            "autoencoder.num_res_blocks=1", "autoencoder.z_channels=8", "autoencoder.norm_groups=4"]
    config = TokenizerTrainConfig(model=get_preset("vqgan-lc-tiny").override(tiny), codebook=str(codebook_file),
                                  data="demo:train:8", batch_size=4, lr=1e-3, max_steps=2, out_dir=str(tmp_path / "run"),
                                  save_every=2, image_every=2, log_every=1, device="cpu",
                                  loss=LossConfig(perceptual="none", disc_start=10**9))
    train_tokenizer(config, progress=False)
    card = (tmp_path / "run" / "tokenizer" / CARD_NAME).read_text()
    # the recipe matches the run's model although the codebook file resized its quantizer
    assert "## Training recipe" in card and "| lr | 0.001 |" in card and "| max_steps | 2 |" in card
    assert f"| codebook | {codebook_file} |" in card and "| dataset fingerprint | 0123456789abcdef |" in card


def test_optimizer_groups_decay_matrices_only_and_honour_no_weight_decay():
    """nanoGPT's split: >= 2-d trainable parameters decay; norms, biases, 1-d parameters and the
    names in `no_weight_decay` (the classifier's position table) do not; frozen ones are left out."""
    from vqgan_lc.classify.model import TokenClassifier, TokenClassifierConfig

    model = TokenClassifier(TokenClassifierConfig(codebook_size=8, grid=(2, 2), num_classes=3, embed="index", width=8,
                                                  depth=1, heads=2))
    model.head.bias.requires_grad_(False)
    decay, free = model.optimizer_groups(0.05)
    assert (decay["weight_decay"], free["weight_decay"]) == (0.05, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, not_decayed = {names[id(p)] for p in decay["params"]}, {names[id(p)] for p in free["params"]}
    assert "token_embed.weight" in decayed and "head.weight" in decayed and "pos_embed" in not_decayed
    assert all(model.get_parameter(n).dim() >= 2 for n in decayed)
    assert any(n.endswith("norm1.weight") for n in not_decayed) and "head.bias" not in decayed | not_decayed
    assert decayed | not_decayed == {n for n, p in model.named_parameters() if p.requires_grad}
    optimizer = model.configure_optimizer(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["betas"] == (0.9, 0.95)
