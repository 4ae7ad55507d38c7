"""DiT-LC and SiT-LC: checkpoints in the reference layout convert to our DiT with equal outputs,
and sample as the reference scripts do (DDPM-250 / dopri5, guidance on channels 0-2 only)."""
import json

import pytest
import torch
from torchdiffeq import odeint

from reference_layouts import dit_forward, dit_state, guided_three, mae_sincos_table
from vqgan_lc.generate.dit import DiT, DiTConfig, sincos_positions_2d
from vqgan_lc.generate.reference import convert_reference, dit_from_reference_state, sample_reference
from vqgan_lc.pretrained import load_pretrained

C, GRID, PATCH, WIDTH, DEPTH, CLASSES, HEADS = 8, 4, 2, 32, 2, 5, 4
SIDE = GRID * PATCH


def _inputs(seed=3, batch=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, C, SIDE, SIDE, generator=g), torch.tensor([999.0, 500.0, 3.0])[:batch],
            torch.tensor([0, 4, CLASSES])[:batch])


def test_position_table_is_the_dit_papers_and_old_models_keep_theirs(tmp_path):
    assert torch.allclose(sincos_positions_2d(WIDTH, GRID), mae_sincos_table(WIDTH, GRID), atol=1e-6)
    # the layout models had before: the same table with rows and columns swapped
    old = sincos_positions_2d(WIDTH, GRID, "rows-first").view(GRID, GRID, WIDTH)
    new = sincos_positions_2d(WIDTH, GRID).view(GRID, GRID, WIDTH)
    assert torch.equal(old, new.transpose(0, 1)) and not torch.equal(old, new)
    # a config.json saved before the field existed loads with the old layout, and computes what it did
    model = DiT(DiTConfig(in_channels=C, input_size=SIDE, num_classes=CLASSES, depth=1, hidden_size=WIDTH,
                          num_heads=HEADS, pos_embed_layout="rows-first")).eval()
    model.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old/config.json").read_text())
    del config["pos_embed_layout"], config["sit_time_scale"]
    (tmp_path / "old/config.json").write_text(json.dumps(config))
    loaded = load_pretrained(tmp_path / "old")
    assert loaded.config.pos_embed_layout == "rows-first" and loaded.config.sit_time_scale == 1000.0
    x, t, y = _inputs()
    assert torch.equal(loaded(x, t, y), model(x, t, y))
    assert DiTConfig().pos_embed_layout == "columns-first"


def test_dit_outputs_equal_the_reference_forward():
    reference = dit_state(C, GRID, PATCH, WIDTH, DEPTH, CLASSES, 2 * C)
    model = dit_from_reference_state(reference, family="dit", num_heads=HEADS)
    x, t, y = _inputs()
    expected = dit_forward(reference, x, t, y, HEADS)
    assert expected.shape == (3, 2 * C, SIDE, SIDE)
    assert torch.allclose(model(x, t, y), expected, atol=1e-5, rtol=0)
    guided = model.forward_with_cfg(x, t, y, 8.0, guided_channels=3)
    reference_guided = guided_three(lambda a, b, c: dit_forward(reference, a, b, c, HEADS), x, t, y, 8.0, CLASSES)
    assert torch.allclose(guided, reference_guided, atol=1e-5, rtol=0)


def test_sit_velocity_equals_the_reference_with_t_in_unit_interval():
    reference = dit_state(C, GRID, PATCH, WIDTH, DEPTH, CLASSES, 2 * C, seed=1)   # SiT-XL/2 keeps learn_sigma rows
    model = dit_from_reference_state(reference, family="sit", num_heads=HEADS)
    assert not model.config.learn_sigma and model.config.sit_time_scale == 1.0
    assert model.final_layer.linear.weight.shape[0] == PATCH * PATCH * C             # unused sigma rows dropped
    x, _, y = _inputs()
    t = torch.tensor([0.0, 0.37, 0.999])
    expected = dit_forward(reference, x, t, y, HEADS)[:, :C]                           # SiT.forward: x.chunk(2)[0]
    assert torch.allclose(model.velocity(x, t, y), expected, atol=1e-5, rtol=0)


def _dit_space_timesteps(num_timesteps, count):
    """DiT's space_timesteps for one section: a float stride accumulated, each step rounded."""
    stride, position, kept = (num_timesteps - 1) / (count - 1), 0.0, []
    for _ in range(count):
        kept.append(round(position))
        position += stride
    return kept


def test_dit_grid_is_dits_respacing():
    from vqgan_lc.generate.diffusion import GaussianDiffusion, dit_spaced_steps, spaced_steps
    for steps in (250, 21, 6):
        assert dit_spaced_steps(1000, steps).tolist() == _dit_space_timesteps(1000, steps)
    assert torch.equal(dit_spaced_steps(1000, 250), spaced_steps(1000, 250))      # the protocol's count: the same
    assert not torch.equal(dit_spaced_steps(1000, 21), spaced_steps(1000, 21))    # rounding differs elsewhere
    spaced = GaussianDiffusion.from_preset("dit").respace(21, grid="dit")
    assert spaced.timestep_map.tolist() == _dit_space_timesteps(1000, 21)


def test_dit_reference_sampling_equals_a_step_by_step_ddpm():
    reference = dit_state(C, GRID, PATCH, WIDTH, 1, CLASSES, 2 * C, seed=2)
    model = dit_from_reference_state(reference, family="dit", num_heads=HEADS)
    labels = torch.tensor([1, 3])
    noise = torch.randn(2, C, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    steps = 21    # a count where DiT's rounding and an even spread differ
    ours = sample_reference(model, "dit", labels, noise=noise, generator=torch.Generator().manual_seed(9), steps=steps)

    # gaussian_diffusion.py + respace.py of DiT: linear betas, respaced, learned-range variance, no clipping
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    bar_full = torch.cumprod(1 - betas, 0)
    kept = _dit_space_timesteps(1000, steps)
    bar = bar_full[kept]
    betas = 1 - bar / torch.cat([torch.ones(1, dtype=torch.float64), bar[:-1]])
    bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), bar[:-1]])
    post_var = betas * (1 - bar_prev) / (1 - bar)
    post_log = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    coef0, coef_t = betas * bar_prev.sqrt() / (1 - bar), (1 - bar_prev) * (1 - betas).sqrt() / (1 - bar)
    g, x = torch.Generator().manual_seed(9), noise
    forward = lambda a, b, c: dit_forward(reference, a, b, c, HEADS)   # noqa: E731
    for i in reversed(range(steps)):
        t = torch.full((2,), float(kept[i]))
        out = guided_three(forward, x, t, labels, 8.0, CLASSES)
        eps, v = out[:, :C], out[:, C:]
        f = lambda a: float(a[i])   # noqa: E731
        frac = (v + 1) / 2
        log_var = frac * f(torch.log(betas)) + (1 - frac) * f(post_log)
        x0 = (1 / bar[i]).sqrt().item() * x - (1 / bar[i] - 1).sqrt().item() * eps
        mean = f(coef0) * x0 + f(coef_t) * x
        x = mean if i == 0 else mean + torch.exp(0.5 * log_var) * torch.randn(x.shape, generator=g)
    # float32 rounding grows over the steps (a random network's x0 predictions reach hundreds):
    # equal to 1e-5 of the samples' scale
    assert (ours - x).abs().max() <= 1e-5 * x.abs().max(), (ours - x).abs().max()


def test_sit_reference_sampling_equals_dopri5_on_the_reference_velocity():
    reference = dit_state(C, GRID, PATCH, WIDTH, 1, CLASSES, 2 * C, seed=4)
    model = dit_from_reference_state(reference, family="sit", num_heads=HEADS)
    labels = torch.tensor([0, 2])
    noise = torch.randn(2, C, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    ours = sample_reference(model, "sit", labels, noise=noise)
    forward = lambda a, b, c: dit_forward(reference, a, b, c, HEADS)[:, :C]   # noqa: E731

    def drift(t, x):
        return guided_three(forward, x, torch.full((2,), float(t)), labels, 8.0, CLASSES)
    expected = odeint(drift, noise, torch.tensor([0.0, 1.0]), method="dopri5", atol=1e-6, rtol=1e-3)[-1]
    assert (ours - expected).abs().max() <= 1e-5 * expected.abs().max(), (ours - expected).abs().max()


@pytest.mark.parametrize("family, wrapper", [("dit", "ema"), ("sit", "ema")])
def test_convert_takes_the_ema_weights(tmp_path, family, wrapper):
    import argparse
    ema = dit_state(C, GRID, PATCH, WIDTH, 1, CLASSES, 2 * C, seed=6)
    raw = dit_state(C, GRID, PATCH, WIDTH, 1, CLASSES, 2 * C, seed=7)
    args = argparse.Namespace(model=f"{family.upper() if family == 'dit' else 'SiT'}-XL/2", embed_dim=C)
    path = tmp_path / f"{family}.pth"
    torch.save({"model": raw, "ema": ema, "opt": {"state": {}, "param_groups": []}, "args": args}, path)
    process = convert_reference(family, path, tmp_path / "out", num_heads=HEADS)
    model = load_pretrained(tmp_path / "out/generator")
    x, t, y = _inputs()
    if family == "dit":
        assert torch.allclose(model(x, t, y), dit_forward(ema, x, t, y, HEADS), atol=1e-5, rtol=0)
    else:
        tt = t / 1000
        assert torch.allclose(model.velocity(x, tt, y), dit_forward(ema, x, tt, y, HEADS)[:, :C], atol=1e-5, rtol=0)
    assert process["source"]["weights"].startswith("ema") and process["tokenizer"] is None
    assert process["sampling"]["guided_channels"] == 3 and process["sampling"]["guidance_scale"] == 8.0
