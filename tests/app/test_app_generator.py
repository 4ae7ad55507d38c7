"""The app's one door to generators: token-id and latent generators both give images and the token
map those images decode from."""
import pytest
import torch

from vqgan_lc.app.generator import generator_info, sample_for_app
from vqgan_lc.tokenizer.model import VQModel


@pytest.fixture(scope="module")
def sit_run(tiny_world, tmp_path_factory):
    from vqgan_lc.generate.cache import CacheConfig, build_cache
    from vqgan_lc.generate.training import generator_config, train_generator

    root = tmp_path_factory.mktemp("sit")
    build_cache(CacheConfig(tokenizer=str(tiny_world["tokenizer"]), data=str(tiny_world["data"]),
                            out=str(root / "latents"), kind="latents", workers=0, progress=False))
    overrides = ["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "max_steps=1", "batch_size=4",
                 "save_every=1", "log_every=1"]
    train_generator(generator_config("sit-tiny", str(root / "latents"), str(root / "run"), overrides), progress=False)
    return root / "run"


@pytest.mark.parametrize("which", ["gpt", "sit"])
def test_samples_decode_from_the_token_map_returned(which, tiny_world, sit_run):
    run = tiny_world["generator"] if which == "gpt" else sit_run
    info = generator_info(str(run))
    assert info["family"] == which and info["num_classes"] == 2 and info["codebook_size"] == 8
    method, steps = (None, None) if which == "gpt" else ("euler", 2)
    images, ids = sample_for_app(str(run), 1, 2.0, method, steps, seed=5, count=2)
    assert images.shape == (2, 3, 32, 32) and ids.shape == (2, 8, 8)
    assert images.min() >= -1 and images.max() <= 1
    tokenizer = VQModel.from_pretrained(tiny_world["tokenizer"])
    with torch.no_grad():  # snapped latents decode exactly as their ids do: the map is what the image shows
        torch.testing.assert_close(tokenizer.decode_indices(ids).clamp(-1, 1), images, rtol=1e-4, atol=1e-4)
    again, same_ids = sample_for_app(str(run), 1, 2.0, method, steps, seed=5, count=2)
    assert torch.equal(ids, same_ids)
    with pytest.raises(ValueError, match="does not exist"):
        sample_for_app(str(run), 2, 2.0, method, steps, seed=5)
    if which == "sit":
        with pytest.raises(ValueError, match="sit samples with"):
            sample_for_app(str(run), 0, 1.0, "ddim", 2, seed=0)
