import pytest
import torch

from vqgan_lc.generate.dit import DIT_PRESETS, DiT, DiTConfig, dit_config, sincos_positions_2d
from vqgan_lc.pretrained import load_pretrained


def tiny(**overrides) -> DiTConfig:
    fields = dict(in_channels=4, input_size=8, num_classes=10, depth=2, hidden_size=32, num_heads=4)
    fields.update(overrides)
    return DiTConfig(**fields)


def randomise_zero_layers(model: DiT, seed: int = 0) -> DiT:
    """Give the zero-initialised adaLN and output layers random weights, so outputs depend on inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def inputs(config: DiTConfig, batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, config.input_size, config.input_size, generator=g)
    t = torch.rand(batch, generator=g) * 999
    y = torch.randint(0, config.num_classes, (batch,), generator=g)
    return x, t, y


def test_every_block_is_the_identity_and_the_model_outputs_zeros_at_init():
    torch.manual_seed(0)
    config = tiny()
    model = DiT(config).eval()
    x, t, y = inputs(config)
    tokens = torch.randn(3, 16, 32)
    cond = torch.randn(3, 32)
    for block in model.blocks:
        assert torch.equal(block(tokens, cond), tokens)
    out = model(x, t, y)
    assert out.shape == (3, 8, 8, 8)
    assert torch.count_nonzero(out) == 0


def test_output_channels_follow_learn_sigma():
    config = tiny(learn_sigma=False)
    model = randomise_zero_layers(DiT(config)).eval()
    x, t, y = inputs(config)
    assert model(x, t, y).shape == x.shape


def test_unpatchify_inverts_patching():
    # A patch embedding that copies pixels, read back by unpatchify, must give the input back.
    config = tiny(in_channels=2, hidden_size=8, num_heads=2, patch_size=2, learn_sigma=False)
    model = DiT(config)
    x = torch.randn(2, 2, 8, 8)
    patches = torch.nn.functional.unfold(x, kernel_size=2, stride=2)          # (B, C*p*p, N), c-major
    patches = patches.view(2, 2, 4, 16).permute(0, 3, 2, 1).reshape(2, 16, 8)  # (B, N, p*p*C), c-minor
    assert torch.equal(model.unpatchify(patches), x)


def test_cfg_at_scale_one_equals_the_conditional_output():
    config = tiny()
    model = randomise_zero_layers(DiT(config)).eval()
    x, t, y = inputs(config)
    with torch.no_grad():
        assert torch.equal(model.forward_with_cfg(x, t, y, 1.0), model(x, t, y))


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_guidance_moves_every_noise_channel_by_the_formula(learn_sigma):
    config = tiny(learn_sigma=learn_sigma)
    model = randomise_zero_layers(DiT(config)).eval()
    x, t, y = inputs(config)
    scale = 4.0
    with torch.no_grad():
        cond = model(x, t, y)
        uncond = model(x, t, torch.full_like(y, config.num_classes))
        out = model.forward_with_cfg(x, t, y, scale)
    c = config.in_channels
    assert (cond[:, :c] - uncond[:, :c]).abs().flatten(2).amin(-1).gt(0).all()  # they differ on every channel
    torch.testing.assert_close(out[:, :c], uncond[:, :c] + scale * (cond[:, :c] - uncond[:, :c]))
    moved = (out[:, :c] - cond[:, :c]).abs().amax(dim=(0, 2, 3))
    assert (moved > 1e-4).all(), moved  # no channel is left unguided
    if learn_sigma:
        torch.testing.assert_close(out[:, c:], cond[:, c:])  # the variance half comes from the conditional pass


def test_label_dropout_rate_in_training_none_in_eval():
    torch.manual_seed(0)
    model = DiT(tiny(class_dropout=0.3))
    labels = torch.randint(0, 10, (20_000,))
    dropped = model.y_embedder.drop(labels, train=True)
    rate = (dropped == 10).float().mean().item()
    assert abs(rate - 0.3) < 0.02, rate
    assert torch.equal(dropped[dropped != 10], labels[dropped != 10])
    assert torch.equal(model.y_embedder.drop(labels, train=False), labels)
    force = torch.arange(20_000) % 2 == 0
    forced = model.y_embedder.drop(labels, train=False, force_drop=force)
    assert (forced[force] == 10).all() and torch.equal(forced[~force], labels[~force])


def test_train_mode_forward_drops_labels_eval_mode_does_not():
    config = tiny(class_dropout=0.5)
    model = randomise_zero_layers(DiT(config))
    x, t, y = inputs(config, batch=16)
    with torch.no_grad():
        model.eval()
        first, second = model(x, t, y), model(x, t, y)
        assert torch.equal(first, second)
        model.train()
        torch.manual_seed(1)
        noisy = model(x, t, y)
    assert not torch.equal(noisy, first)


def test_timestep_embedding_takes_fractional_steps():
    model = DiT(tiny())
    t = torch.tensor([0.0, 0.25, 0.5, 999.0])
    features = model.t_embedder.sinusoidal(t)
    assert features.shape == (4, 256) and torch.isfinite(features).all()
    assert not torch.allclose(features[1], features[2])


def test_sincos_positions_are_distinct_and_bounded():
    pos = sincos_positions_2d(32, 4)
    assert pos.shape == (16, 32) and pos.abs().max() <= 1
    assert torch.cdist(pos, pos).add(torch.eye(16)).min() > 0.1  # every position differs from every other


def test_save_load_round_trip(tmp_path):
    config = tiny()
    model = randomise_zero_layers(DiT(config)).eval()
    model.save_pretrained(tmp_path / "dit")
    for loaded in (DiT.from_pretrained(tmp_path / "dit"), load_pretrained(tmp_path / "dit")):
        assert isinstance(loaded, DiT) and loaded.config == config and not loaded.training
        state, restored = model.state_dict(), loaded.state_dict()
        assert state.keys() == restored.keys()
        assert all(torch.equal(state[k], restored[k]) for k in state)
        x, t, y = inputs(config)
        with torch.no_grad():
            assert torch.equal(loaded(x, t, y), model(x, t, y))


def test_presets_and_paper_size():
    config = dit_config("dit-XL", in_channels=4, input_size=32, num_classes=1000)
    assert (config.depth, config.hidden_size, config.num_heads, config.patch_size) == (28, 1152, 16, 2)
    with torch.device("meta"):
        model = DiT(config)
    # DiT-XL/2 of the DiT paper (4-channel 32x32 latents): 675M parameters with its 295K positions.
    count = model.num_parameters() + model.pos_embed.numel()
    assert 675.0e6 < count < 675.3e6, count
    sit = dit_config("dit-S", in_channels=8, input_size=16, num_classes=1000, learn_sigma=False)
    assert sit.out_channels == 8 and sit.hidden_size == 384
    assert set(DIT_PRESETS) == {"dit-tiny", "dit-S", "dit-B", "dit-L", "dit-XL"}


@pytest.mark.parametrize("make, message", [
    (lambda: dit_config("dit-XXL", in_channels=8, input_size=16, num_classes=10), "unknown DiT preset"),
    (lambda: dit_config("dit-S", in_channels=8, input_size=16, num_classes=10, widht=3), "unknown field"),
    (lambda: tiny(input_size=7).validate(), "not a multiple of patch_size"),
    (lambda: tiny(hidden_size=30, num_heads=4).validate(), "not divisible by num_heads"),
    (lambda: tiny(hidden_size=18, num_heads=3).validate(), "multiple of 4"),
    (lambda: tiny(class_dropout=1.0).validate(), "class_dropout"),
    (lambda: tiny(depth=0).validate(), "depth must be at least 1"),
    (lambda: DiT(tiny(num_heads=0)), "num_heads must be at least 1"),
])
def test_config_errors_are_one_line(make, message):
    with pytest.raises(ValueError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_wrong_latent_shape_is_a_one_line_error():
    model = DiT(tiny())
    with pytest.raises(ValueError, match=r"\(B, 4, 8, 8\)"):
        model(torch.zeros(1, 8, 8, 8), torch.zeros(1), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="t and y"):
        model(torch.zeros(2, 4, 8, 8), torch.zeros(1), torch.zeros(2, dtype=torch.long))
