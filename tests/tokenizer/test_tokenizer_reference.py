import argparse
import pickle

import pytest
import torch
from torch import nn

from vqgan_lc.tokenizer import load_reference_checkpoint, read_reference_checkpoint
from vqgan_lc.tokenizer.model import VQModel
from vqgan_lc.tokenizer.reference import model_from_reference_state
from test_tokenizer_model import tiny_config

CALLS = []


def _record_call():
    """What unpickling `Smuggled` would run: the loader must never call it."""
    CALLS.append("called")
    return "ran"


class Smuggled:
    def __reduce__(self):
        return (_record_call, ())


class Plain:
    """An ordinary class: not argparse.Namespace, so still not allowed."""


def _training_args(**changes):
    args = dict(embed_dim=4, n_vision_words=64, use_cblinear=1, tuning_codebook=0, quantizer_type="org",
                lr=1e-4, epochs=100, vq_config_path="vqgan_configs/vq-f16.yaml",
                local_embedding_path="codebook-100K.pth", disc_start=50000)
    return argparse.Namespace(**{**args, **changes})


def _reference_training_checkpoint(config, key="model", prefix=""):
    """What the reference training script saves: model (reference key names, training-only
    parts included), optimizer, AMP scaler, epoch and the argparse Namespace of its arguments."""
    generator = torch.Generator().manual_seed(0)
    model = {}
    for name, value in VQModel(config).state_dict().items():
        name = name.replace("quantizer.codebook", "tok_embeddings.weight")
        name = name.replace("quantizer.projector.", "codebook_projection.")
        model[prefix + name] = (torch.randn(value.shape, generator=generator) if value.is_floating_point()
                                else value.clone())
    model[prefix + "discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    model[prefix + "discriminator.main.0.bias"] = torch.randn(8)
    model[prefix + "perceptual_loss.net.slice1.0.weight"] = torch.randn(8, 3, 3, 3)
    model[prefix + "lpips.lin0.model.1.weight"] = torch.randn(1, 8, 1, 1)
    head = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-4, betas=(0.5, 0.9))
    head(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return {key: model, "optimizer": optimizer.state_dict(), "epoch": 19,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 7},
            "args": _training_args()}


@pytest.mark.parametrize("key, prefix", [("model", ""), ("state_dict", "module.")])
def test_reference_training_checkpoint_loads_with_its_args(tmp_path, key, prefix):
    config = tiny_config()
    checkpoint = _reference_training_checkpoint(config, key, prefix)
    torch.save(checkpoint, tmp_path / "checkpoint-19.pth")
    model = load_reference_checkpoint(tmp_path / "checkpoint-19.pth", config)
    ref = {name.removeprefix(prefix): value for name, value in checkpoint[key].items()}
    loaded = model.state_dict()
    assert torch.equal(loaded["quantizer.codebook"], ref["tok_embeddings.weight"])
    assert torch.equal(loaded["quantizer.projector.weight"], ref["codebook_projection.weight"])
    assert torch.equal(loaded["quantizer.projector.bias"], ref["codebook_projection.bias"])
    for name, value in loaded.items():
        ref_name = {"quantizer.codebook": "tok_embeddings.weight"}.get(
            name, name.replace("quantizer.projector.", "codebook_projection."))
        assert torch.equal(value, ref[ref_name]), name
    assert not model.training

    read = read_reference_checkpoint(tmp_path / "checkpoint-19.pth")
    assert read.args == vars(_training_args()) and read.args["embed_dim"] == 4
    assert set(read.state) == set(loaded)  # discriminator / LPIPS / optimizer parts dropped
    # the Namespace was allowed for that one load only, not for every torch.load afterwards
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "checkpoint-19.pth", weights_only=True)


@pytest.mark.parametrize("extra, name", [(Smuggled(), "_record_call"), (Plain(), "Plain")])
def test_reference_checkpoint_with_another_object_is_refused(tmp_path, extra, name):
    checkpoint = _reference_training_checkpoint(tiny_config())
    checkpoint["extra"] = extra
    torch.save(checkpoint, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=f"refused to unpickle .*{name}") as err:
        load_reference_checkpoint(tmp_path / "evil.pth", tiny_config())
    assert "\n" not in str(err.value) and "argparse.Namespace" in str(err.value)
    assert CALLS == []  # nothing from the file ran


def test_reference_shape_errors_name_the_training_args(tmp_path):
    trained = tiny_config(codebook_dim=8)
    checkpoint = _reference_training_checkpoint(trained)
    checkpoint["args"] = _training_args(embed_dim=4, n_vision_words=64)
    torch.save(checkpoint, tmp_path / "ref.pth")
    with pytest.raises(ValueError, match="codebook is 64 x 8, config expects 64 x 12") as err:
        load_reference_checkpoint(tmp_path / "ref.pth", tiny_config())
    assert "n_vision_words=64, embed_dim=4" in str(err.value) and "\n" not in str(err.value)
    read = read_reference_checkpoint(tmp_path / "ref.pth")
    del read.state["quantizer.projector.bias"]
    with pytest.raises(ValueError, match=r"does not match the config: missing \['quantizer.projector.bias'\]"):
        model_from_reference_state(read.state, trained, "ref.pth", read.args)
    read.state["quantizer.projector.bias"] = torch.full((4,), float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        model_from_reference_state(read.state, trained, "ref.pth", read.args)


def test_reference_files_that_are_not_checkpoints(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="holds a Tensor, not a checkpoint dict"):
        read_reference_checkpoint(tmp_path / "tensor.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x80\x02not a checkpoint at all")
    with pytest.raises(ValueError, match="not a loadable torch checkpoint") as err:
        read_reference_checkpoint(tmp_path / "junk.pth")
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_reference_checkpoint(tmp_path / "missing.pth")
