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
    template.codebook_size = int(header["codebook_size"])
    template.grid = tuple(int(g) for g in header["grid"])
    template.num_classes = max(len(store.class_names), int(labels.max()) + 1)
    template.code_dim = int(header["latent_dim"])
    config = ClassifierTrainConfig(model=template, data=str(cache), val_data=str(val), out_dir=str(out),
                                   tokenizer=str(header.get("tokenizer", "")))
    config.override(list(overrides)).validate()
    if val:
        val_store, _ = _labelled_tokens(val)
        from ..generate.cache import same_encoder

        if not same_encoder(val_store.header.get("tokenizer_config") or {}, header.get("tokenizer_config") or {}) or \
                list(val_store.header["grid"]) != list(header["grid"]):
            raise ValueError(f"{val} was encoded by another tokenizer or at another size than {cache}; encode both "
                             "sets with the same tokenizer and image size")
        check_classes(store.class_names, val_store.class_names, cache, val)
    return config


def source_class_names(source: str) -> list[str]:
    """The class names of a labelled image source (folder, .txt list, demo crops), read without
    decoding an image; [] for unlabelled images."""
    text = str(source)
    if text == "demo" or text.startswith("demo:"):
        from ..data.demo import DEMO_SOURCES
        return [name for name, _, _ in DEMO_SOURCES]
    from ..data import class_names, list_images
    return class_names(list_images(text))


def check_classes(train_names: list[str], val_names: list[str], train: str, val: str) -> None:
    """Classes are matched by name: the training set needs two or more, and the held-out set may
    hold only classes the training set has (a subset is fine; its ids follow the training set)."""
    if not train_names:
        raise ValueError(f"{train} has unlabelled images; classification needs class sub-folders or a .txt list "
                         "with a label after each path")
    if len(train_names) < 2:
        raise ValueError(f"{train} holds one class ({train_names[0]}); classification needs at least 2 classes")
    if not val_names:
        raise ValueError(f"{val} has unlabelled images; give the held-out images the training set's class folders")
    unknown = [name for name in val_names if name not in train_names]
    if unknown:
        raise ValueError(f"{val} has class(es) {', '.join(unknown)} that {train} does not have (its classes: "
                         f"{', '.join(train_names)}); classes are matched by name, give both sets the same class "
                         "folders")


def _labels_by_name(store, labels: np.ndarray, class_names: list[str] | None, cache: str) -> np.ndarray:
    """A cache's labels as ids of `class_names` (the classifier's classes), matched by name."""
    if class_names is None or list(store.class_names) == list(class_names):
        return labels
    check_classes(list(class_names), store.class_names, "the classifier's training set", cache)
    ids = np.asarray([class_names.index(name) for name in store.class_names], dtype=np.int64)
    return ids[labels]


@torch.no_grad()
def evaluate_classifier(model: TokenClassifier, cache: str, *, batch_size: int = 256,
                        device: str | torch.device = "cpu", class_names: list[str] | None = None) -> dict:
    """Top-1 of `model` over every item of a labelled token cache (overall and per class).
    `class_names`: the classes the model was trained on, in id order; the cache's classes are
    matched to them by name (per-class results are keyed by name then)."""
    from ..data.cache import CacheDataset

    store, labels = _labelled_tokens(cache)
    labels = _labels_by_name(store, labels, class_names, cache)
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
    names = class_names or store.class_names

    def key(c: int):
        return names[c] if c < len(names) else int(c)
    return {"top1": float(correct.mean()), "num_images": int(len(labels)),
            "per_class_top1": {key(c): float(correct[labels == c].mean()) for c in classes}}


def classify(tokenizer: str | os.PathLike, train: str, val: str, out: str | os.PathLike, *,
             model: str | TokenClassifierConfig = "vit-tiny", overrides: list[str] | tuple = (),
             image_size: int | None = None, flip: bool = False, workers: int = 0, device: str = "auto",
             progress: bool = True) -> dict:
    """Encode `train` and `val` with the tokenizer, train a token-map classifier, report top-1 on `val`.

    `train`/`val`: image folders with class sub-folders, .txt lists with labels, or labelled
    demo crops ("demo:train:N" / "demo:eval:N", labelled by source photo). Returns the report
    (also written to OUT/report.json); a finished OUT with the same settings is returned as is.
    """
    from ..files import atomic_write_json, check_writable_dir, read_json
    from ..generate.cache import CacheConfig, build_cache, open_cache
    from ..train.state import STATE_NAME

    out = Path(out)
    # classes are matched by name, and checked before any image is encoded
    train_names = source_class_names(train)
    check_classes(train_names, source_class_names(val), str(train), str(val))
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
        report = read_json(report_path, "the classification report", "delete it to classify again")
        # a finished classifier is reused only when it was trained to the same length as well
        differ = config.differences(report.get("train_config", {}), ignore=config.bookkeeping_fields)
        if not differ:
            log.info("%s is finished with these settings: reusing its report", out)
            return report
        raise ValueError(f"{out} holds a classifier trained with other settings ({', '.join(differ)} differ); "
                         "choose another --out")
    # an unfinished run resumes; the training loop refuses it if settings it may not change differ
    resume = out / "run" if (out / "run" / STATE_NAME).is_file() else None
    result = train_classifier(config, resume=resume, progress=progress)
    trained = result.model  # on the loop's device
    class_names = open_cache(caches["train"]).class_names
    scores = evaluate_classifier(trained, caches["val"], device=trained.device, class_names=class_names)
    train_scores = evaluate_classifier(trained, caches["train"], device=trained.device, class_names=class_names)
    report = {
        "top1": scores["top1"], "train_top1": train_scores["top1"], "num_val": scores["num_images"],
        "num_train": train_scores["num_images"], "per_class_top1": scores["per_class_top1"],
        "embed": config.model.embed, "tokenizer": os.path.abspath(tokenizer), "codebook_size": config.model.codebook_size,
        "grid": list(config.model.grid), "num_classes": config.model.num_classes, "class_names": class_names,
        "steps": result.step,
        "train": str(train), "val": str(val), "seconds": round(time.perf_counter() - started, 1),
        "protocol": "final weights (no model selection on the val set); top-1 = share of val images whose "
                    "argmax class is their label; train_top1 on the (unaugmented) train cache",
        "train_config": config.to_dict(),
    }
    if result.is_main:
        atomic_write_json(report_path, report)
    return report
