import math

import pytest
import torch

from vqgan_lc.generate.diffusion import GaussianDiffusion, make_betas, spaced_steps
from vqgan_lc.generate.dit import DiT, DiTConfig


def oracle(diffusion: GaussianDiffusion, target: torch.Tensor, learn_sigma: bool, var_value: float = -1.0):
    """The exact noise predictor for data that is always `target`: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab).
    It reads the step the model is given (the original schedule's), so it also checks respacing."""
    alpha_bar = diffusion.alphas_cumprod

    def model(x, t, y):
        ab = alpha_bar[t.long()].float().view(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * target) / (1 - ab).sqrt()
        return torch.cat([eps, torch.full_like(eps, var_value)], dim=1) if learn_sigma else eps
    return model


def test_schedules_are_computed_in_float64_and_match_the_papers():
    dit = GaussianDiffusion.from_preset("dit")
    assert dit.learn_sigma and dit.num_timesteps == 1000 and dit.betas.dtype == torch.float64
    assert dit.betas[0].item() == pytest.approx(1e-4) and dit.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(dit.betas.diff(), dit.betas.diff()[0].expand(999))  # linear in beta
    assert dit.alphas_cumprod[0].item() == pytest.approx(0.9999)
    assert 4.0e-5 < dit.alphas_cumprod[-1].item() < 4.1e-5
    ldm = GaussianDiffusion.from_preset("ldm")
    assert not ldm.learn_sigma
    assert ldm.betas[0].item() == pytest.approx(0.0015) and ldm.betas[-1].item() == pytest.approx(0.0195)
    root = ldm.betas.sqrt()
    assert torch.allclose(root.diff(), root.diff()[0].expand(999))  # linear in sqrt(beta), as LDM's code
    # DiT's schedule keeps its total noise when T changes.
    short = GaussianDiffusion.from_preset("dit", num_timesteps=100)
    assert short.betas[-1].item() == pytest.approx(0.2)


def test_q_sample_is_the_data_at_t0_and_the_noise_at_the_last_step():
    diffusion = GaussianDiffusion.from_preset("dit")
    g = torch.Generator().manual_seed(0)
    x0 = 5.0 + 3.0 * torch.randn(64, 4, 8, 8, generator=g)  # far from N(0, 1) on purpose
    noise = torch.randn(x0.shape, generator=g)
    first = diffusion.q_sample(x0, torch.zeros(64, dtype=torch.long), noise)
    assert (first - x0).abs().max() < 0.06  # sqrt(1 - 0.9999) = 0.01 times the noise
    last = diffusion.q_sample(x0, torch.full((64,), 999, dtype=torch.long), noise)
    assert (last - noise).abs().max() < 0.2  # sqrt(4e-5) = 0.0064 times the data
    assert abs(last.mean().item()) < 0.06 and abs(last.std().item() - 1) < 0.03


def test_training_loss_follows_the_schedule_at_both_ends():
    # Predicting eps = x_t is almost exact at the last step (x_t ~ noise) and far off at t = 0 (x_t ~ x0).
    diffusion = GaussianDiffusion.from_preset("dit", learn_sigma=False)
    x0 = torch.full((8, 4, 8, 8), 2.0)
    labels = torch.zeros(8, dtype=torch.long)
    identity = lambda x, t, y: x  # noqa: E731
    g = torch.Generator().manual_seed(0)
    _, end = diffusion.training_loss(identity, x0, labels, g, timesteps=torch.full((8,), 999))
    _, start = diffusion.training_loss(identity, x0, labels, g, timesteps=torch.zeros(8))
    assert end["mse"] < 1e-3
    assert start["mse"] > 4.0  # E|x0 - noise|^2 = 4 + 1, up to the small noise term at t = 0


def test_oracle_has_zero_mse_and_zero_kl_and_a_positive_decoder_term():
    diffusion = GaussianDiffusion.from_preset("dit")
    target = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-0.9, 0.9)
    x0 = target.expand(4, -1, -1, -1)
    labels = torch.zeros(4, dtype=torch.long)
    model = oracle(diffusion, target, learn_sigma=True)  # v = -1: exactly the posterior variance
    _, logs = diffusion.training_loss(model, x0, labels, timesteps=torch.tensor([1, 10, 500, 999]))
    assert logs["mse"] < 1e-8 and abs(logs["vb"].item()) < 1e-4
    _, logs = diffusion.training_loss(model, x0, labels, timesteps=torch.zeros(4))
    assert logs["vb"] > 0.01  # the t = 0 term is a likelihood of x0 under the decoder, never 0


def test_vb_term_is_finite_and_non_negative():
    diffusion = GaussianDiffusion.from_preset("dit")
    g = torch.Generator().manual_seed(0)
    x0 = 2 * torch.randn(16, 4, 8, 8, generator=g)  # outside [-1, 1] too: latents are unbounded
    x_t = torch.randn(16, 4, 8, 8, generator=g)
    t = torch.tensor([0, 0, 0, 1, 2, 5, 50, 100, 200, 400, 600, 800, 900, 990, 998, 999])
    output = 3 * torch.randn(16, 8, 8, 8, generator=g)
    vb = diffusion.vb_terms_bits(output, x0, x_t, t)
    assert vb.shape == (16,) and torch.isfinite(vb).all() and (vb >= 0).all()


def test_vb_gradient_reaches_only_the_variance_channels():
    diffusion = GaussianDiffusion.from_preset("dit")
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 4, 8, 8, generator=g)
    out = torch.randn(8, 8, 8, 8, generator=g, requires_grad=True)
    state = g.get_state()
    loss, logs = diffusion.training_loss(lambda x, t, y: out, x0, torch.zeros(8, dtype=torch.long), g)
    loss.backward()
    assert torch.isfinite(loss) and logs["vb"] > 0
    # Replay the draws: the mean half gets exactly the MSE gradient 2 (eps - noise) / numel, nothing from VB.
    g.set_state(state)
    torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn(8, 4, 8, 8, generator=g)
    torch.testing.assert_close(out.grad[:, :4], 2 * (out[:, :4].detach() - noise) / noise.numel())
    assert torch.isfinite(out.grad[:, 4:]).all() and out.grad[:, 4:].abs().sum() > 0


def test_respaced_betas_reproduce_alpha_bar_at_the_kept_steps():
    diffusion = GaussianDiffusion.from_preset("dit")
    kept = spaced_steps(1000, 250)
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999 and (kept.diff() > 0).all()
    spaced = diffusion.respace(250)
    assert spaced.num_timesteps == 250 and torch.equal(spaced.timestep_map, kept)
    torch.testing.assert_close(spaced.alphas_cumprod, diffusion.alphas_cumprod[kept], rtol=1e-12, atol=0)
    # Respacing a respaced schedule composes the maps and still matches the original.
    twice = spaced.respace(10)
    torch.testing.assert_close(twice.alphas_cumprod, diffusion.alphas_cumprod[twice.timestep_map], rtol=1e-12, atol=0)
    assert diffusion.respace(1000) is diffusion


@pytest.mark.parametrize("method, steps, learn_sigma", [
    ("ddim", 1000, False), ("ddim", 25, True), ("ddpm", 50, True), ("ddpm", 1000, False), ("ddim", 1, False),
])
def test_samplers_recover_the_data_point_from_the_exact_denoiser(method, steps, learn_sigma):
    # With data that is a single point, the exact eps predictor denoises any noise to that point.
    diffusion = GaussianDiffusion.from_preset("dit", learn_sigma=learn_sigma)
    g = torch.Generator().manual_seed(0)
    target = torch.randn(1, 4, 4, 4, generator=g)
    noise = torch.randn(2, 4, 4, 4, generator=g)
    exact = oracle(diffusion, target, learn_sigma, var_value=0.0)
    predicted = []

    def model(x, t, y):
        predicted.append(exact(x, t, y)[:, :4])
        return predicted[-1] if not learn_sigma else exact(x, t, y)

    out = diffusion.sample(model, noise, torch.zeros(2, dtype=torch.long), method=method, steps=steps, generator=g)
    torch.testing.assert_close(out, target.expand_as(out), atol=1e-3, rtol=0)
    assert len(predicted) == steps
    if method == "ddim":
        # Deterministic DDIM keeps a single-point trajectory on its first noise: every step sees the same
        # eps, which holds only if the model is given the original step each respaced step stands for.
        for eps in predicted:
            torch.testing.assert_close(eps, predicted[0], atol=2e-3, rtol=0)


def tiny_dit(**overrides) -> DiT:
    fields = dict(in_channels=4, input_size=8, num_classes=10, depth=2, hidden_size=32, num_heads=4)
    return DiT(DiTConfig(**{**fields, **overrides}))


def test_ddim_eta0_is_deterministic_and_draws_no_random_numbers():
    torch.manual_seed(0)
    model = tiny_dit()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.eval()
    diffusion = GaussianDiffusion.from_preset("dit")
    noise = torch.randn(2, 4, 8, 8)
    labels = torch.tensor([1, 2])
    g = torch.Generator().manual_seed(123)
    before_g, before_global = g.get_state(), torch.get_rng_state()
    first = diffusion.sample(model, noise, labels, method="ddim", steps=10, cfg_scale=3.0, generator=g)
    second = diffusion.sample(model, noise.clone(), labels, method="ddim", steps=10, cfg_scale=3.0)
    assert torch.equal(first, second) and torch.isfinite(first).all()
    assert torch.equal(g.get_state(), before_g) and torch.equal(torch.get_rng_state(), before_global)
    # eta > 0 and DDPM are stochastic: the generator decides the sample.
    for kwargs in (dict(method="ddim", eta=1.0), dict(method="ddpm")):
        a = diffusion.sample(model, noise, labels, steps=10, generator=torch.Generator().manual_seed(1), **kwargs)
        b = diffusion.sample(model, noise, labels, steps=10, generator=torch.Generator().manual_seed(1), **kwargs)
        c = diffusion.sample(model, noise, labels, steps=10, generator=torch.Generator().manual_seed(2), **kwargs)
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_guided_sampling_uses_the_null_label_on_every_channel():
    diffusion = GaussianDiffusion.from_preset("ldm")
    seen = []

    def model(x, t, y):
        seen.append(y.clone())
        # cond predicts 0, uncond predicts 1 on every channel: guidance at scale s gives 1 - s.
        return (y == 7).float().view(-1, 1, 1, 1).expand_as(x).clone()

    noise = torch.randn(2, 3, 4, 4)
    x = diffusion.sample(model, noise, torch.tensor([0, 1]), cfg_scale=2.0, null_label=7, method="ddim", steps=1)
    assert torch.equal(seen[0], torch.tensor([0, 1, 7, 7]))
    # One DDIM step from the last step: x0 = (x_T - sqrt(1 - ab) * eps) / sqrt(ab) with eps = -1 everywhere.
    ab = diffusion.alphas_cumprod[-1].item()
    torch.testing.assert_close(x, (noise + math.sqrt(1 - ab)) / math.sqrt(ab))


def test_a_few_optimizer_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = tiny_dit(class_dropout=0.0)
    diffusion = GaussianDiffusion.from_preset("dit")
    x0 = torch.randn(1, 4, 8, 8).expand(16, -1, -1, -1).contiguous()
    labels = torch.arange(16) % 10
    fixed_t = torch.linspace(0, 999, 16).long()

    def evaluate() -> float:
        with torch.no_grad():
            loss, _ = diffusion.training_loss(model, x0, labels, torch.Generator().manual_seed(5), timesteps=fixed_t)
        return loss.item()

    before = evaluate()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        loss, logs = diffusion.training_loss(model, x0, labels, g)
        assert set(logs) == {"mse", "vb"} and torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate()
    assert after < 0.8 * before, (before, after)


def test_sampling_a_model_in_training_mode_is_an_error():
    model = tiny_dit()
    with pytest.raises(ValueError, match="model.eval()"):
        GaussianDiffusion().sample(model, torch.randn(1, 4, 8, 8), torch.zeros(1, dtype=torch.long), steps=2)


@pytest.mark.parametrize("make, message", [
    (lambda: GaussianDiffusion(beta_schedule="cosine"), "unknown beta_schedule"),
    (lambda: GaussianDiffusion(beta_start=0.02, beta_end=1e-4), "beta_start <= beta_end"),
    (lambda: GaussianDiffusion(num_timesteps=0), "num_timesteps"),
    (lambda: GaussianDiffusion.from_preset("edm"), "unknown diffusion preset"),
    (lambda: GaussianDiffusion().respace(2000), r"steps must be in \[1, 1000\]"),
    (lambda: make_betas("quadratic", 10, 0.1, 0.2), "unknown beta_schedule"),
    (lambda: GaussianDiffusion().sample(lambda x, t, y: x, torch.zeros(1, 2, 4, 4), torch.zeros(1, dtype=torch.long),
                                        method="euler"), "unknown sampling method"),
    (lambda: GaussianDiffusion().sample(lambda x, t, y: x, torch.zeros(1, 2, 4, 4), torch.zeros(1, dtype=torch.long),
                                        cfg_scale=2.0), "null_label"),
    (lambda: GaussianDiffusion().training_loss(lambda x, t, y: x, torch.zeros(1, 2, 4, 4),
                                               torch.zeros(1, dtype=torch.long)), "needs 4 channels"),
])
def test_errors_are_one_line(make, message):
    with pytest.raises(ValueError, match=message) as err:
        make()
    assert "\n" not in str(err.value)
