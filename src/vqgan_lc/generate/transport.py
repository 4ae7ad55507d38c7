"""SiT's stochastic interpolant: a straight path from Gaussian noise to data, trained by velocity regression.

Time runs from noise to data (SiT's "Linear" path, alpha_t = t, sigma_t = 1 - t):

    x_t = (1 - t) * eps + t * x,      eps ~ N(0, I),   t in [0, 1]
    t = 0: pure noise,  t = 1: data;  velocity  d x_t / dt = x - eps

Training regresses the velocity (MSE). Sampling starts from noise at t = 0 and integrates
dx/dt = v(x, t) up to t = 1: as an ODE (adaptive dopri5 through torchdiffeq, or fixed-step
Heun / Euler written here) or as an SDE with the same marginals (Euler-Maruyama).

The model is any callable `model(x, t, y) -> velocity` with x (B, ...) a latent batch,
t a (B,) float tensor in [0, 1] (x's dtype and device) and y (B,) int64 class ids, where
`null_label` is the unconditional class. Whatever timestep scaling the backbone needs
(a sinusoidal embedding tuned to integer steps wants t * 1000) is the backbone's business:
this module always passes t in [0, 1]. The velocity has x's shape, so a DiT backbone is
built with `learn_sigma=False`. Classifier-free guidance goes through `guidance.guided`,
on every channel unless `guided_channels` names how many leading ones (the reference SiT-LC: 3).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torchdiffeq import odeint

from .guidance import guided
from .noise import randn

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

METHODS = ("dopri5", "heun", "euler", "sde")


def _per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) so that a time per sample broadcasts over x."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


class _Velocity:
    """The guided velocity field v(x, t) of one sampling run, counting its evaluations.

    One evaluation is one batched model forward (with CFG, the conditional and unconditional
    halves share it), so `nfe` is exactly what a sampler costs in forwards.
    """

    def __init__(self, model: Model, labels: torch.Tensor, cfg_scale: float, null_label: int,
                 guided_channels: int | None = None):
        self.model, self.labels, self.cfg_scale, self.null_label = model, labels, cfg_scale, null_label
        self.guided_channels = guided_channels
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        # torchdiffeq hands a 0-d tensor, the fixed-step loops a float: either way one time per sample.
        t_batch = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(1).repeat(x.shape[0])
        v = guided(self.model, x, t_batch, self.labels, self.cfg_scale, self.null_label, self.guided_channels)
        if v.shape != x.shape:
            raise ValueError(f"the model returned shape {tuple(v.shape)} for x of shape {tuple(x.shape)}; a velocity "
                             "model keeps x's shape (build a DiT backbone with learn_sigma=False)")
        return v


class Transport:
    """Linear interpolant between N(0, I) (t = 0) and data (t = 1), with velocity prediction.

    `train_eps`: training times are drawn uniformly from [train_eps, 1 - train_eps], keeping
    the exact endpoints (where one side of the path vanishes) out of the loss.
    `diffusion_norm`: scale of the SDE sampler's diffusion, w(t) = diffusion_norm * (1 - t).
    """

    def __init__(self, train_eps: float = 1e-5, diffusion_norm: float = 1.0):
        if not 0.0 <= train_eps < 0.5:
            raise ValueError(f"train_eps must be in [0, 0.5), got {train_eps}; use a small value such as 1e-5")
        if diffusion_norm < 0.0:
            raise ValueError(f"diffusion_norm must be >= 0 (0 turns the SDE sampler into Euler), "
                             f"got {diffusion_norm}")
        self.train_eps = float(train_eps)
        self.diffusion_norm = float(diffusion_norm)

    def __repr__(self) -> str:
        return f"Transport(train_eps={self.train_eps}, diffusion_norm={self.diffusion_norm})"

    @staticmethod
    def interpolate(x_data: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, velocity) at times t (B,): x_t = (1 - t) * noise + t * x_data, velocity = x_data - noise."""
        tb = _per_sample(t, x_data)
        return (1.0 - tb) * noise + tb * x_data, x_data - noise

    def training_loss(self, model: Model, x_data: torch.Tensor, labels: torch.Tensor,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """MSE between model(x_t, t, labels) and the path's velocity, t ~ U[train_eps, 1 - train_eps].

        Label dropout for CFG is the model's own business (it knows its null class).
        `generator` (on x_data's device) makes the noise and times reproducible.
        """
        if labels.shape != (x_data.shape[0],):
            raise ValueError(f"labels must have shape ({x_data.shape[0]},) to match x_data, got {tuple(labels.shape)}")
        batch = x_data.shape[0]
        noise = torch.randn(x_data.shape, generator=generator, dtype=x_data.dtype, device=x_data.device)
        u = torch.rand(batch, generator=generator, dtype=x_data.dtype, device=x_data.device)
        t = self.train_eps + (1.0 - 2.0 * self.train_eps) * u
        x_t, target = self.interpolate(x_data, noise, t)
        prediction = model(x_t, t, labels)
        if prediction.shape != target.shape:
            raise ValueError(f"the model returned shape {tuple(prediction.shape)} for x of shape {tuple(x_t.shape)}; a "
                             "velocity model keeps x's shape (build a DiT backbone with learn_sigma=False)")
        loss = torch.mean((prediction.float() - target.float()) ** 2)
        return loss, {"loss": loss.item()}

    @torch.no_grad()
    def sample(self, model: Model, noise: torch.Tensor, labels: torch.Tensor, *, cfg_scale: float = 1.0,
               null_label: int, method: str = "dopri5", steps: int = 50, atol: float = 1e-6, rtol: float = 1e-3,
               generator: torch.Generator | None = None,
               guided_channels: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Carry `noise` (t = 0) to data (t = 1) under the guided velocity; returns (x, info).

        method:
          "dopri5" adaptive Dormand-Prince through torchdiffeq, tolerances `atol` / `rtol`
                   (defaults 1e-6 / 1e-3, SiT's); `steps` is ignored.
          "heun"   fixed-step 2nd order on a uniform grid of `steps` intervals: 2 * steps
                   evaluations (predictor and corrector in every interval, the last included).
          "euler"  fixed-step 1st order: `steps` evaluations.
          "sde"    Euler-Maruyama, `steps` evaluations, noise from `generator`; see `_sde`.
        `guided_channels`: guidance on the first this many velocity channels only, the rest
        from the conditional pass (None: all; the reference SiT-LC guides 3).
        info: "nfe" (model evaluations; one batched forward each, CFG included), "method",
        "steps" (None for dopri5).
        """
        if method not in METHODS:
            raise ValueError(f"unknown sampling method {method!r}; choose one of {', '.join(METHODS)}")
        if method != "dopri5" and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps must be a positive integer for method {method!r}, got {steps!r}")
        if labels.shape != (noise.shape[0],):
            raise ValueError(f"labels must have shape ({noise.shape[0]},) to match noise, got {tuple(labels.shape)}")
        velocity = _Velocity(model, labels, cfg_scale, null_label, guided_channels)
        if method == "dopri5":
            if atol <= 0 or rtol <= 0:
                raise ValueError(f"atol and rtol must be > 0 for dopri5, got atol={atol}, rtol={rtol}")
            span = torch.tensor([0.0, 1.0], dtype=noise.dtype, device=noise.device)
            x = odeint(lambda t, x: velocity(x, t), noise, span, method="dopri5", atol=atol, rtol=rtol)[-1]
        elif method == "heun":
            x = self._heun(velocity, noise, steps)
        elif method == "euler":
            x = self._euler(velocity, noise, steps)
        else:
            x = self._sde(velocity, noise, steps, generator)
        return x, {"nfe": velocity.nfe, "method": method, "steps": None if method == "dopri5" else steps}

    @staticmethod
    def _euler(velocity: _Velocity, x: torch.Tensor, steps: int) -> torch.Tensor:
        h = 1.0 / steps
        for i in range(steps):
            x = x + h * velocity(x, i * h)
        return x

    @staticmethod
    def _heun(velocity: _Velocity, x: torch.Tensor, steps: int) -> torch.Tensor:
        # Unlike EDM's sampler nothing is singular at t = 1 here, so the last interval is
        # corrected like the others: exactly 2 * steps evaluations.
        h = 1.0 / steps
        for i in range(steps):
            t0, t1 = i * h, (i + 1) * h
            v0 = velocity(x, t0)
            v1 = velocity(x + h * v0, t1)
            x = x + 0.5 * h * (v0 + v1)
        return x

    def _sde(self, velocity: _Velocity, x: torch.Tensor, steps: int,
             generator: torch.Generator | None) -> torch.Tensor:
        """Euler-Maruyama on an SDE with the ODE's marginals.

        For this path E[eps | x_t] = x_t - t * v, so the score is s = (t * v - x) / (1 - t).
        Any diffusion w(t) >= 0 keeps the marginals of dx = [v + w/2 * s] dt + sqrt(w) dW;
        we take SiT's "sigma" form w(t) = diffusion_norm * sigma_t = diffusion_norm * (1 - t),
        whose (1 - t) cancels the score's: the drift v + diffusion_norm/2 * (t * v - x) stays
        finite at t = 1 and the noise fades out as the data end nears. The last step adds no
        noise (it would not be denoised again).
        """
        h = 1.0 / steps
        for i in range(steps):
            t = i * h
            v = velocity(x, t)
            x = x + h * (v + 0.5 * self.diffusion_norm * (t * v - x))
            if i < steps - 1:
                z = randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                x = x + (self.diffusion_norm * (1.0 - t) * h) ** 0.5 * z
        return x
