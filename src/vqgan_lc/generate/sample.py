"""Sampling a trained generator run into images: `vqgan-lc sample RUN --classes 0,1 --per-class K --out DIR`.

GPT samples token ids (KV cache, temperature, top-k = 10% of the vocabulary by default, top-p,
classifier-free guidance); DiT/LDM sample latents by DDPM or DDIM, SiT by its ODE (dopri5 or
Heun) or SDE sampler; latents are snapped to the nearest projected codebook entries (or, with
`snap=False`, decoded as they are). The tokenizer named by the run's cache decodes everything.

Written to OUT: `<class>/<NNNN>.png` per sample, `grid.png` (one row per class), `tokens.npy`
((n, h*w) int32 ids of every sample, for utilization), `labels.npy`, and `report.json`
(settings, codebook_size, utilization of the generated tokens).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..config import Config
from ..files import atomic_save_npy, atomic_path

SAMPLERS = {"dit": ("ddpm", "ddim"), "ldm": ("ddim", "ddpm"), "sit": ("dopri5", "heun", "euler", "sde"), "gpt": ("ar",)}
DEFAULT_STEPS = {"ddpm": 250, "ddim": 200, "heun": 50, "euler": 100, "sde": 100, "dopri5": 0, "ar": 0}


@dataclass
class SampleConfig(Config):
    run: str = ""                      # generator run folder (train-gen --out)
    out: str = ""
    classes: tuple[int, ...] = ()      # class ids to sample; empty = every class
    per_class: int = 4
    cfg_scale: float = 1.0             # classifier-free guidance (1.0: conditional only)
    temperature: float = 1.0           # gpt
    top_k: int | None = None           # gpt; None = 10% of the vocabulary (the paper), 0 = off
    top_p: float | None = None         # gpt
    method: str | None = None          # dit/ldm: ddpm | ddim; sit: dopri5 | heun | euler | sde; None = family default
    steps: int | None = None           # sampling steps (None: 250 DDPM, 200 DDIM, 50 Heun, adaptive dopri5)
    snap: bool = True                  # latents -> nearest codebook entries before decoding (the paper)
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        if not self.run or not self.out:
            raise ValueError("sample needs the run folder and --out")
        if self.per_class < 1 or self.batch_size < 1:
            raise ValueError(f"per_class and batch_size must be >= 1, got {self.per_class}, {self.batch_size}")
        if self.cfg_scale < 0 or self.temperature < 0:
            raise ValueError(f"cfg_scale and temperature must be >= 0, got {self.cfg_scale}, {self.temperature}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if any(c < 0 for c in self.classes):
            raise ValueError(f"class ids must be >= 0, got {self.classes}")


def load_run(run: str | Path, device: torch.device):
    """(train config, generator in eval mode, tokenizer in eval mode, cache header) of a run folder."""
    from ..pretrained import load_pretrained
    from ..tokenizer.model import VQModel
    from .cache import open_cache
    from .training import EXPORT_NAME, read_generator_run

    config = read_generator_run(run)
    generator = load_pretrained(Path(run) / EXPORT_NAME).to(device).eval()
    header = open_cache(config.data).header
    tokenizer = VQModel.from_pretrained(header["tokenizer"]).to(device).eval()
    return config, generator, tokenizer, header


@torch.no_grad()
def sample_run(config: SampleConfig) -> dict:
    """Sample, decode and write everything listed in the module doc; returns the report."""
    from ..evaluate.evaluator import write_report
    from ..data.grid import save_grid
    from ..files import check_writable_dir
    from ..quantize.usage import UsageAccumulator
    from .training import family_of

    config.validate()
    out = check_writable_dir(config.out, "samples folder")
    env = distributed.init(config.device)
    train_cfg, generator, tokenizer, header = load_run(config.run, env.device)
    family = family_of(train_cfg.generator)
    num_classes = generator.config.num_classes
    classes = list(config.classes) or list(range(num_classes))
    if max(classes) >= num_classes:
        raise ValueError(f"class {max(classes)} does not exist: the generator knows classes 0..{num_classes - 1}")
    method = config.method or SAMPLERS[family][0]
    if method not in SAMPLERS[family]:
        raise ValueError(f"{family} samples with {' | '.join(SAMPLERS[family])}, not {method!r}")
    steps = config.steps or DEFAULT_STEPS[method]
    h, w = header["grid"]

    labels = torch.tensor([c for c in classes for _ in range(config.per_class)], device=env.device)
    generator_rng = torch.Generator(device=env.device).manual_seed(config.seed)
    tokens, images, nfe, started = [], [], [], time.perf_counter()
    for start in range(0, len(labels), config.batch_size):
        y = labels[start:start + config.batch_size]
        if family == "gpt":
            ids = generator.generate(y, temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                                     cfg_scale=config.cfg_scale, generator=generator_rng)
            grid_ids = ids.view(-1, h, w)
            pictures = tokenizer.decode_indices(grid_ids)
        else:
            latents, used = _sample_latents(family, generator, train_cfg, y, (header["latent_dim"], h, w), method,
                                            steps, config.cfg_scale, generator_rng)
            nfe.append(used)  # network evaluations of this batch (each a forward of the whole batch)
            snapped = tokenizer.snap_latents(latents)
            grid_ids = snapped.indices
            pictures = tokenizer.decode(snapped.quantized if config.snap else latents)
        tokens.append(grid_ids.reshape(len(y), -1).to(torch.int32).cpu())
        images.append(pictures.clamp(-1, 1).cpu())
    seconds = time.perf_counter() - started
    tokens_all, images_all = torch.cat(tokens), torch.cat(images)

    width = max(4, len(str(config.per_class)))
    for i, (label, picture) in enumerate(zip(labels.tolist(), images_all)):
        _save_png(picture, out / str(label) / f"{i % config.per_class:0{width}d}.png")
    save_grid(images_all, out / "grid.png", nrow=config.per_class)
    atomic_save_npy(out / "tokens.npy", tokens_all.numpy())
    atomic_save_npy(out / "labels.npy", labels.cpu().numpy().astype(np.int64))
    usage = UsageAccumulator(tokenizer.num_codes)
    usage.update(tokens_all.long())
    stats = usage.stats()
    report = {
        "generator": train_cfg.generator, "run": str(config.run), "num_samples": len(labels), "classes": classes,
        "per_class": config.per_class, "guidance_scale": config.cfg_scale, "method": method,
        "steps": steps if family != "gpt" and method != "dopri5" else None,
        "mean_nfe": float(np.mean(nfe)) if nfe else None,
        "snapped": config.snap if family != "gpt" else True, "temperature": config.temperature if family == "gpt" else None,
        "top_k": config.top_k if family == "gpt" else None, "top_p": config.top_p if family == "gpt" else None,
        "seed": config.seed, "codebook_size": tokenizer.num_codes, "utilization": stats["utilization"],
        "num_used": stats["num_used"], "num_tokens": stats["num_tokens"],
        "tokens_per_entry": stats["num_tokens"] / tokenizer.num_codes, "seconds": round(seconds, 2),
        "protocol": {"utilization": "distinct codebook entries among all generated tokens of this folder / codebook_size "
                                    "(for LDM/DiT/SiT: the entries the sampled latents snap to)"},
    }
    write_report(report, out / "report.json")
    return report


def _sample_latents(family, model, train_cfg, labels, shape, method, steps, cfg_scale, rng) -> tuple[torch.Tensor, int]:
    """Latents (B, D', h, w) in the tokenizer's scale, and the number of network evaluations."""
    from .training import SiTBackbone, build_process

    process = build_process(train_cfg)
    null = model.config.num_classes
    noise = torch.randn((len(labels), *shape), generator=rng, device=labels.device)
    if family == "sit":
        x, info = process.sample(SiTBackbone(model).eval(), noise, labels, cfg_scale=cfg_scale, null_label=null,
                                 method=method, steps=steps, generator=rng)
        used = int(info["nfe"])
    else:
        x = process.sample(model, noise, labels, cfg_scale=cfg_scale, null_label=null, method=method, steps=steps,
                           generator=rng)
        used = steps
    return x / train_cfg.latent_scale, used


def _save_png(image: torch.Tensor, path: Path) -> None:
    from ..data import from_tensor
    with atomic_path(path) as tmp:
        from_tensor(image).save(tmp, format="PNG")
