"""The latent families' sampling path: classifier-free guidance reaches every latent channel, for every family."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vqgan_lc.generate.families import SampleRequest, get_family
from vqgan_lc.generate.pipeline import GenerationPipeline, ProcessConfig

CHANNELS, NUM_CLASSES, SCALE = 4, 3, 3.0


class StubModel(nn.Module):
    """out = -0.5 * x + b(label): the conditional and the null-class offsets differ on every channel.

    With `learn_sigma` a second block of channels (the variance interpolation) follows, also
    label-dependent, so taking it from the wrong half or guiding it would show. `guide_inside`
    makes the model return the guided output itself for a plain conditional call (used with
    cfg_scale 1): the answer the sampler must reproduce when it does the guiding.
    """

    def __init__(self, learn_sigma: bool, guide_inside: bool = False):
        super().__init__()
        self.config = SimpleNamespace(num_classes=NUM_CLASSES)
        self.learn_sigma, self.guide_inside = learn_sigma, guide_inside
        channel = torch.arange(CHANNELS, dtype=torch.float32)
        self.register_buffer("cond", torch.stack([0.3 + 0.1 * channel + 0.2 * c for c in range(NUM_CLASSES)]))
        self.register_buffer("null", -0.2 - 0.05 * channel)
        self.register_buffer("var_cond", torch.full((CHANNELS,), 0.4))
        self.register_buffer("var_null", torch.full((CHANNELS,), -0.6))

    def forward(self, x, t, y):
        is_null = (y == NUM_CLASSES)[:, None]
        cond = self.cond[y.clamp(max=NUM_CLASSES - 1)]
        offset = torch.where(is_null, self.null, cond)
        if self.guide_inside:
            offset = self.null + SCALE * (cond - self.null)
        out = -0.5 * x + offset[:, :, None, None]
        if not self.learn_sigma:
            return out
        var = torch.where(is_null, self.var_null, self.var_cond)
        return torch.cat([out, var[:, :, None, None].expand_as(x)], dim=1)


# DDPM for DiT: its step noise is scaled by the learned variance (DDIM at eta 0 would ignore it).
SETTINGS = {"dit": ("ddpm", 5, True), "ldm": ("ddim", 5, False), "sit": ("heun", 4, False)}


@pytest.mark.parametrize("family", sorted(SETTINGS))
def test_guidance_reaches_every_latent_channel_through_the_sampler(family):
    method, steps, learn_sigma = SETTINGS[family]
    record = get_family(family)
    process = record.build_process(_process(family, 2.0))
    labels = torch.tensor([0, 2, 1])
    shape = (CHANNELS, 2, 2)

    def draw(model, scale):
        rng = torch.Generator().manual_seed(0)
        drawn = record.sample(model.eval(), process, labels, SampleRequest(method, steps, cfg_scale=scale), shape, rng)
        return drawn.latents, drawn.nfe

    guided, nfe = draw(StubModel(learn_sigma), SCALE)
    expected, _ = draw(StubModel(learn_sigma, guide_inside=True), 1.0)
    conditional, _ = draw(StubModel(learn_sigma), 1.0)
    assert guided.shape == (3, *shape)
    assert nfe == (2 * steps if method == "heun" else steps)
    # Guided by the sampler == guided inside the model, on every channel (the variance half,
    # where there is one, coming from the conditional pass) ...
    torch.testing.assert_close(guided, expected, rtol=1e-5, atol=1e-5)
    # ... and guidance changed every channel of every sample compared with the conditional run.
    moved = (guided - conditional).abs().amax(dim=(2, 3))
    assert bool((moved > 1e-3).all()), moved


def _process(family: str, latent_scale: float) -> ProcessConfig:
    return ProcessConfig(family=family, diffusion_steps=100, latent_scale=latent_scale, grid=(2, 2),
                         latent_dim=CHANNELS, codebook_size=8, num_classes=NUM_CLASSES)


def test_sampled_latents_come_back_in_the_tokenizer_scale():
    """Training multiplies latents by latent_scale; the pipeline divides it back out."""
    labels = torch.tensor([1, 1])
    results = []
    for scale in (1.0, 4.0):
        pipeline = GenerationPipeline(StubModel(False).eval(), None, _process("sit", scale))
        drawn = pipeline.draw(labels, SampleRequest("euler", 3), torch.Generator().manual_seed(0))
        results.append(drawn.latents * scale)
    torch.testing.assert_close(results[0], results[1])
