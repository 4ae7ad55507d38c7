"""Exemplars: for every codebook entry, the few feature vectors nearest to it, as image patches.

A k-means entry is the centre of real image patches, so it can be shown as the patches closest
to it. `codebook build` records, per entry, the `k` (default 8) vectors of its own group (the
whole set, or its class for a per-class codebook) nearest to the entry, each as (image, grid
cell, squared distance), and writes them beside the codebook:

    codebook.safetensors  ->  codebook.exemplars.npz

The sidecar is an .npz of plain arrays (read with allow_pickle=False):
  image     (N, k) int32    row of the image table; -1 where an entry has fewer than k vectors
  cell      (N, k) int16    grid cell of the vector, row-major in the (grid_h, grid_w) grid
  distance  (N, k) float32  squared distance to the entry, ascending along k
  image_label (M,) int32    class of each image of the table (-1: unlabelled)
  paths     uint8           the image files, UTF-8, one per line (builds from an image folder), or
  pictures, picture_offsets uint8 / int64: each image as the backbone saw it, JPEG (in-memory builds)
  meta      uint8           JSON: grid, input_size, k, codebook_size, codebook_digest, class_names
Only images some exemplar uses enter the table, so the file stays small whatever the dataset:
100,000 entries x 8 exemplars take 8 MB of arrays plus at most 800,000 paths.

A vector's patch is the part of the image its grid cell pooled: the image is resized and
centre-cropped as at extraction (`EvalTransform(input_size)`), and cell (i, j) of a g x g
adaptive pool covers rows floor(i*S/g) .. ceil((i+1)*S/g) (the same bounds torch uses).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

EXEMPLARS_PER_ENTRY = 8
SUFFIX = ".exemplars.npz"
# Vectors per search call: with 100,000 entries the search tiles its distance blocks to its own
# memory budget, and the merge below handles one chunk's candidates at a time.
SEARCH_CHUNK = 65_536


def exemplars_path(codebook_path: str | os.PathLike) -> Path:
    """The sidecar's name: the codebook's, with `.safetensors` (or any suffix) -> `.exemplars.npz`."""
    path = Path(codebook_path)
    stem = path.name[:-len(".safetensors")] if path.name.endswith(".safetensors") else path.stem
    return path.with_name(stem + SUFFIX)


def codebook_digest(vectors: torch.Tensor | np.ndarray) -> str:
    """Names a codebook's content, so a sidecar left beside a rebuilt codebook is recognised."""
    array = np.ascontiguousarray(torch.as_tensor(vectors).detach().cpu().float().numpy())
    return hashlib.sha256(array.tobytes()).hexdigest()[:16]


@dataclass
class Exemplars:
    image: np.ndarray                 # (N, k) int32, -1: no vector
    cell: np.ndarray                  # (N, k) int16
    distance: np.ndarray              # (N, k) float32
    image_label: np.ndarray           # (M,) int32
    grid: tuple[int, int]
    input_size: int | None            # side the images were resized and cropped to (None: pictures as stored)
    paths: list[str] | None = None
    pictures: list[bytes] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    @property
    def per_entry(self) -> int:
        return int(self.image.shape[1])

    def of_entry(self, entry: int) -> list[dict]:
        """The recorded exemplars of `entry`, nearest first: image row, cell, distance, label, source."""
        if not 0 <= entry < self.size:
            raise ValueError(f"entry {entry} is outside the codebook (0..{self.size - 1})")
        found = []
        for image, cell, distance in zip(self.image[entry], self.cell[entry], self.distance[entry]):
            if image < 0:
                break
            found.append({"image": int(image), "cell": int(cell), "distance": float(distance),
                          "label": int(self.image_label[image]),
                          "source": self.paths[image] if self.paths is not None else f"in-memory image {int(image)}"})
        return found

    def picture(self, image: int):
        """The image as the backbone saw it (PIL, RGB)."""
        from PIL import Image

        from ..data import EvalTransform, from_tensor, load_image

        if self.pictures is not None:
            return Image.open(io.BytesIO(self.pictures[image])).convert("RGB")
        return from_tensor(EvalTransform(self.input_size)(load_image(self.paths[image])))

    def cell_box(self, cell: int, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) pixels of `cell` in a width x height picture (adaptive pool bounds)."""
        gh, gw = self.grid
        row, col = divmod(int(cell), gw)
        return (col * width // gw, row * height // gh, math.ceil((col + 1) * width / gw),
                math.ceil((row + 1) * height / gh))

    def patch(self, image: int, cell: int):
        picture = self.picture(image)
        return picture.crop(self.cell_box(cell, *picture.size))


# ----------------------------------------------------------------------------- finding them


def _merge_nearest(best_row: np.ndarray, best_dist: np.ndarray, entry: np.ndarray, row: np.ndarray,
                   dist: np.ndarray) -> None:
    """Fold candidate (entry, row, distance) triples into each entry's k nearest, in place.

    Only candidates closer than their entry's current k-th survive the first filter, and only
    the entries they touch are re-sorted, so late chunks cost little. Ties keep the lower row."""
    k = best_row.shape[1]
    closer = dist < best_dist[entry, -1]
    if not closer.any():
        return
    entry, row, dist = entry[closer], row[closer], dist[closer]
    touched = np.unique(entry)
    all_entry = np.concatenate([np.repeat(touched, k), entry])
    all_row = np.concatenate([best_row[touched].ravel(), row])
    all_dist = np.concatenate([best_dist[touched].ravel(), dist])
    # empty slots (row -1, distance inf) sort after every real candidate
    order = np.lexsort((np.where(all_row < 0, np.iinfo(np.int64).max, all_row), all_dist, all_entry))
    all_entry, all_row, all_dist = all_entry[order], all_row[order], all_dist[order]
    rank = np.arange(len(all_entry)) - np.searchsorted(all_entry, all_entry, side="left")
    keep = rank < k
    best_row[all_entry[keep], rank[keep]] = all_row[keep]
    best_dist[all_entry[keep], rank[keep]] = all_dist[keep]


def _chunks(rows: slice | np.ndarray, n: int, chunk: int):
    """Row numbers `chunk` at a time; a slice is never expanded to one array of all its rows."""
    if isinstance(rows, slice):
        start, stop, _ = rows.indices(n)
        for lo in range(start, stop, chunk):
            yield np.arange(lo, min(lo + chunk, stop))
        return
    rows = np.asarray(rows, dtype=np.int64)
    for lo in range(0, len(rows), chunk):
        yield rows[lo:lo + chunk]


def nearest_vectors(vectors, centroids: torch.Tensor, k: int = EXEMPLARS_PER_ENTRY, *,
                    groups: list[tuple[slice | np.ndarray, slice]] | None = None,
                    chunk: int = SEARCH_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Per entry, the rows of the `k` vectors nearest to it among the vectors assigned to it.

    Each vector goes to its nearest entry (`quantize.search.nearest_codes`, memory bounded by
    its budget); each entry keeps its k closest members, so an entry is shown by the patches
    it stands for. `groups`: (vector rows, entry slice) pairs searched apart (per-class
    codebooks: a class's vectors against that class's entries); default: all against all.
    Returns (N, k) int64 rows (-1 where fewer than k) and (N, k) float32 squared distances.
    """
    from ..quantize.search import codebook_sq_norms, nearest_codes
    from .kmeans import as_float32_matrix

    n, size = len(vectors), int(centroids.shape[0])
    if k < 1:
        raise ValueError(f"exemplars per entry must be >= 1, got {k}")
    best_row = np.full((size, k), -1, dtype=np.int64)
    best_dist = np.full((size, k), np.inf, dtype=np.float32)
    centroids = centroids.detach().cpu().float()
    for rows, entries in groups or [(slice(0, n), slice(0, size))]:
        book = centroids[entries]
        sq_norms = codebook_sq_norms(book)
        for ids in _chunks(rows, n, chunk):
            block = vectors[ids[0]:ids[-1] + 1] if ids[-1] - ids[0] + 1 == len(ids) else vectors[ids]
            found, dist = nearest_codes(torch.from_numpy(as_float32_matrix(block)), book, codebook_sq_norms=sq_norms)
            _merge_nearest(best_row, best_dist, found.numpy() + entries.start, ids, dist.numpy())
    return best_row, best_dist


def entry_groups(labels: np.ndarray | None, info: dict) -> list[tuple[slice | np.ndarray, slice]] | None:
    """The (vector rows, entry slice) pairs of a per-class codebook (its build's `info`); None otherwise."""
    if info.get("mode") != "per-class" or labels is None:
        return None
    from .kmeans import class_groups

    _, rows = class_groups(labels)
    offsets = np.concatenate([[0], np.cumsum(info["entries_per_class"])])
    return [(r, slice(int(lo), int(hi))) for r, lo, hi in zip(rows, offsets[:-1], offsets[1:])]


def find_exemplars(vectors, centroids: torch.Tensor, *, vectors_per_image: int, image_labels: np.ndarray | None,
                   info: dict, k: int = EXEMPLARS_PER_ENTRY, input_size: int | None,
                   paths: list[str] | None = None, pictures: list[bytes] | None = None,
                   class_names: list[str] | None = None) -> Exemplars:
    """Exemplars of a codebook built from `vectors` (image after image, `vectors_per_image` each).

    `paths` (one per image, for builds from files) or `pictures` (JPEG bytes, in-memory builds)
    say where each image comes from; only the images some exemplar uses are kept."""
    grid = math.isqrt(vectors_per_image)
    if grid * grid != vectors_per_image:
        raise ValueError(f"exemplars need a square feature grid per image, got {vectors_per_image} vectors per image")
    vector_labels = None if image_labels is None else np.repeat(image_labels, vectors_per_image)
    rows, dist = nearest_vectors(vectors, centroids, k, groups=entry_groups(vector_labels, info))
    filled = rows >= 0
    image = np.where(filled, rows // vectors_per_image, -1)
    used, table_row = np.unique(image[filled], return_inverse=True)
    image_table = np.full(image.shape, -1, dtype=np.int32)
    image_table[filled] = table_row.astype(np.int32)
    labels = np.full(len(used), -1, dtype=np.int32) if image_labels is None else image_labels[used].astype(np.int32)
    meta = {"k": k, "codebook_size": int(centroids.shape[0]), "codebook_digest": codebook_digest(centroids),
            "class_names": class_names or [], "mode": info.get("mode")}
    return Exemplars(image=image_table, cell=np.where(filled, rows % vectors_per_image, 0).astype(np.int16),
                     distance=np.where(filled, dist, np.inf).astype(np.float32), image_label=labels,
                     grid=(grid, grid), input_size=input_size,
                     paths=[paths[i] for i in used] if paths is not None else None,
                     pictures=[pictures[i] for i in used] if pictures is not None else None, meta=meta)


def jpeg_bytes(image: torch.Tensor, quality: int = 90) -> bytes:
    """A (3, H, W) image in [-1, 1] as JPEG bytes: how in-memory builds keep their pictures."""
    from ..data import from_tensor

    buffer = io.BytesIO()
    from_tensor(image.clamp(-1, 1)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- the file


def save_exemplars(path: str | os.PathLike, exemplars: Exemplars) -> None:
    """Write the sidecar atomically (files.atomic_write)."""
    from ..files import atomic_write

    meta = {**exemplars.meta, "grid": list(exemplars.grid), "input_size": exemplars.input_size, "format_version": 1}
    arrays = {"image": exemplars.image.astype(np.int32), "cell": exemplars.cell.astype(np.int16),
              "distance": exemplars.distance.astype(np.float32), "image_label": exemplars.image_label.astype(np.int32),
              "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    if exemplars.paths is not None:
        if any("\n" in p for p in exemplars.paths):
            raise ValueError("an image path holds a line break; rename the file to record its exemplars")
        arrays["paths"] = np.frombuffer("\n".join(exemplars.paths).encode(), dtype=np.uint8)
    if exemplars.pictures is not None:
        arrays["pictures"] = np.frombuffer(b"".join(exemplars.pictures), dtype=np.uint8)
        arrays["picture_offsets"] = np.cumsum([0] + [len(p) for p in exemplars.pictures]).astype(np.int64)
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def load_exemplars(path: str | os.PathLike, codebook_vectors: torch.Tensor | None = None) -> Exemplars:
    """Read a sidecar; one-line errors for a missing, unreadable or stale file (another codebook's)."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exemplar file {path}; rebuild the codebook with `vqgan-lc codebook build` "
                                "to record exemplars")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path} is not an exemplar file ({' '.join(str(err).split())}); rebuild the codebook") from None
    missing = {"image", "cell", "distance", "image_label", "meta"} - set(arrays)
    if missing or ("paths" not in arrays and "pictures" not in arrays):
        raise ValueError(f"{path} is not an exemplar file (missing {', '.join(sorted(missing)) or 'paths'}); "
                         "rebuild the codebook")
    meta = json.loads(arrays["meta"].tobytes().decode())
    if codebook_vectors is not None:
        if int(codebook_vectors.shape[0]) != arrays["image"].shape[0] or \
                meta.get("codebook_digest") != codebook_digest(codebook_vectors):
            raise ValueError(f"{path} holds the exemplars of another codebook (it was rebuilt since); rebuild the "
                             "codebook with `vqgan-lc codebook build` to record them again")
    paths = arrays["paths"].tobytes().decode().split("\n") if "paths" in arrays else None
    pictures = None
    if "pictures" in arrays:
        blob, offsets = arrays["pictures"].tobytes(), arrays["picture_offsets"]
        pictures = [blob[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    return Exemplars(image=arrays["image"], cell=arrays["cell"], distance=arrays["distance"],
                     image_label=arrays["image_label"], grid=tuple(meta["grid"]), input_size=meta.get("input_size"),
                     paths=paths, pictures=pictures, meta=meta)
