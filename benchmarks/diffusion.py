"""Continuous-latent samplers: batched classifier-free guidance, and the adaptive SiT ODE's cost and accuracy.

    python benchmarks/diffusion.py [--json] [--device cpu|cuda|auto] [--threads 1] [--quick]

1. CFG batching: a dit-tiny DiT (8 latent channels, 16x16 latents, 1,000 classes, learned
   sigma) takes one guided sampling step for `--batch` samples two ways, side by side in one
   run: one forward of the doubled batch [cond; null] as `guidance.guided` does, and two
   forwards of the plain batch. Both combine uncond + s * (cond - uncond) the same way; the
   run also checks they agree. `cfg_batched_speedup` = time of two forwards / time of one
   doubled forward (median of interleaved repeats). The same ratio is given at smaller
   batches, where per-operator overhead is a larger share of a forward. Batching saves
   per-operator and per-launch overhead only; on one CPU thread a dit-tiny forward at batch
   16 is nearly all matmul and elementwise work that grows linearly with the batch, and the
   doubled batch's MLP activations (2,048 tokens x 512 features, 4 MiB) no longer fit in
   cache, so there the ratio was measured below 1 (0.8-0.9x on a shared 2-core machine).
2. The SiT ODE: the adaptive dopri5 sampler of `Transport.sample` at its default tolerances
   (atol 1e-6, rtol 1e-3), run on an analytic velocity field instead of a trained network,
   so the exact answer is known. Data: every one of the 4x4 positions of an 8-channel latent
   independently takes one of `--entries` random 8-d codebook entries (uniform) plus
   isotropic Gaussian noise of std `--spread`: latents clustered around codebook entries,
   as a tokenizer's continuous latents are. For the linear interpolant from N(0, I) the
   velocity E[x - eps | x_t] of this mixture has a closed form (see `CodebookMixture`), so
   no training is involved and nothing here is a model's error.
   Measured on the same noise: dopri5's function evaluations (`ode_nfe`, one batched
   evaluation each, as in `vqgan-lc sample`), then Heun with steps = NFE / 2 (the same
   number of evaluations). Scores, each against the known data distribution:
   - `*_fd`: Frechet distance of the 8-d latent vectors (all positions of all samples
     pooled) to the mixture's exact mean and covariance ("fd_latent": no feature network,
     nothing to do with FD-lite0 or FID). `exact_draw_fd` is the same statistic for exact
     draws of the mixture: what finite sampling alone gives.
   - `*_endpoint_rmse`: RMS distance to the ODE's own converged solution from the same
     noise (dopri5 at rtol 1e-7, float64): the integration error itself.
   - `*_snap_residual`: RMS distance (per channel) from each latent vector to its nearest
     codebook entry (what snapping removes); exact samples give `--spread`.
   FD is a moment statistic: a mixture's covariance is dominated by the spread between
   entries, so errors that only move samples within their cluster barely change it. The
   endpoint error is the one score here that tells samplers apart; read the three together.

CPU runs use `--threads` intra-op threads (default 1) for every measurement alike.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from vqgan_lc.distributed import resolve_device  # noqa: E402
from vqgan_lc.evaluate.frechet import frechet_distance  # noqa: E402
from vqgan_lc.generate.dit import DiT, dit_config  # noqa: E402
from vqgan_lc.generate.guidance import guided  # noqa: E402
from vqgan_lc.generate.transport import Transport  # noqa: E402

NUM_CLASSES = 1000
REFERENCE_TOLERANCE = dict(atol=1e-9, rtol=1e-7)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- CFG batching

def _tiny_dit(device: torch.device, channels: int, size: int) -> DiT:
    torch.manual_seed(0)
    model = DiT(dit_config("dit-tiny", in_channels=channels, input_size=size, num_classes=NUM_CLASSES))
    # adaLN-Zero starts every gate and the output layer at zero, so a fresh DiT outputs zeros
    # and the two paths would agree trivially; small random weights make the check mean something
    # (the cost of a forward does not depend on the values).
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    return model.to(device).eval()


def _seconds(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def cfg_batching(args, device: torch.device) -> dict:
    model = _tiny_dit(device, args.channels, args.size)
    scale, null = 4.0, NUM_CLASSES
    result: dict = {"cfg_model": "dit-tiny (depth 4, width 128, patch 2, learned sigma)", "cfg_speedup_target": 1.3,
                    "cfg_latent_shape": [args.channels, args.size, args.size], "cfg_scale": scale}
    by_batch = {}
    for batch in sorted({1, 4, args.batch}):
        generator = torch.Generator(device=device).manual_seed(batch)
        x = torch.randn(batch, args.channels, args.size, args.size, device=device, generator=generator)
        t = torch.full((batch,), 500.0, device=device)
        y = torch.randint(0, NUM_CLASSES, (batch,), device=device, generator=generator)

        def batched():
            return guided(model, x, t, y, scale, null, guided_channels=args.channels)

        def separate():
            cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, null))
            c = args.channels
            mixed = uncond[:, :c] + scale * (cond[:, :c] - uncond[:, :c])
            return torch.cat([mixed, cond[:, c:]], dim=1)

        agree = (batched() - separate()).abs().max().item()   # also the warm-up of both paths
        one, two = [], []
        # Interleaved, so that load from other processes on a shared machine hits both alike.
        for _ in range(args.cfg_repeats):
            one.append(_seconds(batched, device))
            two.append(_seconds(separate, device))
        t_one, t_two = statistics.median(one), statistics.median(two)
        by_batch[batch] = {"batched_ms": 1e3 * t_one, "separate_ms": 1e3 * t_two, "speedup": t_two / t_one,
                           "max_abs_difference": agree}
    main = by_batch[args.batch]
    result.update({"cfg_batch": args.batch, "cfg_batched_step_ms": main["batched_ms"],
                   "cfg_separate_step_ms": main["separate_ms"], "cfg_batched_speedup": main["speedup"],
                   "cfg_paths_max_abs_difference": max(r["max_abs_difference"] for r in by_batch.values()),
                   "cfg_speedup_by_batch": {str(b): r["speedup"] for b, r in by_batch.items()}})
    return result


# --------------------------------------------------------------------------- the SiT ODE

class CodebookMixture:
    """Latents (B, C, H, W) whose every position is an independent draw entry_k + spread * z,
    k uniform over `entries` (K, C), z ~ N(0, I_C); with the exact velocity of SiT's linear path.

    With x_t = t * x1 + (1 - t) * eps, given entry k the point x_t is N(t * m_k, var_t * I),
    var_t = (1 - t)^2 + t^2 * spread^2, and E[x1 - eps | x_t, k] = m_k + a_t * (x_t - t * m_k)
    with a_t = (t * spread^2 - (1 - t)) / var_t. Averaging over the posterior of k (a softmax of
    (t * <x_t, m_k> - t^2 |m_k|^2 / 2) / var_t, the spread being shared) gives
    v(x_t, t) = a_t * x_t + (1 - a_t * t) * E[m_k | x_t]. Positions are independent, so the
    field acts on each position's C-vector separately.
    """

    def __init__(self, entries: torch.Tensor, spread: float, grid: int):
        self.entries, self.spread, self.grid = entries, float(spread), grid
        self.sq_norms = (entries ** 2).sum(1)
        self.nfe = 0

    @property
    def channels(self) -> int:
        return self.entries.shape[1]

    def vectors(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B * H * W, C): the latent vector of every position."""
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The velocity model interface of Transport: t (B,) in [0, 1]; labels are ignored
        # (the mixture is unconditional) and cfg_scale stays 1.
        self.nfe += 1
        s = float(t.reshape(-1)[0])
        entries = self.entries.to(x.dtype)
        v = self.vectors(x)
        var = (1.0 - s) ** 2 + s * s * self.spread ** 2
        logits = (s * (v @ entries.T) - 0.5 * s * s * self.sq_norms.to(x.dtype)) / var
        posterior_mean = torch.softmax(logits, dim=1) @ entries
        a = (s * self.spread ** 2 - (1.0 - s)) / var
        out = a * v + (1.0 - a * s) * posterior_mean
        b, c, h, w = x.shape
        return out.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean and covariance of one position's C-vector."""
        e = self.entries.double()
        mean = e.mean(0)
        cov = e.T @ e / len(e) - torch.outer(mean, mean) + self.spread ** 2 * torch.eye(e.shape[1], dtype=e.dtype)
        return mean, cov

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.randint(0, len(self.entries), (n, self.grid, self.grid), generator=generator)
        z = torch.randn(n, self.grid, self.grid, self.channels, generator=generator, dtype=self.entries.dtype)
        return (self.entries[k] + self.spread * z).permute(0, 3, 1, 2)

    def fd_latent(self, x: torch.Tensor) -> float:
        v = self.vectors(x).double()
        mean, cov = self.moments()
        return frechet_distance(v.mean(0), torch.cov(v.T), mean, cov, method="eigh")

    def snap_residual(self, x: torch.Tensor) -> float:
        v = self.vectors(x).double()
        nearest = torch.cdist(v, self.entries.double()).min(dim=1).values
        return float((nearest.pow(2).mean() / self.channels).sqrt())


def ode_accuracy(args) -> dict:
    """Runs on the CPU: the analytic field is a handful of small matmuls."""
    generator = torch.Generator().manual_seed(0)
    entries = torch.randn(args.entries, args.channels, generator=generator, dtype=torch.float64)
    field = CodebookMixture(entries, args.spread, args.ode_grid)
    noise = torch.randn(args.ode_samples, args.channels, args.ode_grid, args.ode_grid, generator=generator,
                        dtype=torch.float64)
    labels = torch.zeros(args.ode_samples, dtype=torch.long)
    transport = Transport()

    def run(method: str, dtype: torch.dtype, **kw):
        field.nfe = 0
        start = time.perf_counter()
        x, info = transport.sample(field, noise.to(dtype), labels, null_label=1, method=method, **kw)
        return x.double(), info["nfe"], time.perf_counter() - start

    # Samplers run in float32, as sampling a real model does; the reference in float64.
    reference, ref_nfe, _ = run("dopri5", torch.float64, **REFERENCE_TOLERANCE)
    ode, nfe, ode_seconds = run("dopri5", torch.float32)
    heun_steps = max(1, round(nfe / 2))
    heun, heun_nfe, heun_seconds = run("heun", torch.float32, steps=heun_steps)
    exact = field.draw(args.ode_samples, generator)

    def rmse(x):
        return float((x - reference).pow(2).mean().sqrt())

    return {
        "what": (f"SiT sampler on an analytic velocity field: {args.ode_samples} latents of shape "
                 f"({args.channels}, {args.ode_grid}, {args.ode_grid}), each position an independent draw of one of "
                 f"{args.entries} random {args.channels}-d codebook entries plus N(0, {args.spread}^2 I); "
                 "fd = fd_latent, the Frechet distance of the pooled per-position latent vectors to the "
                 "mixture's exact moments (no feature network); endpoint_rmse against dopri5 at rtol 1e-7 "
                 "from the same noise; snap_residual = RMS per-channel distance to the nearest entry"),
        "fd_metric": "fd_latent",
        "ode_method": "dopri5", "ode_atol": 1e-6, "ode_rtol": 1e-3,
        "ode_nfe": nfe, "ode_fd": field.fd_latent(ode), "ode_endpoint_rmse": rmse(ode),
        "ode_snap_residual": field.snap_residual(ode), "ode_seconds": ode_seconds,
        "heun_steps": heun_steps, "heun_nfe": heun_nfe, "heun_fd_same_nfe": field.fd_latent(heun),
        "heun_endpoint_rmse": rmse(heun), "heun_snap_residual": field.snap_residual(heun),
        "heun_seconds": heun_seconds,
        "reference_nfe": ref_nfe, "reference_fd": field.fd_latent(reference),
        "reference_snap_residual": field.snap_residual(reference),
        "exact_draw_fd": field.fd_latent(exact), "exact_snap_residual": field.snap_residual(exact),
        "spread": args.spread, "entries": args.entries, "ode_samples": args.ode_samples,
    }


# --------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print only one JSON object on stdout (progress on stderr)")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda, cuda:N or auto, for the CFG timing (the analytic ODE always runs on the CPU)")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and samples (a smoke run)")
    parser.add_argument("--batch", type=int, default=16, help="samples per guided step in the CFG timing")
    parser.add_argument("--channels", type=int, default=8, help="latent channels D'")
    parser.add_argument("--size", type=int, default=16, help="latent side in the CFG timing")
    parser.add_argument("--cfg-repeats", type=int, default=7, help="timed repeats of each CFG path")
    parser.add_argument("--ode-samples", type=int, default=2048, help="latents drawn by each ODE sampler")
    parser.add_argument("--ode-grid", type=int, default=4, help="latent side in the ODE test")
    parser.add_argument("--entries", type=int, default=64, help="codebook entries of the analytic mixture")
    parser.add_argument("--spread", type=float, default=0.05, help="std of the data around each entry")
    args = parser.parse_args()
    if args.quick:
        args.cfg_repeats, args.ode_samples = 3, 256
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    say(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    cfg = cfg_batching(args, device)
    say(f"guided step, dit-tiny on {args.channels}x{args.size}x{args.size} latents, cfg scale {cfg['cfg_scale']}:")
    for b, speedup in cfg["cfg_speedup_by_batch"].items():
        say(f"  batch {b:>3}: one doubled forward vs two forwards: {speedup:5.2f}x")
    say(f"  batch {args.batch}: {cfg['cfg_batched_step_ms']:.1f} ms batched, {cfg['cfg_separate_step_ms']:.1f} ms "
        f"separate -> cfg_batched_speedup {cfg['cfg_batched_speedup']:.2f}x (target >= {cfg['cfg_speedup_target']}) "
        f"(paths agree to {cfg['cfg_paths_max_abs_difference']:.1e})")

    ode = ode_accuracy(args)
    say(f"SiT ODE on an analytic codebook mixture ({ode['ode_samples']} latents {args.channels}x{args.ode_grid}x"
        f"{args.ode_grid}, {ode['entries']} entries, spread {ode['spread']}):\n"
        f"  {'sampler':<26}{'NFE':>5}{'fd_latent':>12}{'endpoint RMSE':>15}{'snap residual':>15}\n"
        f"  {'dopri5 atol 1e-6 rtol 1e-3':<26}{ode['ode_nfe']:>5}{ode['ode_fd']:>12.5f}"
        f"{ode['ode_endpoint_rmse']:>15.5f}"
        f"{ode['ode_snap_residual']:>15.5f}\n"
        f"  {'heun, ' + str(ode['heun_steps']) + ' steps':<26}{ode['heun_nfe']:>5}{ode['heun_fd_same_nfe']:>12.5f}"
        f"{ode['heun_endpoint_rmse']:>15.5f}{ode['heun_snap_residual']:>15.5f}\n"
        f"  {'converged ODE (rtol 1e-7)':<26}{ode['reference_nfe']:>5}{ode['reference_fd']:>12.5f}{0.0:>15.5f}"
        f"{ode['reference_snap_residual']:>15.5f}\n"
        f"  {'exact draws of the data':<26}{'-':>5}{ode['exact_draw_fd']:>12.5f}{'-':>15}"
        f"{ode['exact_snap_residual']:>15.5f}")

    if args.json:
        summary = {"device": str(device), "threads": torch.get_num_threads(), **cfg, **ode}
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
