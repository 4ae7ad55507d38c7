"""Training a tokenizer: the GAN step on the shared loop, the paper's recipes, usage windows.

Only the encoder, decoder, the two 1x1 convs and the projector train (the LC codebook is a
frozen buffer). The tokenizer runs under DDP; the discriminator's gradients are averaged with
one flat all-reduce, which keeps its GAN start step and the generator's adaptive weight free
of DDP's once-per-forward bookkeeping.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import distributed
from ..data.datasets import build_dataset, collate_skip_corrupt
from ..files import atomic_write_json
from ..quantize.usage import UsageAccumulator
from ..train.config import TrainConfig, load_recipe, read_run_config
from ..distributed import DistEnv
from ..train.loop import StepContext, TrainingTask, TrainResult, run_training
from .config import CPU_QUANTIZER_LR_SCALE, TokenizerConfig, get_preset
from .losses import LossConfig, TokenizerLoss
from .model import VQModel


@dataclass
class TokenizerTrainConfig(TrainConfig):
    model: TokenizerConfig = field(default_factory=lambda: get_preset("vqgan-lc-tiny"))
    codebook: str | None = None        # k-means codebook file for kind="lc" (it sets N and C); None = Gaussian (ablation)
    loss: LossConfig = field(default_factory=LossConfig)
    image_size: int | None = None      # training crop size; default: the tokenizer's resolution
    usage_every: int = 50              # steps per window of the training-utilization curve
    betas: tuple[float, float] = (0.5, 0.9)  # VQGAN's Adam betas, for both players
    # Learning-rate multiplier for the quantizer's trained parameters (the LC projector; the VQ/FC
    # codebook). 1.0 is the paper's single rate. In short runs the encoder's latents grow several-fold
    # within ~100 steps while an Adam step moves each projector weight by at most ~lr, so the
    # projected codebook lags behind the latent cloud and most entries fall outside it
    # (docs/utilization.md measures this); the CPU recipes use CPU_QUANTIZER_LR_SCALE.
    quantizer_lr_scale: float = 1.0

    bookkeeping_fields = TrainConfig.bookkeeping_fields + ("usage_every",)

    @classmethod
    def resume_fields(cls) -> tuple[str, ...]:
        # the codebook's entries are saved in every checkpoint and restored from it, so a resumed
        # run may find the file at another path (a moved run folder)
        return super().resume_fields() + ("codebook",)

    def check(self) -> None:
        super().check()
        if self.codebook is not None and self.model.quantizer.kind != "lc":
            raise ValueError(f"a codebook file is used by LC tokenizers only, not kind={self.model.quantizer.kind!r}")
        if self.codebook is not None and not os.path.isfile(self.codebook):
            raise FileNotFoundError(f"codebook file {self.codebook} not found; build one with `vqgan-lc codebook build`")
        if self.image_size is not None and (self.image_size < 8 or self.image_size % self.model.autoencoder.downsample_factor):
            raise ValueError(f"image_size {self.image_size} must be a positive multiple of the downsampling factor "
                             f"{self.model.autoencoder.downsample_factor}")
        if self.usage_every < 1:
            raise ValueError(f"usage_every must be >= 1, got {self.usage_every}")
        if not self.quantizer_lr_scale > 0:
            raise ValueError(f"quantizer_lr_scale must be > 0, got {self.quantizer_lr_scale}")


def _paper(preset: str) -> TokenizerTrainConfig:
    # Paper: Adam (0.5, 0.9), lr 5e-4 (the released script uses 1e-4), 5 warm-up epochs then
    # half-cycle cosine, 20 epochs on ImageNet, GAN from step 50,000, LPIPS-VGG, L1 (script).
    # Global batch 256: the released script runs one process with batch 256; here 8 GPUs x 32.
    return TokenizerTrainConfig(model=get_preset(preset), codebook="codebooks/clip-vit-l14-imagenet-100k.safetensors",
                                data="imagenet/train", batch_size=32, lr=5e-4, epochs=20, warmup_epochs=5,
                                loss=LossConfig(perceptual="lpips-vgg", disc_start=50_000), precision="bf16",
                                num_workers=8, save_every=5000, image_every=2000, recipe_gpus=8)


def _cpu(preset: str) -> TokenizerTrainConfig:
    # Minutes on 2 CPU cores: 64 px demo crops, no GAN (it needs far more steps to help).
    return TokenizerTrainConfig(model=get_preset(preset), data="demo", batch_size=16, lr=1e-3, max_steps=300,
                                loss=LossConfig(disc_start=10**9), save_every=100, image_every=100,
                                log_every=10, usage_every=25, quantizer_lr_scale=CPU_QUANTIZER_LR_SCALE)


RECIPES: dict[str, Callable[[], TokenizerTrainConfig]] = {
    "paper-f16-100k": lambda: _paper("vqgan-lc-f16-100k"),
    "paper-f8-100k": lambda: _paper("vqgan-lc-f8-100k"),
    "cpu-tiny-lc": lambda: _cpu("vqgan-lc-tiny"),
    "cpu-tiny-vqgan": lambda: _cpu("vqgan-tiny"),
}


def get_recipe(name_or_path: str) -> TokenizerTrainConfig:
    """A recipe by name, or a JSON file holding a TokenizerTrainConfig (e.g. a run's train_config.json)."""
    return load_recipe(name_or_path, RECIPES, TokenizerTrainConfig)


class TokenizerTask(TrainingTask):
    """VQGAN training: reconstruction + perceptual + quantizer (+ adaptive GAN) for the
    tokenizer, hinge loss for the discriminator, each with its own Adam."""

    name = "tokenizer"
    collate = staticmethod(collate_skip_corrupt)

    def __init__(self, config: TokenizerTrainConfig):
        self.config = config
        self.loss: TokenizerLoss | None = None
        self.usage: UsageAccumulator | None = None
        self.usage_curve: list[dict] = []
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def build_model(self) -> VQModel:
        return VQModel(self.config.model, self.config.codebook)

    def build_dataset(self):
        size = self.config.image_size or self.config.model.autoencoder.resolution
        return build_dataset(self.config.data, size, train=True, seed=self.config.seed)

    def setup(self, env: DistEnv) -> None:
        # Built here, after the loop seeded the RNG, so the discriminator's initialisation is
        # the same in every run of this config (and on every rank).
        self.loss = TokenizerLoss(self.config.loss).to(env.device).train()  # perceptual net stays in eval mode

    def extra_modules(self):
        return {"discriminator": self.loss.discriminator}

    def build_optimizers(self, model: VQModel):
        cfg = self.config
        self.usage = UsageAccumulator(model.codebook_size, device=next(model.parameters()).device)
        # At the paper's single rate everything stays in one group (and one optimizer layout).
        quantizer = [p for p in model.quantizer.parameters() if p.requires_grad] if cfg.quantizer_lr_scale != 1.0 else []
        chosen = {id(p) for p in quantizer}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
        groups = [{"params": rest}]
        if quantizer:  # the loop multiplies the scheduled lr by a group's lr_scale
            groups.append({"params": quantizer, "lr": cfg.lr * cfg.quantizer_lr_scale,
                           "lr_scale": cfg.quantizer_lr_scale})
        adam = dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        return {"tokenizer": torch.optim.Adam(groups, **adam),
                "discriminator": torch.optim.Adam(self.loss.discriminator.parameters(), **adam)}

    def train_step(self, ctx: StepContext, batches: list) -> dict[str, float]:
        model, disc, optimizers = ctx.model, self.loss.discriminator, ctx.optimizers
        # tokenizer: reconstruction + perceptual + quantizer (+ adaptive-weighted GAN) loss
        disc.requires_grad_(False)
        pairs, logs_sum = [], {}
        for batch in batches:
            images = batch["image"].to(ctx.env.device, non_blocking=True)
            with ctx.autocast():
                out = ctx.module(images)
                loss, logs = self.loss.generator_loss(images, out.reconstruction.float(), out.quantizer.loss,
                                                      step=ctx.step, last_layer=model.last_layer)
            ctx.backward(loss, logs)
            self.usage.update(out.quantizer.indices)
            pairs.append((images, out.reconstruction.detach().float()))
            _accumulate(logs_sum, logs, len(batches))
        ctx.optimizer_step("tokenizer", optimizers["tokenizer"])

        # discriminator: hinge loss on the same real / reconstructed pairs, from disc_start on
        disc.requires_grad_(True)
        if self.loss.discriminator_active(ctx.step):
            for images, recon in pairs:
                with ctx.autocast():
                    d_loss, d_logs = self.loss.discriminator_loss(images, recon, step=ctx.step)
                ctx.backward(d_loss, d_logs)
                _accumulate(logs_sum, d_logs, len(batches))
            distributed.all_reduce_gradients(disc.parameters())
            ctx.optimizer_step("discriminator", optimizers["discriminator"])
        self._pairs = pairs[:1]
        return logs_sum

    def after_step(self, ctx: StepContext, logs: dict[str, float]) -> None:
        cfg, step = self.config, ctx.step
        if step % cfg.usage_every == 0 or step == ctx.total_steps:
            self.usage.all_reduce()
            stats = self.usage.stats()
            self.usage_curve.append({"step": step, "utilization": stats["utilization"],
                                     "num_tokens": stats["num_tokens"]})
            if ctx.writer is not None:
                ctx.writer.add_scalar("usage/utilization", stats["utilization"], step)
                ctx.writer.add_scalar("usage/perplexity", stats["perplexity"], step)
            self.usage.reset()
        if ctx.writer is not None and self._pairs and (step % cfg.image_every == 0 or step == ctx.total_steps):
            from ..data.grid import save_comparison_grid
            images, recon = self._pairs[0]
            grid = ctx.out_dir / "samples" / f"step_{step:07d}.png"
            save_comparison_grid(images[:8].cpu(), recon[:8].clamp(-1, 1).cpu(), grid, max_images=8)
            ctx.writer.add_images("reconstructions", ((torch.cat([images[:8], recon[:8]]).clamp(-1, 1) + 1) / 2).cpu(),
                                  step)

    def on_save(self, out_dir: Path) -> None:
        atomic_write_json(out_dir / "usage_curve.json", self.usage_curve, indent=None)

    def state_dict(self):
        return {"usage_curve": self.usage_curve}

    def load_state_dict(self, state):
        self.usage_curve = list(state.get("usage_curve", []))


def _accumulate(total: dict[str, float], logs: dict, parts: int) -> None:
    for k, v in logs.items():
        total[k] = total.get(k, 0.0) + float(v) / parts


def train_tokenizer(config: TokenizerTrainConfig, *, resume: str | os.PathLike | None = None,
                    stop_at_step: int | None = None, progress: bool = True) -> TrainResult:
    """Train a tokenizer; `resume` continues a run folder; `stop_at_step` checkpoints and returns early."""
    return run_training(TokenizerTask(config), resume=resume, stop_at_step=stop_at_step, progress=progress)


def read_train_config(run_dir: str | os.PathLike) -> TokenizerTrainConfig:
    return read_run_config(run_dir, TokenizerTrainConfig, "training run")
