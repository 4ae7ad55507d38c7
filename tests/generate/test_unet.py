"""LDM UNet: shapes, zero init, label dropout and the null class, save/load, training, config errors."""
import pytest
import torch

from vqgan_lc.generate.unet import UNET_PRESETS, UNet, UNetConfig, unet_config
from vqgan_lc.pretrained import load_pretrained

CLASSES = 5


def _model(**overrides) -> UNet:
    torch.manual_seed(0)
    return UNet(unet_config("ldm-tiny", in_channels=4, input_size=8, num_classes=CLASSES, **overrides))


def _inputs(batch=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g).float()
    y = torch.randint(0, CLASSES, (batch,), generator=g)
    return x, t, y


def _perturb(model: UNet) -> UNet:
    # the zero-initialised convs make a fresh model blind to its inputs; give every weight a value
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _class_ids_seen(model: UNet):
    seen = []
    model.class_embed.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].clone()))
    return seen


def test_output_shape_and_zero_output_at_init():
    model = _model().eval()
    x, t, y = _inputs()
    out = model(x, t, y)
    assert out.shape == x.shape and torch.count_nonzero(out) == 0
    # any grid divisible by the downsample factor, and a different output width
    wide = _model(out_channels=8).eval()
    x16, t16, y16 = _inputs(batch=2, size=16)
    assert wide(x16, t16, y16).shape == (2, 8, 16, 16)
    assert _perturb(model)(x, t, y).abs().mean() > 0


def test_label_dropout_to_the_null_class_only_in_training():
    model = _model(class_dropout=0.5)
    seen = _class_ids_seen(model)
    x, t, y = _inputs(batch=200, size=2)
    model.train()
    model(x, t, y)
    dropped = seen[-1] == CLASSES
    assert 0.3 < dropped.float().mean() < 0.7
    assert torch.equal(seen[-1][~dropped], y[~dropped])
    model.eval()
    model(x, t, y)
    assert torch.equal(seen[-1], y)


def test_cfg_runs_the_null_class_in_the_same_forward_on_every_channel():
    model = _perturb(_model()).eval()
    seen = _class_ids_seen(model)
    x, t, y = _inputs()
    with torch.no_grad():
        guided = model.forward_with_cfg(x, t, y, cfg_scale=2.5)
        assert torch.equal(seen[-1], torch.cat([y, torch.full_like(y, CLASSES)]))
        cond = model(x, t, y)
        uncond = model(x, t, torch.full_like(y, CLASSES))
        assert torch.allclose(guided, uncond + 2.5 * (cond - uncond), atol=1e-5)
        assert (guided - cond).abs().amax(dim=(0, 2, 3)).min() > 0          # every channel guided
        assert torch.equal(model.forward_with_cfg(x, t, y, cfg_scale=1.0), cond)


def test_save_and_load_round_trip(tmp_path):
    model = _perturb(_model(out_channels=6)).eval()
    x, t, y = _inputs()
    model.save_pretrained(tmp_path / "unet")
    for loaded in (UNet.from_pretrained(tmp_path / "unet"), load_pretrained(tmp_path / "unet")):
        assert isinstance(loaded, UNet) and not loaded.training
        assert loaded.config == model.config
        state = loaded.state_dict()
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        with torch.no_grad():
            assert torch.equal(loaded(x, t, y), model(x, t, y))


def test_a_few_optimizer_steps_reduce_an_mse_loss():
    model = _model(class_dropout=0.0).train()
    x, t, y = _inputs(batch=4)
    target = torch.randn_like(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = torch.mean((model(x, t, y) - target) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_presets_build_and_serialise():
    for name in UNET_PRESETS:
        config = unet_config(name, in_channels=8, input_size=16, num_classes=1000)
        assert UNetConfig.from_dict(config.to_dict()) == config
        with torch.device("meta"):
            model = UNet(config)
        assert model.num_parameters() > 0
    config = unet_config("ldm-tiny", in_channels=8, input_size=16, num_classes=10)
    config.override(["channel_mult=1,2,2", "attention_resolutions=4", "out_channels=none"]).validate()
    assert config.channel_mult == (1, 2, 2) and config.attention_resolutions == (4,) and config.output_channels == 8


@pytest.mark.parametrize("overrides", [
    dict(channel_mult=()),
    dict(channel_mult=(1, 2, 2, 2, 2)),                  # factor 16 does not divide input_size 8
    dict(attention_resolutions=(0,)),                    # not a downsample factor at all
    dict(num_heads=3),
    dict(norm_groups=5),
    dict(class_dropout=1.0),
    dict(out_channels=0),
    dict(model_channels=0),
    dict(no_such_field=1),
])
def test_bad_configs_are_one_line_errors(overrides):
    with pytest.raises(ValueError) as err:
        unet_config("ldm-tiny", in_channels=4, input_size=8, num_classes=CLASSES, **overrides)
    assert "\n" not in str(err.value)


def test_bad_inputs_are_one_line_errors():
    model = _model().eval()
    x, t, y = _inputs()
    cases = [
        lambda: model(torch.randn(3, 4, 7, 7), t, y),                 # odd grid: not divisible by 2
        lambda: model(torch.randn(3, 4, 8, 6)[:, :, :, :5], t, y),
        lambda: model(torch.randn(3, 3, 8, 8), t, y),
        lambda: model(x, t[:2], y),
        lambda: model(x, t, y.float()),
        lambda: unet_config("ldm-huge", in_channels=4, input_size=8, num_classes=CLASSES),
        lambda: UNet(object()),                                        # not a UNetConfig
    ]
    for case in cases:
        with pytest.raises(ValueError) as err:
            case()
        assert "\n" not in str(err.value)
