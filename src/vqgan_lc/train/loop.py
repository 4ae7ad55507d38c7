"""The training loop every model family runs on: one process, or many under `torchrun`.

The loop owns what all families share: the process group, seeding, the rank-sharded resumable
sampler, warm-up + cosine learning rate, bf16 autocast, gradient accumulation and clipping,
an EMA of the weights, DDP, atomic checkpoints with exact resume, the NaN guard, tensorboard
and the progress bar, and the list of unreadable files. A family (`TrainingTask`) supplies
its model, data, optimizers and one `train_step`; the tokenizer's GAN step
(`tokenizer/training.py`) and the generators (`generate/training.py`) are the families.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import threading
import time
import warnings
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import distributed
from ..distributed import DistEnv
from ..files import DirectoryLock, atomic_torch_save, atomic_write_json, atomic_write_text
from ..pretrained import PretrainedModel
from .config import CONFIG_NAME, TrainConfig
from .sampler import EpochSampler
from .schedule import lr_at
from .state import STATE_NAME, load_train_state, rng_state, set_rng_state

log = logging.getLogger("vqgan_lc.train")


# --- what a model family supplies ------------------------------------------------------------------

class TrainingTask(ABC):
    """One model family's part of training. Override the abstract methods; the rest are hooks."""

    name: str = "model"          # log lines, and the folder the model is exported to (OUT/<name>)
    config: TrainConfig

    @abstractmethod
    def build_model(self) -> PretrainedModel:
        """The model whose weights are trained, EMA'd, checkpointed and exported."""

    @abstractmethod
    def build_dataset(self):
        """A map-style dataset; items are whatever `train_step` expects (collated by `collate`)."""

    @abstractmethod
    def build_optimizers(self, model: PretrainedModel) -> dict[str, torch.optim.Optimizer]:
        """Named optimizers; the loop sets their learning rate every step and checkpoints them."""

    @abstractmethod
    def train_step(self, ctx: "StepContext", batches: list) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches; returns scalar logs."""

    collate = None  # DataLoader collate_fn; None = torch's default

    def setup(self, env: DistEnv) -> None:
        """Called once the process group, device and model exist (e.g. to build and move loss networks)."""

    def training_module(self, model: PretrainedModel) -> nn.Module:
        """What DDP wraps: a module whose forward computes what `train_step` differentiates."""
        return model

    def extra_modules(self) -> dict[str, nn.Module]:
        """Other trained modules outside DDP (e.g. a discriminator): moved, checkpointed, resumed."""
        return {}

    def after_step(self, ctx: "StepContext", logs: dict[str, float]) -> None:
        """Per-step bookkeeping after the update (usage windows, sample grids); every rank calls it."""

    def on_save(self, out_dir: Path) -> None:
        """Extra files written with each checkpoint (main process only)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class StepContext:
    """What `train_step` and `after_step` get from the loop."""

    step: int
    total_steps: int
    env: DistEnv
    model: PretrainedModel          # the bare model
    module: nn.Module               # the training module, DDP-wrapped under torchrun
    optimizers: dict[str, torch.optim.Optimizer]
    config: TrainConfig
    out_dir: Path
    writer: Any = None              # tensorboard SummaryWriter on the main process, else None
    grad_norms: dict[str, float] = field(default_factory=dict)

    def autocast(self):
        if self.config.precision != "bf16":
            return nullcontext()
        return torch.autocast(device_type=self.env.device.type, dtype=torch.bfloat16)

    def backward(self, loss: torch.Tensor, logs: dict | None = None) -> None:
        """Check the loss is finite (the NaN guard), then backpropagate its accumulation share."""
        if not torch.isfinite(loss):
            shown = {k: round(float(v), 6) for k, v in (logs or {}).items()}
            raise FloatingPointError(f"non-finite loss at step {self.step} ({shown}); stopped, the last good "
                                     f"checkpoint in {self.out_dir} is kept")
        (loss / self.config.grad_accum).backward()

    def optimizer_step(self, name: str, optimizer: torch.optim.Optimizer) -> None:
        """Clip (when configured; the pre-clip norm is logged as grad_norm/<name>), step, zero."""
        if self.config.grad_clip is not None:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
            self.grad_norms[name] = float(norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@dataclass
class TrainResult:
    model: PretrainedModel          # trained weights (the EMA weights when ema_decay is set)
    out_dir: Path
    step: int
    task: TrainingTask
    history: list[dict] = field(default_factory=list)  # per-step logs (averaged over ranks)
    is_main: bool = True                                # rank 0 (the process that wrote the files)
    skipped_steps: int = 0                              # steps skipped: a batch with no readable item
    ema_decay: float | None = None                      # the configured EMA decay (None: raw weights)

    def weights_line(self) -> str:
        """What the exported weights are: "generator = EMA weights (decay d over n steps; ...)"."""
        name = self.task.name
        if self.ema_decay is None:
            return f"{name} = the trained weights (no EMA)"
        last = ema_decay_at(self.ema_decay, max(self.step - 1, 0))
        return (f"{name} = EMA weights (decay {self.ema_decay:g} over {self.step} steps; warmed up, the last "
                f"update's decay was {last:.4g})")

    @property
    def usage_curve(self) -> list[dict]:
        return getattr(self.task, "usage_curve", [])


# The EMA's warm-up: its decay for update n (from 0) is min(decay, (1 + n) / (10 + n)), as in
# TensorFlow's ExponentialMovingAverage with num_updates. Without it a decay of 0.9999 keeps
# ~99.4% of the initial weights after 60 steps: a short run would export its initialisation.
def ema_decay_at(decay: float, updates: int) -> float:
    """The EMA's decay for its update number `updates` (counted from 0)."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def ema_initial_share(decay: float, steps: int) -> float:
    """How much of the initial weights an EMA still holds after `steps` warmed-up updates."""
    share = 1.0
    for n in range(steps):
        share *= ema_decay_at(decay, n)
        if share < 1e-12:
            return 0.0
    return share


# Above this share of the initial weights the EMA has not moved enough to stand for training.
EMA_STALE_SHARE = 0.01


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers are copied as they are."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def _wrap_ddp(module: nn.Module, env: DistEnv) -> nn.Module:
    # Buffers are not broadcast: frozen ones (the LC codebook, 307 MB at 100K x 768) are equal
    # everywhere already and moving ones (EMA codebooks) are all-reduced by their owners.
    # (torch 2.13 prefers `forward_sync_buffers`, which still syncs at init; this keeps both off.)
    from torch.nn.parallel import DistributedDataParallel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DistributedDataParallel(module, broadcast_buffers=False,
                                       device_ids=[env.local_rank] if env.device.type == "cuda" else None)


METRICS_NAME = "metrics.jsonl"


class MetricsLog:
    """`metrics.jsonl` in the run folder: one JSON object per logged step, for reading a run
    without tensorboard (`vqgan-lc plot RUN`, pandas, jq). Main process only.

    Opening it keeps the lines of steps <= `keep_through` and drops the rest: a run resumed
    from step s drops what a crashed run logged after its checkpoint, and a fresh run (s = 0)
    starts an empty file, so the file always reads like one uninterrupted run. Lines are
    appended and flushed one by one; a line torn by a crash is dropped at the next open.
    """

    def __init__(self, path: str | os.PathLike, keep_through: int = 0):
        self.path = Path(path)
        kept = [line for line in read_metric_lines(self.path) if line["step"] <= keep_through]
        atomic_write_text(self.path, "".join(_metric_line(line) for line in kept))
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(_metric_line(record))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metric_lines(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl ([] when absent), skipping lines that do not parse."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            continue  # the half-written last line of a killed run
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def _metric_line(record: dict) -> str:
    # Non-finite values become null: strict JSON readers (jq, JavaScript) reject NaN/Infinity.
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


def usage_window(task: TrainingTask, step: int) -> dict[str, float]:
    """The codebook-usage window a family closed at `step` (its `usage_curve` entry), as
    `usage/<name>` values; {} for families without one or between windows."""
    curve = getattr(task, "usage_curve", None)
    if not curve or curve[-1].get("step") != step:
        return {}
    return {f"usage/{k}": v for k, v in curve[-1].items() if k != "step"}


# --- the loop --------------------------------------------------------------------------------------

def run_training(task: TrainingTask, *, resume: str | os.PathLike | None = None,
                 stop_at_step: int | None = None, progress: bool = True) -> TrainResult:
    """Train `task.config` from scratch, or continue the run in `resume` exactly where it stopped.

    `stop_at_step` checkpoints and returns early (how tests interrupt a run)."""
    config = task.config.validate()
    state = None
    if resume is not None:
        # the saved configuration is checked before any work: a Python caller gets the same rule
        # as the command line (only the fields the config class declares may change)
        state = load_train_state(resume)
        saved = state.get("train_config")
        conflicts = config.resume_conflicts(saved) if saved is not None else []
        if conflicts:
            raise ValueError(f"cannot resume from {resume}: it trained a different {task.name} configuration "
                             f"({', '.join(conflicts)} differ(s) from the saved run); a resumed run may change only "
                             f"{', '.join(type(config).resume_fields())}; start a new run in another folder to change "
                             "the rest")
    env = distributed.init(config.device)
    out_dir = Path(config.out_dir)
    lock = DirectoryLock(out_dir).acquire() if env.is_main else None
    try:
        return _train(task, config, env, out_dir, resume, state, stop_at_step, progress)
    finally:
        if lock is not None:
            lock.release()


def _train(task, config, env, out_dir, resume, state, stop_at_step, progress) -> TrainResult:
    torch.manual_seed(config.seed)  # identical initialisation on every rank, and in every run of a config

    # model, EMA, the family's extra modules, optimizers (in this order: the RNG draws, and so
    # the initial weights, are those of every earlier version of a run with this config)
    model = task.build_model().to(env.device)
    task.setup(env)
    extras = {name: m.to(env.device) for name, m in task.extra_modules().items()}
    ema = copy.deepcopy(model).requires_grad_(False).eval() if config.ema_decay else None
    optimizers = task.build_optimizers(model)

    # data: a seeded permutation per epoch, sharded over ranks
    dataset = task.build_dataset()
    sampler = EpochSampler(len(dataset), config.batch_size, env, config.seed)
    steps_per_epoch = max(sampler.batches_per_epoch // config.grad_accum, 1)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))

    step = 0
    if state is not None:
        if not _same_model_config(state["model_config"], model.config):
            raise ValueError(f"cannot resume from {resume}: it trained a different {task.name} configuration")
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
        for name, module in extras.items():
            module.load_state_dict(state["extras"][name])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        task.load_state_dict(state.get("task", {}))
        step = state["step"]
        set_rng_state(state["rng"])
        if env.is_main:
            log.info("resuming %s from step %d of %s", task.name, step, resume)

    module = task.training_module(model)
    if env.enabled:
        module = _wrap_ddp(module, env)

    writer = metrics = None
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / CONFIG_NAME, config.to_dict())
        try:  # tensorboard is the [train] extra, not a core dependency
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RuntimeError("training logs to tensorboard, which is not installed: "
                               "pip install 'vqgan-lc[train]'") from None
        writer = SummaryWriter(str(out_dir / "tensorboard"))
        metrics = MetricsLog(out_dir / METRICS_NAME, keep_through=step)
        log.info("training %s: %d processes x batch %d x accum %d = global batch %d; %d steps (%d per epoch), "
                 "%.2fM trainable parameters", task.name, env.world_size, config.batch_size, config.grad_accum,
                 config.batch_size * config.grad_accum * env.world_size, total_steps, steps_per_epoch,
                 model.num_parameters(trainable_only=True) / 1e6)

    saved_step = step if resume is not None else -1

    def save() -> None:
        nonlocal saved_step
        saved_step = step
        if not env.is_main:
            return
        atomic_torch_save({
            "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "extras": {name: m.state_dict() for name, m in extras.items()},
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "step": step, "rng": rng_state(), "task": task.state_dict(),
            "model_config": model.config.to_dict(), "train_config": config.to_dict(),
        }, out_dir / STATE_NAME)
        (ema if ema is not None else model).save_pretrained(out_dir / task.name)
        task.on_save(out_dir)

    bar = tqdm(total=total_steps, initial=step, disable=not (progress and env.is_main), unit="step",
               dynamic_ncols=True)
    skipped_files, skipped_steps, images_seen, t0 = [], 0, 0, time.perf_counter()
    history: list[dict] = []
    model.train()
    for m in extras.values():
        m.train()
    loader_iter, epoch, stepped_this_epoch = None, -1, True
    interrupt, stopped = _Interrupt(task.name, env.is_main).install(), False
    try:
        while step < total_steps and not (stop_at_step is not None and step >= stop_at_step):
            # (Re)create the epoch's iterator at epoch boundaries, and once after a resume mid-epoch.
            if loader_iter is None or step // steps_per_epoch != epoch:
                if not stepped_this_epoch:  # a whole epoch of unreadable batches: the data, not bad luck
                    _write_skipped(out_dir, env, skipped_files, skipped_steps)
                    raise ValueError(f"no item of epoch {epoch} could be read ({skipped_steps} steps skipped, "
                                     f"unreadable files listed in {out_dir / f'skipped_rank{env.rank}.txt'}); check the data")
                stepped_this_epoch = step % steps_per_epoch != 0  # a resume mid-epoch cannot tell: assume it did
                epoch = step // steps_per_epoch
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(epoch)
                sampler.set_epoch(epoch, start_batch=(step % steps_per_epoch) * config.grad_accum)
                # The loader draws its workers' base seed from its own generator, never from the global
                # RNG: a resumed run creates an iterator where an uninterrupted one did not, and the
                # global stream (class dropout, token corruption, diffusion noise) must not shift.
                seeds = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
                loader_iter = iter(DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                                              collate_fn=task.collate, generator=seeds,
                                              worker_init_fn=_ignore_interrupts))
            lr = lr_at(step, base_lr=config.lr, warmup_steps=warmup_steps, total_steps=total_steps, min_lr=config.min_lr)
            for opt in optimizers.values():
                for group in opt.param_groups:  # a group may carry its own multiplier of the schedule
                    group["lr"] = lr * group.get("lr_scale", 1.0)

            try:
                batches = [next(loader_iter) for _ in range(config.grad_accum)]
            except Exception:
                if not interrupt.requested:
                    raise
                stopped = True  # a loader worker ended by the same Ctrl-C: stop at the last finished step
                break
            for batch in batches:
                if isinstance(batch, dict):
                    skipped_files.extend(batch.get("skipped", []))
            batches = [b for b in batches if _batch_size(b) > 0]  # every file of a micro-batch unreadable
            ctx = StepContext(step, total_steps, env, model, module, optimizers, config, out_dir, writer)
            if distributed.all_true(bool(batches)):
                logs = task.train_step(ctx, batches)
                if ema is not None:
                    update_ema(ema, model, ema_decay_at(config.ema_decay, step))
                images_seen += sum(_batch_size(b) for b in batches) * env.world_size
                stepped_this_epoch = True
            else:  # no rank may step alone: DDP would wait for it forever
                skipped_steps += 1
                logs = {}
                log.warning("step %d skipped: a process had no readable item in its batch", step)
            step += 1
            ctx.step = step
            # the interrupt flag rides on the step's one collective: every rank stops after the same step
            logs = distributed.all_reduce_mean({**logs, **{f"grad_norm/{k}": v for k, v in ctx.grad_norms.items()},
                                                INTERRUPT_KEY: float(interrupt.requested)})
            stop_now = logs.pop(INTERRUPT_KEY) > 0
            logs["lr"] = lr
            history.append({"step": step, **logs})
            task.after_step(ctx, logs)
            logged = step % config.log_every == 0 or step == 1 or step == total_steps
            window = usage_window(task, step)
            if writer is not None and (logged or window):
                rate = images_seen / max(time.perf_counter() - t0, 1e-9)
                metrics.write({"step": step, **logs, **window, "items_per_s": rate, "wall_time": time.time()})
            if writer is not None and logged:
                for k, v in logs.items():
                    writer.add_scalar(f"train/{k}", v, step)
                writer.add_scalar("train/items_per_s", rate, step)
                bar.set_postfix(loss=f"{logs.get('total', logs.get('loss', float('nan'))):.4f}", it_s=f"{rate:.1f}")
            bar.update(1)
            if step % config.save_every == 0 or step == total_steps or step == stop_at_step:
                save()
            if stop_now and step < total_steps:
                stopped = True
                break
    finally:
        interrupt.uninstall()
    if stopped:
        if saved_step != step:
            save()
        bar.close()
        _write_skipped(out_dir, env, skipped_files, skipped_steps)
        if writer is not None:
            writer.close()
            metrics.close()
        raise TrainingInterrupted(f"interrupted: the checkpoint in {out_dir} holds step {step} of {total_steps}; "
                                  f"a resume continues exactly from it (--resume {out_dir}; a study, classify or "
                                  "demo resumes when run again)")
    bar.close()
    _write_skipped(out_dir, env, skipped_files, skipped_steps)
    if history and skipped_steps == len(history):
        raise ValueError(f"no step of this run had a readable item ({skipped_steps} skipped, unreadable files listed "
                         f"in {out_dir / f'skipped_rank{env.rank}.txt'}); check the data")
    if writer is not None:
        writer.close()
        metrics.close()
    distributed.barrier()
    trained = ema if ema is not None else model
    if ema is not None and env.is_main:
        share = ema_initial_share(config.ema_decay, step)
        if share > EMA_STALE_SHARE:
            log.warning("the EMA has seen only %d steps: %.0f%% of the exported %s weights are still the initial "
                        "ones; train longer, or set ema_decay=none to export the trained weights", step,
                        100 * share, task.name)
    return TrainResult(trained.eval(), out_dir, step, task, history, is_main=env.is_main, skipped_steps=skipped_steps,
                       ema_decay=config.ema_decay if ema is not None else None)


INTERRUPT_KEY = "_interrupted"  # a private entry of the per-step all-reduce, removed before logging


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after a finished step, whose checkpoint was written; the message says which."""


class _Interrupt:
    """Ctrl-C while training: the first one lets the running step finish, after which the loop
    writes a checkpoint of it (atomically, like every checkpoint) and stops; a second one stops
    at once, as Python's default handler does. Only the main thread can receive signals, so
    elsewhere (a notebook's worker thread) nothing is installed."""

    def __init__(self, name: str, verbose: bool):
        self.name, self.verbose = name, verbose
        self.requested = False
        self._installed, self._previous = False, None

    def install(self) -> "_Interrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:  # (None: a handler set outside Python; Python's own is the closest)
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
            self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.verbose:
            log.warning("interrupted: finishing the current %s step, then saving a checkpoint of it "
                        "(Ctrl-C again to stop at once, keeping only the last checkpoint)", self.name)


def _ignore_interrupts(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the training process, which stops after a finished step."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# What a run writes into its folder besides the exported model (OUT/<task name>).
RUN_ENTRIES = (STATE_NAME, CONFIG_NAME, METRICS_NAME, "metrics.png", "tensorboard", "samples", "usage_curve.json")


def holds_run(folder: str | os.PathLike) -> bool:
    """Whether a training run (finished, or stopped at any point after it began) lives in `folder`."""
    return any((Path(folder) / name).exists() for name in (STATE_NAME, CONFIG_NAME))


def clear_run(folder: str | os.PathLike, *exports: str) -> None:
    """Delete what a run wrote into `folder` (checkpoint, config, logs, grids, and `exports`: the
    exported model and what the family writes beside it); anything else there is left alone."""
    import shutil

    folder = Path(folder)
    for entry in [*(folder / name for name in (*RUN_ENTRIES, *exports)), *folder.glob("skipped_rank*.txt")]:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()


def _write_skipped(out_dir: Path, env: DistEnv, skipped_files: list, skipped_steps: int) -> None:
    if skipped_files or skipped_steps:
        # every rank lists what it could not read (ranks load disjoint items)
        out_dir.mkdir(parents=True, exist_ok=True)
        listing = out_dir / f"skipped_rank{env.rank}.txt"
        listing.write_text("".join(f"{path}\t{reason}\n" for path, reason in skipped_files))
        log.warning("%d unreadable items and %d empty steps were skipped on rank %d; listed in %s",
                    len(skipped_files), skipped_steps, env.rank, listing)


def _same_model_config(saved: dict, config) -> bool:
    """The checkpoint's model config equals `config`, read through the config class so that a
    field added since the checkpoint was written (e.g. the tokenizer's latent_scale) takes its
    default instead of making every older run unresumable."""
    try:
        return type(config).from_dict(saved).to_dict() == config.to_dict()
    except ValueError:  # a field this version does not know: written by another version
        return False


def _batch_size(batch) -> int:
    if isinstance(batch, dict):
        first = next(iter(v for v in batch.values() if isinstance(v, torch.Tensor)), None)
        return 0 if first is None else int(first.shape[0])
    if isinstance(batch, (tuple, list)):
        return int(batch[0].shape[0])
    return int(batch.shape[0])
