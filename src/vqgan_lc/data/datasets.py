"""The one dataset interface: image folders, file lists and the embedded demo set.

Items are dicts {"image": (3, size, size) float in [-1, 1], "label": int (-1 if none),
"index": int, "upscaled": bool}; an unreadable file yields None, which
`collate_skip_corrupt` drops so that a few bad files never stop a run.

Corrupt-file reports travel with the batch: `collate_skip_corrupt` runs in the same
process as the `__getitem__` calls that produced the batch (a DataLoader worker or the
main process), so it drains that process's pending skip records into batch["skipped"].
That way the caller learns every skipped path even with num_workers > 0, where the
dataset object in the main process never sees the worker-side failures.
"""
from __future__ import annotations

import logging
import os

import torch
from torch.utils.data import Dataset

from vqgan_lc.data.images import ImageError, ImageRecord, class_names, list_images, load_image
from vqgan_lc.data.transforms import EvalTransform, TrainTransform, item_generator

logger = logging.getLogger(__name__)

# (path, reason) pairs recorded by __getitem__ and not yet handed to a batch (per process).
_pending_skips: list[tuple[str, str]] = []


class ImageDataset(Dataset):
    """Map-style dataset over image records with deterministic per-item augmentation."""

    def __init__(self, records: list[ImageRecord], size: int, train: bool, seed: int = 0):
        if not records:
            raise ValueError("ImageDataset: no image records given")
        self.records = list(records)
        self.size = size
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.class_names = class_names(self.records)
        self.transform = TrainTransform(size) if train else EvalTransform(size)
        self.skipped: list[tuple[str, str]] = []  # (path, reason), this process only
        self.num_upscaled = 0  # distinct images smaller than `size`, this process only
        self._upscaled: set[int] = set()
        self._skipped_indices: set[int] = set()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's crops; call before creating the epoch's DataLoader iterator
        (non-persistent workers copy the dataset, and with it the epoch, when they start)."""
        if epoch < 0:
            raise ValueError(f"set_epoch: epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict | None:
        if not 0 <= i < len(self.records):
            raise IndexError(f"ImageDataset: index {i} out of range for {len(self.records)} images")
        record = self.records[i]
        try:
            img = load_image(record.path, min_short_side=self.size)
        except ImageError as e:
            self._record_skip(i, record.path, str(e))
            return None
        upscaled = min(img.size) < self.size
        if upscaled:
            self._record_upscale(i, img.size)
        # Eval crops do not depend on the epoch: the same images are scored every time.
        generator = item_generator(self.seed, self.epoch if self.train else 0, i)
        return {
            "image": self.transform(img, generator),
            "label": -1 if record.label is None else record.label,
            "index": i,
            "upscaled": upscaled,
        }

    def _record_skip(self, i: int, path: str, reason: str) -> None:
        _pending_skips.append((path, reason))
        if i not in self._skipped_indices:
            self._skipped_indices.add(i)
            self.skipped.append((path, reason))
            logger.warning("skipping unreadable image: %s", reason)

    def _record_upscale(self, i: int, image_size: tuple[int, int]) -> None:
        if i in self._upscaled:
            return
        self._upscaled.add(i)
        self.num_upscaled = len(self._upscaled)
        if self.num_upscaled == 1:
            logger.warning(
                "images smaller than %d px on the short side are upscaled (first: %s, %dx%d); "
                "further ones are not logged: see dataset.num_upscaled / batch['num_upscaled']",
                self.size, self.records[i].path, *image_size,
            )

    def upscale_summary(self) -> str:
        return f"{self.num_upscaled} of {len(self)} images were upscaled to {self.size} px"


def collate_skip_corrupt(batch: list[dict | None]) -> dict:
    """Stack the readable items; report what was dropped.

    Returns {"image": (B, 3, H, W), "label": (B,), "index": (B,), "num_upscaled": int,
    "num_skipped": int, "skipped": [(path, reason), ...]}. When every item was unreadable,
    "image" has batch size 0 and the caller should skip the step.
    """
    kept = [item for item in batch if item is not None]
    num_skipped = len(batch) - len(kept)
    skipped = _pending_skips[-num_skipped:] if num_skipped else []
    _pending_skips.clear()  # anything older belongs to items fetched outside a batch
    if not kept:
        return {"image": torch.empty(0, 3, 0, 0), "label": torch.empty(0, dtype=torch.long),
                "index": torch.empty(0, dtype=torch.long), "num_upscaled": 0,
                "num_skipped": num_skipped, "skipped": skipped}
    return {
        "image": torch.stack([item["image"] for item in kept]),
        "label": torch.tensor([item["label"] for item in kept], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in kept], dtype=torch.long),
        "num_upscaled": sum(bool(item.get("upscaled", False)) for item in kept),
        "num_skipped": num_skipped,
        "skipped": skipped,
    }


DEMO_DEFAULT_CROPS = {"train": 2048, "eval": 256}


def _parse_demo_source(source: str, train: bool) -> tuple[str, int]:
    """"demo", "demo:train", "demo:eval", optionally ":<num_crops>" -> (split, num_crops)."""
    parts = source.split(":")[1:]
    split = "train" if train else "eval"
    num_crops = None
    for part in parts:
        if part in ("train", "eval"):
            split = part
        elif part.isdigit() and int(part) > 0:
            num_crops = int(part)
        else:
            raise ValueError(
                f"bad demo source {source!r}: expected demo[:train|eval][:<num_crops>]"
            )
    return split, num_crops or DEMO_DEFAULT_CROPS[split]


def build_dataset(source: str | os.PathLike, size: int, train: bool, seed: int = 0) -> Dataset:
    """A folder, a .txt file list, or "demo" / "demo:train" / "demo:eval" (":N" sets the
    number of demo crops). A bare "demo" takes the split from `train`; a folder that is
    itself called "demo" is reached as "./demo"."""
    text = os.fspath(source)
    if text == "demo" or text.startswith("demo:"):
        from vqgan_lc.data.demo import DemoCrops  # decodes photos only when asked for

        split, num_crops = _parse_demo_source(text, train)
        return DemoCrops(size, num_crops, split=split, seed=seed, train=train)
    return ImageDataset(list_images(text), size, train=train, seed=seed)
