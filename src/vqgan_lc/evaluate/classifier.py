"""A small CNN that says which reference class an image shows: the judge of class consistency.

A class-conditional generator is asked for class c; the share of its samples that a classifier
trained on the real images of the reference folder assigns to c measures whether the
conditioning works. The classifier is deliberately compact (three conv blocks at 32 px by
default) so that it trains in seconds to minutes on a CPU; its held-out accuracy on real images
is reported next to the consistency, because no generator can score above its judge.

Training is seeded and deterministic on the CPU: the per-class subset, the 10% held-out split,
the initial weights, the batch order and the augmentation all come from explicit seeds. The
result is cached under `<cache_dir>/classifiers/<key>.safetensors` with a JSON beside it; the
key hashes every listed file's absolute path, label, size and mtime_ns plus the settings, so an
edited, added or removed reference image trains a new classifier instead of reusing a stale one.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from vqgan_lc.codebook.feature_store import dataset_fingerprint
from vqgan_lc.data import ImageDataset, class_names, collate_skip_corrupt, list_images, to_uint8
from vqgan_lc.files import atomic_save_safetensors, atomic_write_json, cache_root

log = logging.getLogger(__name__)

FORMAT = "vqgan-lc-classifier-v1"  # part of the key: a changed architecture or recipe never loads old weights
DEFAULT_SIZE = 32
DEFAULT_EPOCHS = 12
DEFAULT_WIDTH = 32
# Images per class kept for training + held-out accuracy: bounds memory (uint8, size^2 * 3 bytes
# each, ~0.9 GB for 1000 classes at 32 px) and time whatever the reference set's size.
DEFAULT_MAX_PER_CLASS = 300
HOLDOUT_FRACTION = 0.1
SEED = 0
LEARNING_RATE = 2e-3
TRAIN_BATCH = 32
SHIFT = 2  # augmentation: random translation by up to this many pixels (no flips: a class may be defined by its orientation)


class SmallClassifier(nn.Module):
    """Images (B,3,size,size) in [-1, 1] -> (B, num_classes) logits.

    Three blocks of conv3x3 -> GroupNorm -> ReLU -> 2x2 max pool (width, 2*width, 4*width
    channels), global average pool, linear. GroupNorm instead of BatchNorm: no running
    statistics, so training and evaluation compute the same function and a batch of one
    class (all samples of one folder) is classified like a mixed one.
    """

    def __init__(self, num_classes: int, size: int = DEFAULT_SIZE, width: int = DEFAULT_WIDTH):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"SmallClassifier: need at least 2 classes, got {num_classes}")
        if size < 8 or width < 8 or width % 8:
            raise ValueError(f"SmallClassifier: need size >= 8 and width a positive multiple of 8, got {size}, {width}")
        self.num_classes = num_classes
        self.size = size
        self.width = width
        layers: list[nn.Module] = []
        cin = 3
        for cout in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


def _settings(size: int, epochs: int, width: int, max_per_class: int) -> dict:
    return {"format": FORMAT, "size": size, "epochs": epochs, "width": width, "max_per_class": max_per_class,
            "holdout_fraction": HOLDOUT_FRACTION, "seed": SEED, "lr": LEARNING_RATE, "batch": TRAIN_BATCH,
            "shift": SHIFT}


def _check_settings(size: int, epochs: int, width: int, max_per_class: int) -> None:
    if size < 8 or epochs < 1 or width < 8 or width % 8 or max_per_class < 2:
        raise ValueError(f"classifier: need size >= 8, epochs >= 1, width a multiple of 8 and max_per_class >= 2; "
                         f"got {size}, {epochs}, {width}, {max_per_class}")


def _labelled_records(reference_dir) -> tuple[list, list[str]]:
    """The reference listing and its class names; one line when it cannot train a classifier."""
    records = list_images(reference_dir)  # ImageError (a ValueError) names a missing or empty folder
    names = class_names(records)
    if len(names) < 2:
        raise ValueError(f"{reference_dir}: class consistency needs a reference folder with at least 2 class "
                         f"sub-folders of images, found {len(names)}")
    return records, names


def classifier_key(reference_dir, *, size: int = DEFAULT_SIZE, epochs: int = DEFAULT_EPOCHS,
                   width: int = DEFAULT_WIDTH, max_per_class: int = DEFAULT_MAX_PER_CLASS) -> str:
    """The cache key: the listed files (absolute path, label, size, mtime_ns) plus the settings."""
    records, _ = _labelled_records(reference_dir)
    return _key(records, _settings(size, epochs, width, max_per_class))


def _key(records, settings: dict) -> str:
    text = json.dumps({"files": dataset_fingerprint(records), "settings": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _split(labels: list[int], num_classes: int, max_per_class: int, generator: torch.Generator) -> tuple[list[int], list[int]]:
    """Seeded per-class subset and 10% held-out split: every class with >= 2 images is in both parts."""
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for i, label in enumerate(labels):
        by_class[label].append(i)
    train, holdout = [], []
    for members in by_class:
        order = torch.randperm(len(members), generator=generator).tolist()
        chosen = [members[j] for j in order[:max_per_class]]
        n_hold = max(1, round(HOLDOUT_FRACTION * len(chosen))) if len(chosen) >= 2 else 0
        holdout += chosen[:n_hold]
        train += chosen[n_hold:]
    return sorted(train), sorted(holdout)


def _decode(dataset, indices: list[int], batch_size: int, progress: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode `indices` of `dataset` once into uint8 images (N,3,s,s) and labels (N,); unreadable files are dropped."""
    images, labels = [], []
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, collate_fn=collate_skip_corrupt)
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress):
        if batch["image"].shape[0]:
            images.append(to_uint8(batch["image"]))
            labels.append(batch["label"])
    if not images:
        return torch.empty(0, 3, dataset.size, dataset.size, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    return torch.cat(images), torch.cat(labels)


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to SHIFT pixels (edge pixels repeated), one offset per image."""
    size = images.shape[-1]
    padded = F.pad(images, (SHIFT,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * SHIFT + 1, (images.shape[0], 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + size, dx:dx + size] for i, (dy, dx) in enumerate(offsets)])


def _as_input(images_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images_uint8.to(device).float() / 127.5 - 1.0


def train_consistency_classifier(reference_dir, *, size: int = DEFAULT_SIZE, epochs: int = DEFAULT_EPOCHS,
                                 width: int = DEFAULT_WIDTH, max_per_class: int = DEFAULT_MAX_PER_CLASS,
                                 device="cpu", progress: bool = True) -> tuple[SmallClassifier, dict]:
    """Train on the reference folder (uncached); returns (model in eval mode, info).

    info: accuracy (held-out, None when no class has 2 images), num_images (decoded and used),
    num_train, num_holdout, num_skipped (unreadable), class_names, key, settings.
    """
    _check_settings(size, epochs, width, max_per_class)
    device = torch.device(device)
    records, names = _labelled_records(reference_dir)
    settings = _settings(size, epochs, width, max_per_class)
    generator = torch.Generator().manual_seed(SEED)
    train_idx, hold_idx = _split([r.label for r in records], len(names), max_per_class, generator)
    # The very records the split indexes: a second listing could differ if the folder changes meanwhile.
    dataset = ImageDataset(records, size, train=False)
    train_x, train_y = _decode(dataset, train_idx, 64, progress, "classifier: decode")
    hold_x, hold_y = _decode(dataset, hold_idx, 64, progress, "classifier: decode held-out")
    if train_x.shape[0] < 2:
        raise ValueError(f"{reference_dir}: fewer than 2 readable training images for the classifier; "
                         "check the reference folder")
    # Initial weights from a fixed seed without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = SmallClassifier(len(names), size=size, width=width)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    n = train_x.shape[0]
    bar = tqdm(range(epochs), desc="classifier: train", unit="epoch", disable=not progress)
    for _ in bar:
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, TRAIN_BATCH):
            rows = order[start:start + TRAIN_BATCH]
            x = _augment(_as_input(train_x[rows], torch.device("cpu")), generator).to(device)
            loss = F.cross_entropy(model(x), train_y[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * rows.numel()
        bar.set_postfix(loss=f"{total / n:.3f}")
    model.eval()
    accuracy = None
    if hold_x.shape[0]:
        correct = 0
        for start in range(0, hold_x.shape[0], 256):
            pred = predict(model, _as_input(hold_x[start:start + 256], device))
            correct += int((pred.cpu() == hold_y[start:start + 256]).sum())
        accuracy = correct / hold_x.shape[0]
    info = {
        "accuracy": accuracy,
        "num_images": int(train_x.shape[0] + hold_x.shape[0]),
        "num_train": int(train_x.shape[0]),
        "num_holdout": int(hold_x.shape[0]),
        "num_skipped": len(train_idx) + len(hold_idx) - int(train_x.shape[0] + hold_x.shape[0]),
        "class_names": names,
        "key": _key(records, settings),
        "settings": settings,
    }
    return model, info


def _load_cached(weights: Path, meta: Path, key: str, device: torch.device) -> tuple[SmallClassifier, dict] | None:
    """The cached classifier, or None when it is absent or anything about it is wrong."""
    if not (weights.is_file() and meta.is_file()):
        return None
    from safetensors.torch import load_file

    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        settings = info["settings"]
        if info.get("key") != key or settings.get("format") != FORMAT:
            raise ValueError(f"key {info.get('key')!r} / format {settings.get('format')!r} do not match")
        state = load_file(str(weights))
        model = SmallClassifier(len(info["class_names"]), size=int(settings["size"]), width=int(settings["width"]))
        model.load_state_dict(state, strict=True)
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise ValueError("non-finite weights")
    # A cache is only a shortcut: any failure to read it (truncated file, foreign JSON, other
    # architecture) means retraining, never trusting a half-read model.
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, SafetensorError) as err:
        log.warning("cached classifier %s is unusable (%s); retraining", weights, " ".join(str(err).split()))
        return None
    return model.to(device).eval(), info


def load_or_train_classifier(reference_dir, *, cache_dir=None, size: int = DEFAULT_SIZE, epochs: int = DEFAULT_EPOCHS,
                             width: int = DEFAULT_WIDTH, max_per_class: int = DEFAULT_MAX_PER_CLASS,
                             device="cpu", progress: bool = True) -> tuple[SmallClassifier, dict]:
    """The classifier for `reference_dir`: loaded from the cache when its key matches, else trained and cached.

    `cache_dir` defaults to $VQGAN_LC_CACHE or ~/.cache/vqgan-lc; files go to its `classifiers/`
    subfolder. info holds accuracy, num_images, class_names, key (see `train_consistency_classifier`) and
    `cached` (True when loaded, False when trained now).
    """
    _check_settings(size, epochs, width, max_per_class)
    device = torch.device(device)
    records, _ = _labelled_records(reference_dir)
    key = _key(records, _settings(size, epochs, width, max_per_class))
    folder = cache_root(cache_dir) / "classifiers"
    weights, meta = folder / f"{key}.safetensors", folder / f"{key}.json"
    cached = _load_cached(weights, meta, key, device)
    if cached is not None:
        model, info = cached
        return model, {**info, "cached": True}
    model, info = train_consistency_classifier(reference_dir, size=size, epochs=epochs, width=width,
                                               max_per_class=max_per_class, device=device, progress=progress)
    if info["key"] != key:  # a reference file changed while the classifier trained: do not file it under the old key
        log.warning("reference folder %s changed during classifier training; not caching", reference_dir)
        return model, {**info, "cached": False}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Weights first, JSON second: the JSON is what marks a cache entry complete.
    atomic_save_safetensors(state, weights, metadata={"key": key, "format": FORMAT})
    atomic_write_json(meta, info)
    return model, {**info, "cached": False}


def predict(model: SmallClassifier, images: torch.Tensor) -> torch.Tensor:
    """Images (B,3,H,W) in [-1, 1] -> (B,) predicted labels (int64, on the images' device).

    Other sizes are resized to the classifier's (bicubic, antialiased when shrinking, which is
    close to the PIL bicubic the training images went through); non-square images are stretched.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"predict: expected images (B,3,H,W), got {tuple(images.shape)}")
    size = model.size
    x = images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    x = x.clamp(-1, 1).to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        labels = model(x).argmax(dim=1)
    model.train(was_training)
    return labels.to(images.device)
