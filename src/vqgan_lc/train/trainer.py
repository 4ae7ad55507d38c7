"""The tokenizer training loop: one process or many under `torchrun`.

Only the encoder, decoder, the two 1x1 convs and the projector train (the LC codebook is a
frozen buffer). The generator model runs under DistributedDataParallel; the discriminator's
gradients are averaged with one flat all-reduce, which keeps its GAN start step and the
generator's adaptive weight free of DDP's once-per-forward bookkeeping.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from ..data.datasets import build_dataset, collate_skip_corrupt
from ..quantize.usage import UsageAccumulator
from ..tokenizer.checkpoint import read_config
from ..tokenizer.config import TokenizerConfig, get_preset
from ..tokenizer.losses import TokenizerLoss
from ..tokenizer.model import VQModel
from .config import TrainConfig, apply_overrides
from .distributed import DistEnv, all_reduce_mean, barrier, init_distributed
from .schedule import lr_at
from .state import STATE_NAME, atomic_torch_save, load_train_state, rng_state, set_rng_state

log = logging.getLogger("vqgan_lc.train")


# --- helpers ---------------------------------------------------------------------------------------

class EpochSampler(Sampler[list[int]]):
    """Batches of a seeded per-epoch permutation, sharded over ranks, resumable mid-epoch.

    Every rank gets the same number of batches (the tail that does not divide evenly is dropped),
    so DDP never waits on a rank that ran out of data.
    """

    def __init__(self, size: int, batch_size: int, env: DistEnv, seed: int):
        self.size, self.batch_size, self.env, self.seed = size, batch_size, env, seed
        self.epoch, self.start_batch = 0, 0
        self.batches_per_epoch = size // env.world_size // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{size} images cannot fill one batch of {batch_size} on each of {env.world_size} processes")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=g)[self.env.rank::self.env.world_size].tolist()
        for b in range(self.start_batch, self.batches_per_epoch):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]


def resolve_tokenizer_config(name_or_path: str) -> TokenizerConfig:
    path = Path(name_or_path)
    if path.is_dir() or path.suffix == ".json":
        return read_config(path if path.is_dir() else path.parent)
    return get_preset(name_or_path)


def build_model(config: TrainConfig) -> VQModel:
    tok = resolve_tokenizer_config(config.tokenizer)
    apply_overrides(tok, config.tokenizer_overrides)
    codebook = None
    if config.codebook:
        if tok.quantizer.kind != "lc":
            raise ValueError(f"a codebook file is used by LC tokenizers only, not kind={tok.quantizer.kind!r}")
        from ..codebook import load_codebook
        codebook = load_codebook(config.codebook).vectors
        # The file decides the codebook's size and width; the projector adapts to it.
        tok.quantizer.codebook_size, tok.quantizer.codebook_dim = map(int, codebook.shape)
    return VQModel(tok, codebook)


def _average_gradients(params, world_size: int) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if world_size <= 1 or not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


@dataclass
class TrainResult:
    model: VQModel
    out_dir: Path
    step: int
    history: list[dict] = field(default_factory=list)       # per-step logs (rank 0 view, averaged)
    usage_curve: list[dict] = field(default_factory=list)   # {"step", "utilization", "num_tokens"} windows
    is_main: bool = True                                     # rank 0 (the process that wrote the files)


# --- the loop --------------------------------------------------------------------------------------

def train(config: TrainConfig, *, resume: str | os.PathLike | None = None, stop_at_step: int | None = None,
          progress: bool = True) -> TrainResult:
    """Train a tokenizer; `resume` continues from a run folder; `stop_at_step` saves and returns early."""
    config.validate()
    env = init_distributed(config.device)
    out_dir = Path(config.out_dir)
    torch.manual_seed(config.seed)  # identical initialisation on every rank

    model = build_model(config).to(env.device)
    loss_fn = TokenizerLoss(config.loss).to(env.device)
    disc = loss_fn.discriminator
    gen_params = [p for p in model.parameters() if p.requires_grad]
    opt_g = torch.optim.Adam(gen_params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)

    size = config.image_size or model.config.autoencoder.resolution
    dataset = build_dataset(config.data, size, train=True, seed=config.seed)
    sampler = EpochSampler(len(dataset), config.batch_size, env, config.seed)
    steps_per_epoch = max(sampler.batches_per_epoch // config.grad_accum, 1)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))

    step, usage_curve, history = 0, [], []
    if resume is not None:
        state = load_train_state(resume)
        if state["tokenizer_config"] != model.config.to_dict():
            raise ValueError(f"cannot resume from {resume}: it trained a different tokenizer configuration")
        model.load_state_dict(state["model"])
        disc.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        step, usage_curve = state["step"], state.get("usage_curve", [])
        set_rng_state(state["rng"])

    ddp_model = model
    if env.enabled:
        # The frozen codebook is identical everywhere and EMA buffers are all-reduced by the
        # quantizer itself: broadcasting buffers every step would ship ~307 MB at 100K x 768.
        # (torch 2.13 prefers `forward_sync_buffers`, which still syncs at init; this keeps both off.)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            ddp_model = DistributedDataParallel(model, broadcast_buffers=False,
                                                device_ids=[env.local_rank] if env.device.type == "cuda" else None)

    writer = None
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out_dir / "tensorboard"))
        global_batch = config.batch_size * config.grad_accum * env.world_size
        log.info("training %s: %d processes x batch %d x accum %d = global batch %d; %d steps (%d per epoch), "
                 "%.2fM trainable parameters", config.tokenizer, env.world_size, config.batch_size,
                 config.grad_accum, global_batch, total_steps, steps_per_epoch,
                 model.num_trainable_parameters() / 1e6)

    def save(final: bool = False) -> None:
        if not env.is_main:
            return
        atomic_torch_save({
            "model": model.state_dict(), "discriminator": disc.state_dict(), "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(), "step": step, "rng": rng_state(), "usage_curve": usage_curve,
            "tokenizer_config": model.config.to_dict(), "train_config": config.to_dict(),
        }, out_dir / STATE_NAME)
        model.save_pretrained(out_dir / "tokenizer")
        (out_dir / "usage_curve.json").write_text(json.dumps(usage_curve) + "\n")

    usage = UsageAccumulator(model.num_codes, device=env.device)
    autocast = torch.autocast(device_type=env.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    bar = tqdm(total=total_steps, initial=step, disable=not (progress and env.is_main), unit="step",
               dynamic_ncols=True)
    skipped_total, skipped_files, t0, images_seen = 0, [], time.perf_counter(), 0
    model.train()
    loss_fn.train()
    loader_iter, epoch = None, -1
    while step < total_steps:
        if stop_at_step is not None and step >= stop_at_step:
            break
        # (Re)create the epoch's iterator at epoch boundaries, and once after a resume mid-epoch.
        want_epoch = step // steps_per_epoch
        if loader_iter is None or want_epoch != epoch:
            epoch = want_epoch
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            sampler.set_epoch(epoch, start_batch=(step % steps_per_epoch) * config.grad_accum)
            loader_iter = iter(DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                                          collate_fn=collate_skip_corrupt))
        lr = lr_at(step, base_lr=config.lr, warmup_steps=warmup_steps, total_steps=total_steps, min_lr=config.min_lr)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr

        # generator: reconstruction + perceptual + quantizer (+ adaptive-weighted GAN) loss
        disc.requires_grad_(False)
        pairs, logs_sum = [], {}
        for _ in range(config.grad_accum):
            batch = next(loader_iter)
            skipped_total += batch["num_skipped"]
            skipped_files.extend(batch["skipped"])
            images = batch["image"].to(env.device, non_blocking=True)
            with autocast:
                out = ddp_model(images)
                g_loss, logs = loss_fn.generator_loss(images, out.reconstruction.float(), out.quantizer.loss,
                                                      step=step, last_layer=model.last_layer)
            if not torch.isfinite(g_loss):
                raise FloatingPointError(f"non-finite loss at step {step} ({logs}); stopped, the last good "
                                         f"checkpoint in {out_dir} is kept")
            (g_loss / config.grad_accum).backward()
            usage.update(out.quantizer.indices)
            pairs.append((images, out.reconstruction.detach().float()))
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / config.grad_accum
            images_seen += images.shape[0] * env.world_size
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)

        # discriminator: hinge loss on the same real / reconstructed pairs, from disc_start on
        disc.requires_grad_(True)
        if loss_fn.discriminator_active(step):
            for images, recon in pairs:
                with autocast:
                    d_loss, d_logs = loss_fn.discriminator_loss(images, recon, step=step)
                (d_loss / config.grad_accum).backward()
                for k, v in d_logs.items():
                    logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / config.grad_accum
            _average_gradients(list(disc.parameters()), env.world_size)
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)

        step += 1
        logs_sum = all_reduce_mean(logs_sum, env.device)
        logs_sum["lr"] = lr
        history.append({"step": step, **logs_sum})
        if step % config.usage_every == 0 or step == total_steps:
            usage.all_reduce()
            stats = usage.stats()
            usage_curve.append({"step": step, "utilization": stats["utilization"], "num_tokens": stats["num_tokens"]})
            if writer:
                writer.add_scalar("usage/utilization", stats["utilization"], step)
                writer.add_scalar("usage/perplexity", stats["perplexity"], step)
            usage.reset()
        if writer and step % config.log_every == 0:
            for k, v in logs_sum.items():
                writer.add_scalar(f"train/{k}", v, step)
            rate = images_seen / max(time.perf_counter() - t0, 1e-9)
            writer.add_scalar("train/images_per_s", rate, step)
            bar.set_postfix(loss=f"{logs_sum.get('total', float('nan')):.4f}", img_s=f"{rate:.1f}")
        if writer and (step % config.image_every == 0 or step == total_steps):
            from ..evaluate.grid import save_comparison_grid
            images, recon = pairs[0]
            grid = out_dir / "samples" / f"step_{step:07d}.png"
            grid.parent.mkdir(exist_ok=True)
            save_comparison_grid(images[:8].cpu(), recon[:8].clamp(-1, 1).cpu(), grid, max_images=8)
            with Image.open(grid) as picture:
                writer.add_image("reconstructions", np.asarray(picture.convert("RGB")), step, dataformats="HWC")
        bar.update(1)
        if step % config.save_every == 0 or step == total_steps:
            save()
        if stop_at_step is not None and step >= stop_at_step:
            save()
    bar.close()
    if skipped_files:
        # every rank lists what it could not read (ranks load disjoint images)
        out_dir.mkdir(parents=True, exist_ok=True)
        listing = out_dir / f"skipped_rank{env.rank}.txt"
        listing.write_text("".join(f"{path}\t{reason}\n" for path, reason in skipped_files))
        log.warning("%d unreadable images were skipped on rank %d; listed in %s", skipped_total, env.rank, listing)
    if writer:
        writer.close()
    barrier()
    return TrainResult(model.eval(), out_dir, step, history, usage_curve, is_main=env.is_main)
