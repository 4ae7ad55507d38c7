"""Classification on token maps: caches, training on the shared loop, top-1 on held-out images.

    vqgan-lc classify TOKENIZER --train DIR --val DIR --out OUT [--embed index] [--set epochs=30 ...]

1. both image sets are encoded once by the tokenizer into token caches (`data/encoded.py`:
   resumable, sliced over `torchrun` ranks), OUT/cache-train and OUT/cache-val;
2. a `TokenClassifier` sized by the caches (vocabulary, token grid, classes) trains on the
   train cache with the shared loop (`train/loop.py`: DDP, warm-up + cosine, checkpoints,
   exact resume) in OUT/run;
3. the final weights (no selection on the val set, which is the test set here) are scored on
   the val cache: top-1 overall and per class, written to OUT/report.json.

A finished OUT (its report.json made with the same settings) is returned as it is; an
interrupted one resumes from its last checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..train.config import TrainConfig
from ..train.loop import StepContext, TrainingTask, TrainResult, run_training
from .model import TokenClassifier, TokenClassifierConfig, classifier_preset

log = logging.getLogger("vqgan_lc.classify")

EXPORT_NAME = "classifier"
REPORT_NAME = "report.json"


@dataclass
class ClassifierTrainConfig(TrainConfig):
    model: TokenClassifierConfig = field(default_factory=TokenClassifierConfig)  # sized by the cache
    tokenizer: str = ""                # tokenizer folder whose codebook the "codebook" embedding reads
    val_data: str = ""                 # token cache of the held-out images ("" = none)
    label_smoothing: float = 0.1
    # AdamW with warm-up and cosine, as ViTs are usually trained; small sets need the decay.
    batch_size: int = 64
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05
    epochs: int = 20
    warmup_epochs: float = 1.0
    grad_clip: float | None = 1.0
    log_every: int = 20

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.model.embed == "codebook" and not self.tokenizer:
            raise ValueError("the codebook embedding needs the tokenizer folder (tokenizer=PATH), or use "
                             "model.embed=index")


def tokenizer_codes(tokenizer: str | os.PathLike) -> torch.Tensor:
    """The (N, D') latent entries of a tokenizer, exactly as its decoder looks them up."""
    from ..tokenizer.model import VQModel

    model = VQModel.from_pretrained(tokenizer)  # eval mode: the entries are computed once, detached
    return model.quantizer.search_codebook()[0].float().cpu()


class ClassifierTask(TrainingTask):
    """Cross-entropy (with label smoothing) on cached token maps; one AdamW."""

    name = EXPORT_NAME

    def __init__(self, config: ClassifierTrainConfig):
        self.config = config

    def build_model(self) -> TokenClassifier:
        codes = tokenizer_codes(self.config.tokenizer) if self.config.model.embed == "codebook" else None
        return TokenClassifier(self.config.model, codes)

    def build_dataset(self):
        from ..data.encoded import EncodedImageDataset, open_encoded_cache

        return EncodedImageDataset(open_encoded_cache(self.config.data), seed=self.config.seed)

    def build_optimizers(self, model: TokenClassifier):
        cfg = self.config
        return {"classifier": model.configure_optimizer(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)}

    def train_step(self, ctx: StepContext, batches: list) -> dict[str, float]:
        logs = {"loss": 0.0, "accuracy": 0.0}
        for batch in batches:
            tokens = batch["x"].to(ctx.env.device, non_blocking=True)
            labels = batch["label"].to(ctx.env.device)
            with ctx.autocast():
                logits = ctx.module(tokens)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.label_smoothing)
            ctx.backward(loss, {"loss": float(loss.detach())})
            logs["loss"] += float(loss.detach()) / len(batches)
            logs["accuracy"] += float((logits.argmax(-1) == labels).float().mean()) / len(batches)
        ctx.optimizer_step("classifier", ctx.optimizers["classifier"])
        return logs


def train_classifier(config: ClassifierTrainConfig, *, resume: str | os.PathLike | None = None,
                     stop_at_step: int | None = None, progress: bool = True) -> TrainResult:
    return run_training(ClassifierTask(config), resume=resume, stop_at_step=stop_at_step, progress=progress)


def _labelled_tokens(cache: str):
    """(store, labels) of a token cache whose every item has a class label, or one line why not."""
    from ..data.encoded import open_encoded_cache

    store = open_encoded_cache(cache)
    if store.header.get("kind") != "tokens":
        raise ValueError(f"{cache} holds latents; classification reads token ids (`vqgan-lc cache tokens`)")
    labels = store.labels
    if labels is None:
        raise ValueError(f"{cache} has unlabelled images; classification needs class sub-folders or a "
                         ".txt list with a label after each path")
    return store, labels


def classifier_config(model: str | TokenClassifierConfig, cache: str, out: str, overrides: list[str] | tuple = (),
                      val: str = "") -> ClassifierTrainConfig:
    """A validated training config: the preset's (or given) architecture sized by the train cache
    (vocabulary, token grid, classes, entry width), plus `key=value` overrides."""
    store, labels = _labelled_tokens(cache)
    header = store.header
    template = classifier_preset(model) if isinstance(model, str) else TokenClassifierConfig.from_dict(model.to_dict())
    template.num_codes = int(header["codebook_size"])
    template.grid = tuple(int(g) for g in header["grid"])
    template.num_classes = max(len(store.class_names), int(labels.max()) + 1)
    template.code_dim = int(header["latent_dim"])
    config = ClassifierTrainConfig(model=template, data=str(cache), val_data=str(val), out_dir=str(out),
                                   tokenizer=str(header.get("tokenizer", "")))
    config.override(list(overrides)).validate()
    if val:
        val_store, val_labels = _labelled_tokens(val)
        if val_store.header.get("tokenizer_config") != header.get("tokenizer_config") or \
                list(val_store.header["grid"]) != list(header["grid"]):
            raise ValueError(f"{val} was encoded by another tokenizer or at another size than {cache}; encode both "
                             "sets with the same tokenizer and image size")
        if int(val_labels.max()) >= config.model.num_classes:
            raise ValueError(f"{val} has class {int(val_labels.max())}, but the training set only "
                             f"{config.model.num_classes} classes; give both sets the same class folders")
    return config


@torch.no_grad()
def evaluate_classifier(model: TokenClassifier, cache: str, *, batch_size: int = 256,
                        device: str | torch.device = "cpu") -> dict:
    """Top-1 of `model` over every item of a labelled token cache (overall and per class)."""
    from ..data.cache import CacheDataset

    store, labels = _labelled_tokens(cache)
    rows = CacheDataset(store, "tokens").rows
    was_training = model.training
    model.eval()
    predictions = []
    for start in range(0, len(rows), batch_size):
        tokens = torch.from_numpy(np.asarray(rows[start:start + batch_size])).to(device)
        predictions.append(model(tokens).argmax(-1).cpu())
    model.train(was_training)
    predicted = torch.cat(predictions).numpy()
    correct = predicted == labels
    classes = sorted(set(labels.tolist()))
    return {"top1": float(correct.mean()), "num_images": int(len(labels)),
            "per_class_top1": {int(c): float(correct[labels == c].mean()) for c in classes}}


def _differences(saved: dict, config: ClassifierTrainConfig) -> list[str]:
    """Fields (other than where it lives and how often it logs) where a saved run differs from `config`."""
    free = {"out_dir", "save_every", "log_every", "image_every", "num_workers", "device"}
    new = json.loads(json.dumps(config.to_dict()))
    return sorted(k for k in set(new) | set(saved) if k not in free and new.get(k) != saved.get(k))


def classify(tokenizer: str | os.PathLike, train: str, val: str, out: str | os.PathLike, *,
             model: str | TokenClassifierConfig = "vit-tiny", overrides: list[str] | tuple = (),
             image_size: int | None = None, flip: bool = False, workers: int = 0, device: str = "auto",
             progress: bool = True) -> dict:
    """Encode `train` and `val` with the tokenizer, train a token-map classifier, report top-1 on `val`.

    `train`/`val`: image folders with class sub-folders, .txt lists with labels, or labelled
    demo crops ("demo:train:N" / "demo:eval:N", labelled by source photo). Returns the report
    (also written to OUT/report.json); a finished OUT with the same settings is returned as is.
    """
    from ..files import atomic_write_json, check_writable_dir
    from ..generate.cache import CacheConfig, build_cache

    out = Path(out)
    check_writable_dir(out)
    started = time.perf_counter()
    caches = {}
    for split, data in (("train", train), ("val", val)):
        folder = out / f"cache-{split}"
        build_cache(CacheConfig(tokenizer=str(tokenizer), data=str(data), out=str(folder), kind="tokens",
                                flip=flip and split == "train", image_size=image_size, workers=workers,
                                device=device, progress=progress))
        caches[split] = str(folder)
    config = classifier_config(model, caches["train"], str(out / "run"), list(overrides), val=caches["val"])
    config.device = device
    report_path = out / REPORT_NAME
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        if not _differences(report.get("train_config", {}), config):
            log.info("%s is finished with these settings: reusing its report", out)
            return report
        differ = _differences(report.get("train_config", {}), config)
        raise ValueError(f"{out} holds a classifier trained with other settings ({', '.join(differ)} differ); "
                         "choose another --out")
    resume = None
    saved = out / "run" / "train_config.json"
    if (out / "run" / "train_state.pt").is_file() and saved.is_file():
        differ = _differences(json.loads(saved.read_text()), config)
        if differ:
            raise ValueError(f"{out / 'run'} holds an unfinished run with other settings ({', '.join(differ)} "
                             "differ); choose another --out")
        resume = out / "run"
    result = train_classifier(config, resume=resume, progress=progress)
    trained = result.model  # on the loop's device
    scores = evaluate_classifier(trained, caches["val"], device=trained.device)
    train_scores = evaluate_classifier(trained, caches["train"], device=trained.device)
    report = {
        "top1": scores["top1"], "train_top1": train_scores["top1"], "num_val": scores["num_images"],
        "num_train": train_scores["num_images"], "per_class_top1": scores["per_class_top1"],
        "embed": config.model.embed, "tokenizer": os.path.abspath(tokenizer), "codebook_size": config.model.num_codes,
        "grid": list(config.model.grid), "num_classes": config.model.num_classes, "steps": result.step,
        "train": str(train), "val": str(val), "seconds": round(time.perf_counter() - started, 1),
        "protocol": "final weights (no model selection on the val set); top-1 = share of val images whose "
                    "argmax class is their label; train_top1 on the (unaugmented) train cache",
        "train_config": config.to_dict(),
    }
    if result.is_main:
        atomic_write_json(report_path, report)
    return report
