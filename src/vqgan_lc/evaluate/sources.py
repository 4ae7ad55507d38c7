"""The image sets eval-gen reads, as 8-bit batches in a fixed order that ranks can split.

- `FolderImages`: an image folder (the sampler's `<class id>/<NNNN>.png`, or real images in
  class sub-folders), each image's short side resized to `size` (PIL bicubic) and centre cropped;
- `NpzBatchImages`: `arr_0` of an ADM sample batch (.npz), read in row chunks, as stored.

Both yield `ImageBatch`es of uint8 (B, 3, H, W) pixels with each image's position in the
set's order, from any slice [lo, hi) of that order: a rank reads its slice, a resumed job
continues from where it stopped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DataLoader

from vqgan_lc.data import ImageDataset, collate_skip_corrupt
from vqgan_lc.data.npz import NpzImages
from vqgan_lc.data.transforms import to_uint8


@dataclass
class ImageBatch:
    images: torch.Tensor  # (B, 3, H, W) uint8
    positions: torch.Tensor  # (B,) int64: each image's index in the set's order
    num_skipped: int = 0  # unreadable files in this batch's range
    num_upscaled: int = 0  # images smaller than the load size


class FolderImages:
    kind = "folder"

    def __init__(self, records: list, size: int, workers: int = 2, labels: list[int] | None = None):
        if not records:
            raise ValueError("FolderImages: no images")
        self.records, self.size, self.workers = list(records), size, workers
        self.labels = labels  # requested class id per image (samples), or None

    def __len__(self) -> int:
        return len(self.records)

    def batches(self, lo: int, hi: int, batch_size: int) -> Iterator[ImageBatch]:
        if lo >= hi:
            return
        dataset = ImageDataset(self.records[lo:hi], self.size, train=False)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=self.workers,
                            collate_fn=collate_skip_corrupt)
        for batch in loader:
            yield ImageBatch(to_uint8(batch["image"]) if batch["image"].shape[0] else torch.empty(0, 3, 0, 0, dtype=torch.uint8),
                             batch["index"] + lo, batch["num_skipped"], batch["num_upscaled"])


class NpzBatchImages:
    kind = "npz"

    def __init__(self, path: str):
        self.reader = NpzImages(path)
        self.path = path
        labels = self.reader.labels()
        self.labels = None if labels is None else labels.tolist()

    def __len__(self) -> int:
        return len(self.reader)

    def batches(self, lo: int, hi: int, batch_size: int) -> Iterator[ImageBatch]:
        for start, rows in zip(range(lo, hi, batch_size), self.reader.batches(lo, hi, batch_size)):
            images = torch.from_numpy(rows).permute(0, 3, 1, 2).contiguous()
            yield ImageBatch(images, torch.arange(start, start + rows.shape[0], dtype=torch.int64))
