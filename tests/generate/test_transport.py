"""SiT transport: the samplers against a Gaussian problem with a known flow, the loss, CFG and NFE counts."""
import pytest
import torch
from torch import nn

from vqgan_lc.generate.transport import Transport

NUM_CLASSES = 3
NULL = NUM_CLASSES


class GaussianVelocity:
    """Exact velocity of the linear path when class y's data is N(means[y], std^2 I) per element.

    x_t = (1 - t) eps + t x is then N(t mu, var_t) with var_t = t^2 std^2 + (1 - t)^2, and
    E[x - eps | x_t] = mu + (t std^2 - (1 - t)) / var_t * (x_t - t mu): the ODE maps a noise
    sample eps to exactly mu + std * eps.
    """

    def __init__(self, means, std):
        self.means, self.std = torch.tensor(means), std
        self.calls = []

    def __call__(self, x, t, y):
        self.calls.append(y.clone())
        shape = (-1,) + (1,) * (x.dim() - 1)
        mu, t = self.means[y].reshape(shape), t.reshape(shape)
        var = t ** 2 * self.std ** 2 + (1 - t) ** 2
        return mu + (t * self.std ** 2 - (1 - t)) / var * (x - t * mu)


def _problem(batch=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, 4, 8, 8, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    model = GaussianVelocity([1.5, -0.5, 3.0, 0.0], std=0.5)     # last row: the null class
    return model, noise, labels


def _expected(model, noise, labels):
    return model.means[labels].reshape(-1, 1, 1, 1) + model.std * noise


def test_dopri5_carries_noise_to_the_known_gaussian_and_heun_agrees():
    model, noise, labels = _problem()
    # SiT's tolerances (atol 1e-6, rtol 1e-3): the right distribution, each sample within a few 1e-2
    x, info = Transport().sample(model, noise, labels, null_label=NULL, method="dopri5")
    assert info["method"] == "dopri5" and info["steps"] is None
    assert info["nfe"] == len(model.calls) and 6 <= info["nfe"] < 200
    for c in range(NUM_CLASSES):
        values = x[labels == c]
        assert abs(values.mean().item() - model.means[c].item()) < 0.02
        assert abs(values.std().item() - model.std) < 0.02
    assert (x - _expected(model, noise, labels)).abs().max() < 0.1

    # tight tolerances: the exact map mu + std * eps, sample by sample
    tight, tight_info = Transport().sample(model, noise, labels, null_label=NULL, method="dopri5", rtol=1e-5)
    assert tight_info["nfe"] > info["nfe"]
    assert torch.allclose(tight, _expected(model, noise, labels), atol=1e-4)

    heun, heun_info = Transport().sample(model, noise, labels, null_label=NULL, method="heun", steps=20)
    assert heun_info["nfe"] == 40
    assert torch.allclose(heun, tight, atol=5e-3)


def test_sde_sampler_keeps_the_marginals_and_is_reproducible():
    model, noise, labels = _problem(batch=256)
    transport = Transport()
    x, info = transport.sample(model, noise, labels, null_label=NULL, method="sde", steps=100,
                               generator=torch.Generator().manual_seed(1))
    assert info["nfe"] == 100
    for c in range(NUM_CLASSES):
        values = x[labels == c]
        assert abs(values.mean().item() - model.means[c].item()) < 0.05
        assert abs(values.std().item() - model.std) < 0.05
    # noise was injected: not the ODE's deterministic map
    assert (x - _expected(model, noise, labels)).abs().mean() > 0.05

    def run(seed):
        return transport.sample(model, noise, labels, null_label=NULL, method="sde", steps=10,
                                generator=torch.Generator().manual_seed(seed))[0]

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


@pytest.mark.parametrize("method, steps, nfe", [("heun", 7, 14), ("euler", 7, 7), ("sde", 7, 7), ("heun", 1, 2)])
def test_fixed_step_methods_count_their_evaluations(method, steps, nfe):
    model, noise, labels = _problem(batch=4)
    _, info = Transport().sample(model, noise, labels, null_label=NULL, method=method, steps=steps,
                                 cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    # with CFG each evaluation is still one batched forward (cond + uncond halves together)
    assert info["nfe"] == nfe == len(model.calls)
    assert info["steps"] == steps


def test_cfg_scale_one_is_the_conditional_model_alone():
    model, noise, labels = _problem(batch=8)
    x, _ = Transport().sample(model, noise, labels, null_label=NULL, method="euler", steps=5)
    assert all(torch.equal(y, labels) for y in model.calls)          # no null-class half at scale 1

    plain = noise.clone()
    for i in range(5):
        t = torch.full((8,), i / 5)
        plain = plain + 0.2 * model(plain, t, labels)
    assert torch.allclose(x, plain, atol=1e-6)


def test_guidance_acts_on_every_channel():
    # velocity 1 for real classes, 0 for the null class, on all channels: guided velocity = scale
    def model(x, t, y):
        return (y != NULL).to(x.dtype).reshape(-1, 1, 1, 1).expand_as(x)

    noise = torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2])
    x, info = Transport().sample(model, noise, labels, null_label=NULL, cfg_scale=3.0, method="euler", steps=4)
    assert torch.allclose(x - noise, torch.full_like(x, 3.0), atol=1e-6)
    assert info["nfe"] == 4


def test_loss_is_zero_for_the_exact_velocity_and_positive_otherwise():
    transport = Transport(train_eps=1e-2)
    targets = torch.tensor([2.0, -1.0, 0.5])
    labels = torch.tensor([0, 1, 2, 1, 0, 2] * 8)
    x_data = targets[labels].reshape(-1, 1, 1, 1).expand(-1, 2, 4, 4).contiguous()

    def exact(x, t, y):
        # data is a point mass at targets[y]: the velocity from x_t points at it, (x1 - x_t) / (1 - t)
        return (targets[y].reshape(-1, 1, 1, 1) - x) / (1 - t).reshape(-1, 1, 1, 1)

    loss, logs = transport.training_loss(exact, x_data, labels, generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-8 and logs["loss"] == loss.item()
    wrong, _ = transport.training_loss(lambda x, t, y: torch.zeros_like(x), x_data, labels,
                                       generator=torch.Generator().manual_seed(0))
    assert wrong.item() > 0.1


def test_training_times_stay_inside_the_eps_interval_and_are_seeded():
    seen = []

    def model(x, t, y):
        seen.append(t.clone())
        return torch.zeros_like(x)

    transport = Transport(train_eps=0.2)
    x_data = torch.randn(512, 2, 2, 2)
    labels = torch.zeros(512, dtype=torch.long)
    a, _ = transport.training_loss(model, x_data, labels, generator=torch.Generator().manual_seed(3))
    b, _ = transport.training_loss(model, x_data, labels, generator=torch.Generator().manual_seed(3))
    assert a.item() == b.item() and torch.equal(seen[0], seen[1])
    assert seen[0].shape == (512,) and seen[0].min() >= 0.2 and seen[0].max() <= 0.8


class TinyVelocity(nn.Module):
    def __init__(self, dim=32, classes=NUM_CLASSES):
        super().__init__()
        self.embed = nn.Embedding(classes + 1, 16)
        self.net = nn.Sequential(nn.Linear(dim + 1 + 16, 64), nn.SiLU(), nn.Linear(64, dim))

    def forward(self, x, t, y):
        features = torch.cat([x.flatten(1), t[:, None], self.embed(y)], dim=1)
        return self.net(features).reshape(x.shape)


def test_a_few_optimizer_steps_reduce_the_loss():
    torch.manual_seed(0)
    model, transport = TinyVelocity(), Transport()
    labels = torch.randint(0, NUM_CLASSES, (64,))
    x_data = torch.tensor([2.0, -2.0, 0.0])[labels].reshape(-1, 1, 1, 1) + 0.1 * torch.randn(64, 2, 4, 4)

    def fixed_loss():
        with torch.no_grad():
            return transport.training_loss(model, x_data, labels, generator=torch.Generator().manual_seed(9))[0].item()

    before = fixed_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss, _ = transport.training_loss(model, x_data, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert fixed_loss() < 0.7 * before


def test_bad_arguments_are_one_line_errors():
    model, noise, labels = _problem(batch=2)
    transport = Transport()
    cases = [
        lambda: transport.sample(model, noise, labels, null_label=NULL, method="rk4"),
        lambda: transport.sample(model, noise, labels, null_label=NULL, method="heun", steps=0),
        lambda: transport.sample(model, noise, labels[:1], null_label=NULL),
        lambda: transport.sample(model, noise, labels, null_label=NULL, atol=0.0),
        lambda: transport.sample(lambda x, t, y: torch.cat([x, x], 1), noise, labels, null_label=NULL,
                                 method="euler", steps=1),
        lambda: transport.training_loss(lambda x, t, y: torch.cat([x, x], 1), noise, labels),
        lambda: transport.training_loss(model, noise, labels[:1]),
        lambda: Transport(train_eps=0.5),
        lambda: Transport(diffusion_norm=-1.0),
    ]
    for case in cases:
        with pytest.raises(ValueError) as err:
            case()
        assert "\n" not in str(err.value)
