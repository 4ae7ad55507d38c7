"""A cache of per-image arrays: images -> encoder -> .npy shards, resumable and sliced over ranks.

What it holds. `write_cache(dataset, encode, folder, header=...)` runs `encode` over batches of
images and keeps, for every readable image, one array per key of the dict `encode` returns,
each key with a fixed per-item shape and dtype: pooled backbone features (16, C) fp16 for a
codebook, token ids (h, w) int32 or continuous latents (D', h, w) for a generator. The
image's dataset index and label are stored with its arrays.

A cache folder holds
  manifest.json                  written last, by rank 0 (below); its presence means "finished"
  shard-r<R>-<NNNNN>.<key>.npy   (items, *per-item shape): rank R's NNNNN-th shard, one file per key
  skipped.txt                    unreadable images, one "path<TAB>reason" line each
  rank<R>.json                   rank R's progress, read to resume

manifest.json: "header" (the caller's description of the job that wrote the folder), "arrays"
({key: {"dtype", "shape"}}, shape per item), "image_ids" and "labels" (one per stored item, in
dataset order; label -1: unlabelled), "class_names", "num_listed", "num_skipped", and "shards"
([{"file", "num_items"}]: the shard's arrays are "<file>.<key>.npy").

Memory is bounded: RAM holds one shard's buffer (about `shard_mb`) and the DataLoader's
prefetch whatever the dataset size, and reading goes through memory maps (`ShardedRows`).

Resume. After each shard, rank<R>.json records the shard and the next dataset index. A rerun
into the same folder keeps the complete shards and continues from there (a shard cut short by
the interruption is redone), so the result equals an uninterrupted run. The progress records
carry the header: a folder begun by another job (other data, encoder or settings) is refused
rather than mixed.

torchrun. Rank R takes the R-th contiguous slice of the dataset (`distributed.slice_of`) and
writes its own shards; once every rank is done, rank 0 concatenates the progress records, in
rank order, into one manifest, so the stored order is the dataset's order whatever the world size.

One loop. `_encode_all` is the only place in the package that runs an encoder over batches of
images: `write_cache` feeds it a slice of a dataset and a shard writer, `encode_in_memory` any
in-memory image source (no files, no resume) and a buffer it returns.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from vqgan_lc import distributed
from vqgan_lc.data.datasets import collate_skip_corrupt
from vqgan_lc.files import atomic_save_npy, atomic_write_json, atomic_write_text, read_json

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SKIPPED = "skipped.txt"
FORMAT = 1  # layout of the folder; bumped when a reader could misread an older one
_KEY = re.compile(r"[A-Za-z0-9_]+")  # keys become part of file names

# images (B, 3, H, W) on the CPU -> {key: (B, *per-item shape)} arrays (numpy or torch)
Encoder = Callable[[torch.Tensor], dict]


# ----------------------------------------------------------------------------- reading


class ShardedRows:
    """Read-only rows spread over .npy shards, read through memory maps.

    Supports len, `shape`, `dtype`, an int (one row), slices and 1-d arrays of row numbers;
    every read returns a new (writable) array. `flatten=True` merges each shard's first two
    axes: shards of (items, 16, C) per-image features read as one (items * 16, C) matrix.
    Pickling keeps only the file names, so DataLoader workers reopen the maps instead of
    receiving a copy of the data.
    """

    def __init__(self, files: list[str], *, flatten: bool = False):
        if not files:
            raise ValueError("ShardedRows: no shard files given; pass at least one .npy file")
        self.files = [os.fspath(f) for f in files]
        self.flatten = flatten
        self._open()

    def _open(self) -> None:
        maps = [_map_shard(f) for f in self.files]
        if self.flatten:
            if any(m.ndim < 2 for m in maps):
                raise ValueError("ShardedRows: flatten needs shards of 2 or more axes; open them with flatten=False")
            maps = [m.reshape(-1, *m.shape[2:]) for m in maps]  # a view: nothing is read
        layouts = {(m.shape[1:], m.dtype.name) for m in maps}
        if len(layouts) > 1:
            raise ValueError(f"shards disagree on the row shape or dtype: {sorted(layouts)}; rebuild the cache folder")
        self.row_shape, dtype = layouts.pop()
        self.dtype = np.dtype(dtype)
        self._maps = maps
        self._offsets = np.cumsum([0] + [len(m) for m in maps])

    def __getstate__(self) -> dict:
        return {"files": self.files, "flatten": self.flatten}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    def __array__(self, dtype=None, copy=None):
        whole = self[0:len(self)]
        return whole if dtype is None else whole.astype(dtype)

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            row = int(rows) + (len(self) if rows < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"ShardedRows: row {int(rows)} out of range for {len(self)} rows")
            shard = int(np.searchsorted(self._offsets, row, side="right")) - 1
            return np.array(self._maps[shard][row - self._offsets[shard]])
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            return self._range(start, stop)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise IndexError("ShardedRows: index with an int, a slice or a 1-d array of row numbers")
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"ShardedRows: row index out of range for {len(self)} rows")
        out = np.empty((rows.size, *self.row_shape), dtype=self.dtype)
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        for s in np.unique(shard):
            where = shard == s
            out[where] = self._maps[s][rows[where] - self._offsets[s]]
        return out

    def _range(self, start: int, stop: int) -> np.ndarray:
        pieces = []
        for s, m in enumerate(self._maps):
            lo, hi = max(start, self._offsets[s]), min(stop, self._offsets[s + 1])
            if lo < hi:
                pieces.append(m[lo - self._offsets[s]:hi - self._offsets[s]])
        if not pieces:
            return np.empty((0, *self.row_shape), dtype=self.dtype)
        return np.concatenate(pieces)  # a copy even for one piece: callers never hold a map


def _map_shard(path: str) -> np.ndarray:
    """A memory map of one .npy shard; a shard cut short or damaged is named in one line."""
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise FileNotFoundError(f"cache shard {path} is missing; delete the cache folder and rerun the job that "
                                "wrote it") from None
    except (ValueError, OSError, EOFError) as err:  # numpy: "mmap length is greater than file size", bad header
        raise ValueError(f"cache shard {path} is damaged ({' '.join(str(err).split())}); delete the cache folder and "
                         "rerun the job that wrote it") from None


def _read_json(path: str, what: str):
    return read_json(path, what, "delete the cache folder and rerun the job that wrote it")


class CacheStore:
    """A finished cache folder: its manifest, and each key's arrays as memory-mapped rows."""

    def __init__(self, folder: str, manifest: dict):
        self.folder = os.fspath(folder)
        self.manifest = manifest
        self._rows: dict[tuple[str, bool], ShardedRows] = {}

    @classmethod
    def open(cls, folder: str):
        path = os.path.join(folder, MANIFEST)
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise ValueError(f"{folder} is a file, not a folder; pass the cache folder (the --out of the cache command)")
        if not os.path.isfile(path):
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"cache folder {folder} does not exist")
            if read_header(folder) is None:  # no job ever wrote here: not a cache, not an unfinished one
                raise FileNotFoundError(f"{folder} is not a cache folder (no {MANIFEST}); write one first, e.g. with "
                                        "`vqgan-lc cache tokens|latents`")
            raise FileNotFoundError(f"{folder}: no {MANIFEST}; the job writing it did not finish (run it again to resume)")
        store = cls(folder, _read_json(path, "the cache's manifest"))
        if not isinstance(store.manifest, dict) or store.manifest.get("format") != FORMAT:
            raise ValueError(f"{folder} was written in another cache format than {FORMAT}; delete it and rerun the job")
        for key in store.keys:
            store.rows(key)  # a missing or short shard fails here, not in the middle of training
        return store

    @property
    def header(self) -> dict:
        return self.manifest["header"]

    @property
    def keys(self) -> list[str]:
        return list(self.manifest["arrays"])

    @property
    def num_items(self) -> int:
        return len(self.manifest["image_ids"])

    @property
    def image_ids(self) -> np.ndarray:
        """Dataset index of every stored item, in storage order."""
        return np.asarray(self.manifest["image_ids"], dtype=np.int64)

    @property
    def labels(self) -> np.ndarray | None:
        """(N,) int64 class labels, or None when the items are unlabelled (label -1)."""
        labels = np.asarray(self.manifest["labels"], dtype=np.int64)
        return None if labels.size == 0 or (labels < 0).any() else labels

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    def item_shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._layout(key)["shape"])

    def rows(self, key: str, *, flatten: bool = False) -> ShardedRows:
        """`key`'s arrays: (N, *item shape) rows, one per item; flatten=True merges the item
        axis with the first per-item axis, e.g. (N, 16, C) pooled features -> (N * 16, C)."""
        layout = self._layout(key)
        if (key, flatten) not in self._rows:
            files = [os.path.join(self.folder, f"{s['file']}.{key}.npy") for s in self.manifest["shards"]]
            rows = ShardedRows(files, flatten=flatten)
            expected = self.num_items * (layout["shape"][0] if flatten and layout["shape"] else 1)
            if len(rows) != expected or rows.dtype.name != layout["dtype"]:
                raise ValueError(f"{self.folder}: the {key!r} shards hold {len(rows)} rows of {rows.dtype.name}, the "
                                 f"manifest expects {expected} of {layout['dtype']}; delete the folder and rerun the job")
            self._rows[key, flatten] = rows
        return self._rows[key, flatten]

    def _layout(self, key: str) -> dict:
        if not self.manifest["arrays"]:  # the job ran, but every image was unreadable
            raise ValueError(f"{self.folder} holds no items: none of its {self.manifest.get('num_skipped', 0)} images "
                             f"could be read (listed in {os.path.join(self.folder, SKIPPED)}); fix the images, delete "
                             "the folder and rerun")
        if key not in self.manifest["arrays"]:
            raise ValueError(f"{self.folder} holds no array {key!r}; ask for one of {self.keys or 'none (no image was readable)'}")
        return self.manifest["arrays"][key]


class CacheDataset(Dataset):
    """One key of a cache as a training set: item i -> {"x": tensor of item i's array, "label": int}.

    "x" keeps the stored dtype (int32 token ids, fp16 or fp32 latents): the model casts it.
    "label" is -1 for unlabelled items.
    """

    def __init__(self, store: CacheStore, key: str):
        self.rows = store.rows(key)
        self.labels = np.asarray(store.manifest["labels"], dtype=np.int64)
        self.class_names = store.class_names

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"CacheDataset: index {i} out of range for {len(self)} items")
        return {"x": torch.from_numpy(self.rows[i]), "label": int(self.labels[i])}


def read_header(folder: str) -> dict | None:
    """The header of the job that finished (manifest) or began (rank 0's progress) `folder`;
    None for a folder no job has written. A folder from before headers reads as {}."""
    for name in (MANIFEST, "rank0.json"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            data = _read_json(path, "the cache's header")
            return data.get("header", {}) if isinstance(data, dict) else {}
    return None


# ----------------------------------------------------------------------------- the loop


@dataclass
class _Batch:
    images: torch.Tensor  # (B, 3, H, W); B is 0 when every item of the batch was unreadable
    labels: list[int]  # one per image, -1 when unlabelled
    ids: list[int]  # dataset index (or position in the source) of each image
    skipped: list[list]  # [index, path, reason] of each unreadable item
    end: int  # position after this batch: where a resumed run starts


def _collate(items: list):
    """Dict items (None: an unreadable file) -> `collate_skip_corrupt`, plus the positions of the
    kept items inside the batch; other items (tensors, (image, label) pairs) -> torch's default."""
    if all(item is None or isinstance(item, dict) for item in items):
        batch = collate_skip_corrupt(items)
        batch["kept"] = [j for j, item in enumerate(items) if item is not None]
        return batch
    return default_collate(items)


def _unpack(batch) -> tuple[torch.Tensor, object]:
    """(images, labels or None) of a tensor batch, a dict batch ("image", "label") or an (images, labels) pair."""
    if isinstance(batch, torch.Tensor):
        images, labels = batch, None
    elif isinstance(batch, dict):
        images, labels = batch["image"], batch.get("label")
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        images, labels = batch
    else:
        raise TypeError(f"cannot read images from a batch of type {type(batch).__name__}; "
                        "give tensors, dicts with 'image' or (images, labels) pairs")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected image batches (B, 3, H, W) in [-1, 1], got {shape}")
    return images, labels


def _label_list(labels, n: int) -> list[int]:
    if labels is None:
        return [-1] * n
    labels = torch.as_tensor(labels).reshape(-1).tolist()
    if len(labels) != n:
        raise ValueError(f"a batch has {n} images and {len(labels)} labels; give one label per image")
    return [int(label) for label in labels]


def _dataset_batches(dataset, start: int, stop: int, batch_size: int, num_workers: int) -> Iterator[_Batch]:
    """Items [start, stop) of a map-style dataset, in order, through a DataLoader."""
    loader = DataLoader(dataset, batch_size=batch_size, sampler=range(start, stop), num_workers=num_workers,
                        collate_fn=_collate)
    records = getattr(dataset, "records", None)
    position = start
    for batch in loader:
        end = min(position + batch_size, stop)
        images, labels = _unpack(batch)
        if isinstance(batch, dict):
            ids = [position + j for j in batch["kept"]]
            missing = sorted(set(range(position, end)) - set(ids))
            # One (path, reason) report per unreadable item, in batch order, when the dataset
            # records them (ImageDataset does); otherwise the file name if known.
            reports = list(batch["skipped"])
            if len(reports) != len(missing):
                reports = [(records[i].path if records is not None else f"item {i}", "unreadable") for i in missing]
            skipped = [[i, path, reason] for i, (path, reason) in zip(missing, reports)]
        else:
            ids, skipped = list(range(position, end)), []
        yield _Batch(images, _label_list(labels, len(ids)), ids, skipped, end)
        position = end


def _source_batches(source, batch_size: int) -> Iterator[_Batch]:
    """Batches of an in-memory image source (see `encode_in_memory`)."""
    if isinstance(source, Dataset) and not isinstance(source, IterableDataset):
        yield from _dataset_batches(source, 0, len(source), batch_size, num_workers=0)
        return
    if isinstance(source, IterableDataset):
        source = DataLoader(source, batch_size=batch_size, collate_fn=_collate)
    elif isinstance(source, torch.Tensor):
        source = source.split(batch_size)
    position = 0
    for batch in source:
        images, labels = _unpack(batch)
        n = len(images)
        skipped = [[-1, path, reason] for path, reason in batch.get("skipped", ())] if isinstance(batch, dict) else []
        yield _Batch(images, _label_list(labels, n), list(range(position, position + n)), skipped, position + n)
        position += n


def _as_arrays(out, n: int) -> dict[str, np.ndarray]:
    if not isinstance(out, dict) or not out:
        raise TypeError(f"the encoder returned {type(out).__name__}; return a dict {{name: array (B, ...)}}")
    arrays = {}
    for key, value in out.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"the encoder returned the key {key!r}; keys name files: use letters, digits and _")
        value = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
        if value.ndim == 0 or len(value) != n:
            raise ValueError(f"the encoder returned {key!r} of shape {value.shape} for {n} images; "
                             "give every array a leading batch dimension")
        arrays[key] = value
    return arrays


class _Buffer:
    """The sink of `_encode_all`: arrays, ids, labels and skipped items of the batches so far."""

    def __init__(self, layout: dict):
        self.layout = layout  # {key: {"dtype", "shape"}}, fixed by the first batch with images
        self._clear()

    def _clear(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []
        self.ids: list[int] = []
        self.labels: list[int] = []
        self.skipped: list[list] = []
        self.nbytes = 0

    def __call__(self, arrays: dict[str, np.ndarray], batch: _Batch) -> None:
        if arrays:
            found = {key: {"dtype": a.dtype.name, "shape": list(a.shape[1:])} for key, a in arrays.items()}
            if self.layout and found != self.layout:
                raise ValueError(f"the encoder returned {found} after {self.layout}; return the same keys, "
                                 "dtypes and per-item shapes for every batch (or write to an empty folder)")
            self.layout.update(found)
            self.parts.append(arrays)
            self.nbytes += sum(a.nbytes for a in arrays.values())
        self.ids += batch.ids
        self.labels += batch.labels
        self.skipped += batch.skipped

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: np.concatenate([part[key] for part in self.parts]) for key in self.layout}


def _encode_all(batches: Iterable[_Batch], encode: Encoder, sink: Callable[[dict, _Batch], None],
                bar=None, start: int = 0) -> None:
    """The one loop that runs an encoder over image batches; `sink` keeps what it returns."""
    position = start
    for batch in batches:
        arrays = {}
        if batch.ids:
            with torch.inference_mode():
                arrays = _as_arrays(encode(batch.images), len(batch.ids))
        sink(arrays, batch)
        if bar is not None:
            bar.update(batch.end - position)
        position = batch.end


# ----------------------------------------------------------------------------- in memory


@dataclass
class EncodedItems:
    """What `encode_in_memory` returns."""

    arrays: dict[str, np.ndarray]  # key -> (N, *per-item shape)
    labels: np.ndarray  # (N,) int64, -1 for unlabelled items
    image_ids: np.ndarray  # (N,) dataset index (Dataset sources) or position among the images yielded
    skipped: list[list]  # [index (-1 when unknown), path, reason] per unreadable item

    @property
    def num_items(self) -> int:
        return len(self.image_ids)


def encode_in_memory(source, encode: Encoder, *, batch_size: int = 32) -> EncodedItems:
    """Run `encode` over an in-memory image source and keep every array in RAM (no files, no resume).

    `source`: a (N, 3, H, W) tensor in [-1, 1]; an iterable of batches (tensors, dicts with
    "image" and optionally "label", or (images, labels) pairs); or a Dataset, read in order
    exactly as `write_cache` reads it.
    """
    buffer = _Buffer({})
    _encode_all(_source_batches(source, batch_size), encode, buffer)
    if not buffer.ids:
        raise ValueError("the image source yielded no images; pass (B, 3, H, W) batches in [-1, 1]")
    return EncodedItems(buffer.arrays(), np.asarray(buffer.labels, dtype=np.int64),
                        np.asarray(buffer.ids, dtype=np.int64), buffer.skipped)


# ----------------------------------------------------------------------------- on disk


class _ShardWriter(_Buffer):
    """Buffers one shard; each flush writes the shard's files, then the progress record naming them."""

    def __init__(self, folder: str, rank: int, record: dict, record_path: str, shard_bytes: int):
        super().__init__(record["arrays"])  # the record's layout: a resumed run must encode alike
        self.folder, self.rank, self.record, self.record_path = folder, rank, record, record_path
        self.shard_bytes = shard_bytes

    def __call__(self, arrays: dict[str, np.ndarray], batch: _Batch) -> None:
        super().__call__(arrays, batch)
        self.record["next"] = batch.end
        if self.nbytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if self.ids:
            stem = f"shard-r{self.rank}-{len(self.record['shards']):05d}"
            for key, array in self.arrays().items():
                atomic_save_npy(os.path.join(self.folder, f"{stem}.{key}.npy"), array)
            self.record["shards"].append({"file": stem, "num_items": len(self.ids), "image_ids": self.ids,
                                          "labels": self.labels})
        self.record["skipped"] += self.skipped
        # The shard's files are on disk before the record that names them: a crash in between
        # only costs redoing this shard, whose files the rerun overwrites.
        atomic_write_json(self.record_path, self.record, indent=None)
        self._clear()


def _load_record(path: str, header: dict, world: int, lo: int, hi: int) -> dict:
    if not os.path.isfile(path):
        return {"header": header, "world_size": world, "slice": [lo, hi], "next": lo, "done": False,
                "arrays": {}, "shards": [], "skipped": []}
    record = _read_json(path, "the cache job's progress")
    if not isinstance(record, dict) or record.get("header") != header:
        raise ValueError(f"{path} belongs to another job (its header differs); use an empty folder")
    if record["world_size"] != world or record["slice"] != [lo, hi]:
        raise ValueError(f"{path} was begun by {record['world_size']} processes on items {record['slice']}; resume "
                         f"with the same dataset and number of processes, or use an empty folder")
    return record


def _write_slice(dataset, encode, folder, header, lo, hi, *, batch_size, num_workers, shard_mb, progress,
                 max_items) -> bool:
    """Encode this rank's items [lo, hi) from where its progress record left off; True once all are stored."""
    rank = distributed.rank()
    record_path = os.path.join(folder, f"rank{rank}.json")
    record = _load_record(record_path, header, distributed.world_size(), lo, hi)
    if record["done"]:
        return True
    start = record["next"]
    stop = hi if max_items is None else min(hi, start + max_items)
    writer = _ShardWriter(folder, rank, record, record_path, max(1, int(shard_mb * 2**20)))
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=hi - lo, initial=start - lo, unit="img", desc=os.path.basename(os.path.normpath(folder)),
                   dynamic_ncols=True)
    try:
        if start < stop:
            _encode_all(_dataset_batches(dataset, start, stop, batch_size, num_workers), encode, writer, bar, start)
    finally:
        if bar is not None:
            bar.close()
    record["done"] = record["next"] >= hi
    writer.flush()
    return record["done"]


def _merge(folder: str, dataset, header: dict, world: int) -> dict:
    """Rank 0: the per-rank records, in rank order, become one manifest and one skipped.txt."""
    records = []
    for rank in range(world):
        records.append(_read_json(os.path.join(folder, f"rank{rank}.json"), "the cache job's progress"))
    layouts = [r["arrays"] for r in records if r["arrays"]]
    if any(layout != layouts[0] for layout in layouts):
        raise ValueError(f"{folder}: ranks stored different arrays ({layouts}); give every rank the same encoder and rerun in an empty folder")
    shards = [shard for r in records for shard in r["shards"]]
    skipped = [item for r in records for item in r["skipped"]]
    atomic_write_text(os.path.join(folder, SKIPPED), "".join(f"{path}\t{reason}\n" for _, path, reason in skipped))
    manifest = {
        "format": FORMAT,
        "header": header,
        "arrays": layouts[0] if layouts else {},
        "num_listed": len(dataset),
        "num_skipped": len(skipped),
        "class_names": list(getattr(dataset, "class_names", [])),
        "image_ids": [i for shard in shards for i in shard["image_ids"]],
        "labels": [label for shard in shards for label in shard["labels"]],
        "shards": [{"file": shard["file"], "num_items": shard["num_items"]} for shard in shards],
    }
    atomic_write_json(os.path.join(folder, MANIFEST), manifest, indent=None)
    return manifest


def write_cache(dataset, encode: Encoder, folder: str, *, header: dict, batch_size: int = 32,
                num_workers: int = 2, shard_mb: float = 256, progress: bool = True,
                max_items: int | None = None) -> CacheStore | None:
    """Encode every image of `dataset` into `folder` (or resume doing so); see the module doc.

    `dataset`: map-style, items {"image" (3, H, W) in [-1, 1], "label", ...} or None for an
    unreadable file (ImageDataset, DemoCrops). `encode`: images (B, 3, H, W) on the CPU ->
    {key: (B, ...) array}; it runs under torch.inference_mode and moves images to its device.
    `header`: JSON data naming what produced the cache (data, encoder, settings); a folder begun
    or finished under another header is refused. `max_items`: items to encode in this call, per
    rank (a way to stop early). Returns the finished store on every rank, or None while work is left.
    """
    if len(dataset) == 0:
        raise ValueError("write_cache: the dataset is empty; check the image folder or list")
    if batch_size < 1 or shard_mb <= 0 or num_workers < 0:
        raise ValueError(f"write_cache: need batch_size >= 1, shard_mb > 0 and num_workers >= 0, got "
                         f"{batch_size}, {shard_mb}, {num_workers}")
    try:  # compared with the stored copy on resume, so it must survive a JSON round trip unchanged
        header = json.loads(json.dumps(header, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"write_cache: the header must be plain JSON data (str, numbers, lists, dicts): {err}") from None
    os.makedirs(folder, exist_ok=True)
    found = read_header(folder)
    if found is not None and found != header:
        differ = sorted(k for k in set(found) | set(header) if found.get(k) != header.get(k))
        raise ValueError(f"{folder} holds the cache of another job ({', '.join(differ)} differ); use an empty folder")
    if os.path.isfile(os.path.join(folder, MANIFEST)):
        store = CacheStore.open(folder)
        logger.info("%s already holds these %d items (same header): reusing it", folder, store.num_items)
        return store
    started = time.time()
    lo, hi = distributed.slice_of(len(dataset))
    done = _write_slice(dataset, encode, folder, header, lo, hi, batch_size=batch_size, num_workers=num_workers,
                        shard_mb=shard_mb, progress=progress, max_items=max_items)
    finished = distributed.all_true(done)  # also the point where every rank's records are on disk
    try:
        if finished and distributed.is_main():
            manifest = _merge(folder, dataset, header, distributed.world_size())
            if progress:
                print(f"{folder}: {len(manifest['image_ids'])} images in {time.time() - started:.1f} s, "
                      f"{manifest['num_skipped']} skipped (listed in {os.path.join(folder, SKIPPED)})")
    finally:
        # Even when the merge fails, every rank passes here: the others then fail to open the
        # manifest (one line) instead of waiting on rank 0 until the timeout.
        distributed.barrier()
    return CacheStore.open(folder) if finished else None
