"""Gaussian diffusion (DDPM) on latents: the forward process, the training loss and the samplers.

The model is any callable `model(x_t, t, y)` whose `t` is a float tensor of **original**
diffusion steps (a respaced sampler still passes the step of the full schedule it stands
for) and that predicts the noise epsilon; with `learn_sigma` it returns 2C channels, the
second half a value v in ~[-1, 1] interpolating the log variance between the posterior
variance (v = -1) and beta_t (v = 1), as in improved DDPM and DiT.

    diffusion = GaussianDiffusion.from_preset("dit")          # linear 1e-4 -> 0.02, learned sigma
    loss, logs = diffusion.training_loss(model, latents, labels)
    latents = diffusion.sample(model.eval(), noise, labels, cfg_scale=4.0, steps=250)

The schedule is computed in float64 (alpha_bar near t = T is ~4e-5, where float32 cumulative
products drift) and cast to float32 when gathered.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn

from .guidance import guided
from .noise import randn

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

BETA_SCHEDULES = ("linear", "scaled_linear")


def make_betas(schedule: str, num_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """(T,) float64 betas. "linear": linear in beta (DDPM/DiT); "scaled_linear": linear in sqrt(beta)
    (what the LDM code calls "linear")."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
    raise ValueError(f"unknown beta_schedule {schedule!r}; use one of {', '.join(BETA_SCHEDULES)}")


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log-probability (nats) of x under a Gaussian integrated over 8-bit bins of
    [-1, 1] (width 2/255), the outer bins open-ended: improved DDPM's decoder term at t = 0.
    Latents are not 8-bit data; the term is kept as DiT uses it, a bounded (<= 0) likelihood."""
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (centred + 1.0 / 255)
    lower = inv_std * (centred - 1.0 / 255)
    # log_ndtr keeps the open-ended tails accurate where 1 - cdf would round to 0.
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_survival_lower = torch.special.log_ndtr(-lower)
    bin_mass = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12)
    return torch.where(x < -0.999, log_cdf_upper,
                       torch.where(x > 0.999, log_survival_lower, torch.log(bin_mass)))


def spaced_steps(num_timesteps: int, steps: int) -> torch.Tensor:
    """`steps` evenly spread steps of 0..T-1, always including 0 and (for steps > 1) T-1."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}] (the schedule length), got {steps}")
    if steps == 1:
        return torch.tensor([num_timesteps - 1])
    return torch.round(torch.arange(steps, dtype=torch.float64) * (num_timesteps - 1) / (steps - 1)).long()


# preset -> (beta schedule, beta_start, beta_end at 1000 steps, learned sigma, rescale betas by 1000/T)
SCHEDULE_PRESETS = {
    "dit": ("linear", 1e-4, 0.02, True, True),            # DiT / ADM
    "ldm": ("scaled_linear", 0.0015, 0.0195, False, False),  # latent diffusion
}


GRIDS = ("even", "dit", "ldm")
FINAL_ALPHA_BARS = ("one", "grid")


def dit_spaced_steps(num_timesteps: int, steps: int) -> torch.Tensor:
    """DiT's respacing (one section): a float stride (T-1)/(steps-1) accumulated step by step and
    each position rounded half to even. Equal to `spaced_steps` for 250 of 1000 steps; for some
    other counts the accumulated rounding picks a neighbouring step (21 of 1000: 499 where an even
    spread has 500)."""
    if not 2 <= steps <= num_timesteps:
        raise ValueError(f"the dit grid needs 2 <= steps <= {num_timesteps} (the schedule length), got {steps}")
    stride, position, kept = (num_timesteps - 1) / (steps - 1), 0.0, []
    for _ in range(steps):
        kept.append(round(position))
        position += stride
    return torch.tensor(kept)


def ldm_ddim_steps(num_timesteps: int, steps: int) -> torch.Tensor:
    """LDM's uniform DDIM grid: every (T // steps)-th step from 0, each shifted by one
    (T = 1000, 200 steps: 1, 6, ..., 996). Step T-1 is never visited."""
    if not 1 <= steps < num_timesteps:
        raise ValueError(f"the ldm grid needs 1 <= steps < {num_timesteps} (the schedule length), got {steps}")
    stride = num_timesteps // steps
    kept = torch.arange(0, num_timesteps, stride) + 1
    if int(kept[-1]) >= num_timesteps:
        raise ValueError(f"the ldm grid of {steps} steps over {num_timesteps} runs past the schedule; use fewer steps")
    return kept


class GaussianDiffusion:
    """The DDPM forward process of one beta schedule, its loss and its samplers.

    `learn_sigma`: the model outputs the variance interpolation too (2C channels) and the
    loss adds the variational bound for it; otherwise the variance is the fixed posterior one.
    """

    def __init__(self, num_timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, learn_sigma: bool = True):
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be at least 1, got {num_timesteps}")
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}")
        self.beta_schedule = beta_schedule
        betas = make_betas(beta_schedule, num_timesteps, beta_start, beta_end)
        self._setup(betas, torch.arange(num_timesteps), learn_sigma)

    @classmethod
    def from_preset(cls, name: str, *, num_timesteps: int = 1000,
                    learn_sigma: bool | None = None) -> "GaussianDiffusion":
        """A named schedule. dit: linear 1e-4 -> 0.02 at 1000 steps (scaled by 1000/T for other T),
        learned sigma; ldm: LDM's sqrt-linear 0.0015 -> 0.0195, fixed variance.
        `learn_sigma` overrides the preset's choice."""
        if name not in SCHEDULE_PRESETS:
            raise ValueError(f"unknown diffusion preset {name!r}; available: {', '.join(SCHEDULE_PRESETS)}")
        schedule, beta_start, beta_end, sigma, rescale = SCHEDULE_PRESETS[name]
        scale = 1000 / num_timesteps if rescale else 1.0  # keeps the total noise of the schedule when T changes
        return cls(num_timesteps, schedule, beta_start * scale, beta_end * scale,
                   learn_sigma=sigma if learn_sigma is None else learn_sigma)

    def _setup(self, betas: torch.Tensor, timestep_map: torch.Tensor, learn_sigma: bool) -> None:
        """Every schedule-derived array, in float64, from the betas."""
        self.learn_sigma = learn_sigma
        self.num_timesteps = len(betas)
        self.timestep_map = timestep_map  # step of this schedule -> step the model was trained on
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        # q(x_{t-1} | x_t, x_0) = N(coef_x0 * x_0 + coef_xt * x_t, posterior_variance)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0; its log borrows step 1's (or beta's, for a 1-step schedule).
        first = self.posterior_variance[1:2] if len(betas) > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        self.posterior_mean_coef_x0 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef_xt = ((1.0 - self.alphas_cumprod_prev) * (1.0 - betas).sqrt()
                                       / (1.0 - self.alphas_cumprod))

    @staticmethod
    def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] as float32 on t's device, shaped to broadcast over (B, C, H, W)."""
        out = values.to(device=t.device, dtype=torch.float32)[t]
        return out.view(-1, *([1] * (like.ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The float steps the model sees for indices `t` of this (possibly respaced) schedule."""
        return self.timestep_map.to(t.device)[t].float()

    # --- forward process ----------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise."""
        return self._gather(self.sqrt_alphas_cumprod, t, x0) * x0 + \
            self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._gather(self.posterior_mean_coef_x0, t, x_t) * x0 + \
            self._gather(self.posterior_mean_coef_xt, t, x_t) * x_t
        return mean, self._gather(self.posterior_log_variance_clipped, t, x_t)

    # --- reverse process ----------------------------------------------------------------------
    def _split(self, output: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        c = x_t.shape[1]
        expected = 2 * c if self.learn_sigma else c
        if output.ndim != x_t.ndim or output.shape[1] != expected:
            raise ValueError(f"the model returned {tuple(output.shape)} for {c}-channel latents; a "
                             f"{'learn_sigma' if self.learn_sigma else 'fixed-variance'} diffusion needs {expected} "
                             "channels (make the model's learn_sigma match the diffusion's)")
        return (output[:, :c], output[:, c:]) if self.learn_sigma else (output, None)

    def p_mean_variance(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        clip_x0: float | None = None) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) from a model output at indices `t`: keys mean, log_variance, pred_x0, eps.
        `clip_x0` clamps the predicted x0 to [-clip_x0, clip_x0] (off by default: latents are unbounded)."""
        eps, var_values = self._split(output, x_t)
        if var_values is None:
            log_variance = self._gather(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        else:
            # Interpolate in log space between the two extreme choices of the DDPM paper.
            low = self._gather(self.posterior_log_variance_clipped, t, x_t)
            high = self._gather(torch.log(self.betas), t, x_t)
            frac = (var_values + 1) / 2
            log_variance = frac * high + (1 - frac) * low
        pred_x0 = self._gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - \
            self._gather(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        if clip_x0 is not None:
            pred_x0 = pred_x0.clamp(-clip_x0, clip_x0)
            # Keep eps consistent with the clipped x0 so DDIM steps stay on the same trajectory.
            eps = (self._gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_x0) / \
                self._gather(self.sqrt_recipm1_alphas_cumprod, t, x_t)
        mean, _ = self.q_posterior(pred_x0, x_t, t)
        return {"mean": mean, "log_variance": log_variance, "pred_x0": pred_x0, "eps": eps}

    def vb_terms_bits(self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B,) variational-bound term per sample in bits per dimension: KL(q || p) for t > 0, the
        discretized decoder negative log-likelihood at t = 0."""
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        p = self.p_mean_variance(output, x_t, t)
        kl = normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"]).flatten(1).mean(1)
        nll = -discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"]).flatten(1).mean(1)
        return torch.where(t == 0, nll, kl) / math.log(2.0)

    def training_loss(self, model: Model, x0: torch.Tensor, labels: torch.Tensor,
                      generator: torch.Generator | None = None,
                      timesteps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, logs): epsilon MSE at uniform random steps, plus, with learn_sigma, the VB term whose
        gradient reaches only the variance (the mean is detached: improved DDPM's hybrid loss).
        `generator` (on x0's device) draws steps and noise; `timesteps` (B,) fixes the steps.
        logs: detached scalars mse and vb (vb is reported for a fixed variance too, without gradient)."""
        b = x0.shape[0]
        if timesteps is None:
            t = torch.randint(0, self.num_timesteps, (b,), device=x0.device, generator=generator)
        else:
            t = timesteps.to(device=x0.device, dtype=torch.long)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, self.model_timesteps(t), labels)
        eps, var_values = self._split(output, x_t)
        mse = ((noise.float() - eps.float()) ** 2).flatten(1).mean(1).mean()
        if var_values is None:
            with torch.no_grad():
                vb = self.vb_terms_bits(output.detach().float(), x0.float(), x_t.float(), t).mean()
            loss = mse
        else:
            frozen = torch.cat([eps.detach(), var_values], dim=1).float()
            vb = self.vb_terms_bits(frozen, x0.float(), x_t.float(), t).mean()
            loss = mse + vb
        return loss, {"mse": mse.detach(), "vb": vb.detach()}

    # --- sampling -----------------------------------------------------------------------------
    def respace(self, steps: int, grid: str = "even") -> "GaussianDiffusion":
        """A diffusion over `steps` of these steps, with betas recomputed so that alpha_bar at every
        kept step equals this schedule's; the model still sees the original step numbers.
        `grid`: "even" spreads the steps over 0..T-1, both ends included; "dit" is DiT's own
        rounding of that spread (see `dit_spaced_steps`); "ldm" is LDM's DDIM grid (see `ldm_ddim_steps`)."""
        if grid not in GRIDS:
            raise ValueError(f"unknown timestep grid {grid!r}; use one of {', '.join(GRIDS)}")
        if grid == "ldm":
            kept = ldm_ddim_steps(self.num_timesteps, steps)
        elif grid == "dit":
            kept = dit_spaced_steps(self.num_timesteps, steps)
        else:
            kept = spaced_steps(self.num_timesteps, steps)
            if steps == self.num_timesteps:
                return self
        kept_bar = self.alphas_cumprod[kept]
        previous = torch.cat([torch.ones(1, dtype=torch.float64), kept_bar[:-1]])
        spaced = object.__new__(type(self))
        spaced.beta_schedule = self.beta_schedule
        spaced._setup(1.0 - kept_bar / previous, self.timestep_map[kept], self.learn_sigma)
        return spaced

    def sample(self, model: Model, noise: torch.Tensor, labels: torch.Tensor, *, cfg_scale: float = 1.0,
               null_label: int | None = None, method: str = "ddpm", steps: int = 250, eta: float = 0.0,
               clip_x0: float | None = None, generator: torch.Generator | None = None,
               progress: bool = False, guided_channels: int | None = None, grid: str = "even",
               final_alpha_bar: str = "one") -> torch.Tensor:
        """Denoise `noise` (B, C, h, w) into latents, conditioned on `labels` (B,).

        `cfg_scale` != 1 applies classifier-free guidance to the first `guided_channels` noise
        channels (None: all C; the reference DiT-LC guides 3, the rest coming from the
        conditional pass); the null class id is `null_label`, or `model.config.num_classes` when
        not given. `method`: "ddpm" (ancestral) or "ddim" (`eta` 0: deterministic, draws no random
        numbers). `steps`: a respaced subset of the schedule on `grid` ("even", DiT's "dit" or
        LDM's "ldm", see `respace`). `final_alpha_bar` (ddim): "one" ends on alpha_bar = 1, the clean sample;
        "grid" ends on alpha_bar of the schedule's step 0 and adds that last step's noise too, as
        LDM's DDIM sampler does. `generator` (on noise's device) draws the step noise.
        """
        if method not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampling method {method!r}; use ddpm or ddim")
        if final_alpha_bar not in FINAL_ALPHA_BARS:
            raise ValueError(f"unknown final_alpha_bar {final_alpha_bar!r}; use one of {', '.join(FINAL_ALPHA_BARS)}")
        if final_alpha_bar != "one" and method != "ddim":
            raise ValueError("final_alpha_bar='grid' is a DDIM setting; DDPM always ends on the clean sample")
        if eta < 0:
            raise ValueError(f"eta must be non-negative (0: deterministic DDIM), got {eta}")
        if isinstance(model, nn.Module) and model.training:
            raise ValueError("the model is in training mode (random label dropout); call model.eval() before sampling")
        if cfg_scale != 1.0 and null_label is None:
            null_label = getattr(getattr(model, "config", None), "num_classes", None)
            if null_label is None:
                raise ValueError("cfg_scale != 1 needs the null class id: pass null_label= (the model's num_classes)")
        if noise.ndim != 4 or labels.shape != (noise.shape[0],):
            raise ValueError(f"expected noise (B, C, h, w) and labels (B,), "
                             f"got {tuple(noise.shape)} and {tuple(labels.shape)}")
        spaced = self.respace(steps, grid)
        channels = noise.shape[1] if guided_channels is None else guided_channels
        if not 1 <= channels <= noise.shape[1]:
            raise ValueError(f"guided_channels must lie in [1, {noise.shape[1]}] (the latent channels), got {channels}")
        if final_alpha_bar == "grid":
            # the step before the first kept one is the schedule's step 0, not a clean sample
            spaced = copy.copy(spaced)  # a shallow copy: `self` (possibly returned by respace) keeps its table
            spaced.alphas_cumprod_prev = torch.cat([self.alphas_cumprod[:1], spaced.alphas_cumprod[:-1]])
        x = noise
        indices = range(spaced.num_timesteps - 1, -1, -1)
        if progress:
            from tqdm.auto import tqdm
            indices = tqdm(indices, desc=f"{method} sampling")
        step = spaced._ddpm_step if method == "ddpm" else spaced._ddim_step
        with torch.no_grad():
            for i in indices:
                t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
                output = guided(model, x, spaced.model_timesteps(t), labels, cfg_scale, null_label,
                                guided_channels=channels)
                x = step(output, x, t, i, eta=eta, clip_x0=clip_x0, generator=generator,
                         last_noise=final_alpha_bar == "grid")
        return x

    def _ddpm_step(self, output, x, t, i, *, eta, clip_x0, generator, last_noise=False) -> torch.Tensor:
        p = self.p_mean_variance(output, x, t, clip_x0)
        if i == 0:  # the last step returns the mean: no noise is added to the final sample
            return p["mean"]
        noise = randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        return p["mean"] + torch.exp(0.5 * p["log_variance"]) * noise

    def _ddim_step(self, output, x, t, i, *, eta, clip_x0, generator, last_noise=False) -> torch.Tensor:
        p = self.p_mean_variance(output, x, t, clip_x0)
        alpha_bar = self._gather(self.alphas_cumprod, t, x)
        alpha_bar_prev = self._gather(self.alphas_cumprod_prev, t, x)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        # clamp: at eta 1 the two terms cancel analytically and rounding must not make it negative
        eps_scale = (1 - alpha_bar_prev - sigma ** 2).clamp(min=0).sqrt()
        mean = p["pred_x0"] * alpha_bar_prev.sqrt() + eps_scale * p["eps"]
        # eta 0: deterministic, so no random numbers are drawn at all; the last step adds noise only
        # when it ends short of alpha_bar = 1 (final_alpha_bar "grid"), where sigma is not 0
        if eta == 0 or (i == 0 and not last_noise):
            return mean
        return mean + sigma * randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
