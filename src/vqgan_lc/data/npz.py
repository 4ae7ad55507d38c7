"""ADM-format .npz files: sample batches (`arr_0` images) and reference statistics (`mu`, `sigma`, ...).

The ADM evaluation suite (guided-diffusion's `evaluations/evaluator.py`) reads a sample batch
as an .npz whose `arr_0` is (N, H, W, 3) uint8 images (RGB, rows in sample order) and whose
optional `arr_1` is (N,) integer class labels; its reference batches (e.g.
`VIRTUAL_imagenet256_labeled.npz`) add `mu` / `sigma` (Inception pool features' mean and
covariance) and `mu_s` / `sigma_s` (the same for the spatial sFID features).

50,000 images of 256 px are 9.8 GB, so `NpzImages` never loads `arr_0` whole: it parses the
member's .npy header and reads rows in chunks straight from the file (an uncompressed member,
as np.savez writes it, is read at its byte offset in the .npz; a compressed one is streamed
through the zip decoder).
"""
from __future__ import annotations

import os
import struct
import zipfile
from typing import Iterator

import numpy as np

IMAGES_KEY = "arr_0"
LABELS_KEY = "arr_1"
STATS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip member's local file header (30 bytes)


def npz_keys(path: str | os.PathLike) -> list[str]:
    """The array names in an .npz (its members without ".npy"); a one-line error for anything else."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [name[:-4] for name in archive.namelist() if name.endswith(".npy")]
    except (OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable .npz file ({' '.join(str(err).split())}); pass an ADM sample or "
                         "reference batch, a stats file from `vqgan-lc eval-gen stats`, or an image folder") from None


def is_stats_npz(path: str | os.PathLike) -> bool:
    return "mu" in npz_keys(path)


class NpzImages:
    """`arr_0` of an ADM sample batch, read in row chunks: never more than one chunk in memory."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        keys = npz_keys(self.path)
        if IMAGES_KEY not in keys:
            raise ValueError(f"{self.path} has no {IMAGES_KEY} (it holds {', '.join(keys) or 'nothing'}); an ADM sample "
                             f"batch stores its images as {IMAGES_KEY}, (N, H, W, 3) uint8")
        with zipfile.ZipFile(self.path) as archive:
            info = archive.getinfo(f"{IMAGES_KEY}.npy")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f"{self.path}: {IMAGES_KEY} is in .npy format {version}; write it with np.savez "
                                     "(format 1.0 or 2.0)")
                shape, fortran, dtype = read_header(member)
                header_bytes = member.tell()
            self.has_labels = f"{LABELS_KEY}.npy" in archive.namelist()
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or fortran or shape[0] < 1:
            raise ValueError(f"{self.path}: {IMAGES_KEY} is {dtype} {shape}{' (Fortran order)' if fortran else ''}; an "
                             "ADM sample batch holds (N, H, W, 3) uint8 RGB images in C order")
        self.shape = tuple(int(s) for s in shape)
        self.row_bytes = int(np.prod(self.shape[1:]))
        self._stored = info.compress_type == zipfile.ZIP_STORED
        self._member_offset = info.header_offset
        self._header_bytes = header_bytes

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    def labels(self) -> np.ndarray | None:
        """`arr_1` as (N,) int64, or None when the file has none."""
        if not self.has_labels:
            return None
        with np.load(self.path, allow_pickle=False) as data:  # reads this member only
            labels = np.asarray(data[LABELS_KEY])
        if labels.shape != (len(self),) or labels.dtype.kind not in "iu":
            raise ValueError(f"{self.path}: {LABELS_KEY} must hold one integer label per image ({len(self)}), got "
                             f"{labels.dtype} {labels.shape}")
        return labels.astype(np.int64)

    def _data_offset(self, f) -> int:
        """Byte offset of arr_0's first row in the .npz file (uncompressed members only)."""
        f.seek(self._member_offset)
        fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
        name_len, extra_len = fields[-2], fields[-1]
        return self._member_offset + _LOCAL_HEADER.size + name_len + extra_len + self._header_bytes

    def batches(self, start: int = 0, stop: int | None = None, batch_size: int = 64) -> Iterator[np.ndarray]:
        """Rows [start, stop) as consecutive (<= batch_size, H, W, 3) uint8 arrays."""
        stop = len(self) if stop is None else stop
        if not 0 <= start <= stop <= len(self) or batch_size < 1:
            raise ValueError(f"NpzImages.batches: need 0 <= start <= stop <= {len(self)} and batch_size >= 1, got "
                             f"{start}, {stop}, {batch_size}")
        if self._stored:
            with open(self.path, "rb") as f:
                f.seek(self._data_offset(f) + start * self.row_bytes)
                yield from self._read_rows(f, start, stop, batch_size)
        else:
            with zipfile.ZipFile(self.path) as archive, archive.open(f"{IMAGES_KEY}.npy") as member:
                member.seek(self._header_bytes + start * self.row_bytes)  # decodes and drops what comes before
                yield from self._read_rows(member, start, stop, batch_size)

    def _read_rows(self, f, start: int, stop: int, batch_size: int) -> Iterator[np.ndarray]:
        for lo in range(start, stop, batch_size):
            n = min(batch_size, stop - lo)
            wanted = n * self.row_bytes
            data = bytearray()
            while len(data) < wanted:
                piece = f.read(wanted - len(data))
                if not piece:
                    raise ValueError(f"{self.path}: {IMAGES_KEY} ends after {lo + len(data) // self.row_bytes} of "
                                     f"{len(self)} images; the file is truncated")
                data += piece
            yield np.frombuffer(data, dtype=np.uint8).reshape(n, *self.shape[1:])  # writable: owns its bytes

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) as one array (for small ranges)."""
        stop = len(self) if stop is None else stop
        parts = list(self.batches(start, stop, max(1, stop - start)))
        return parts[0] if parts else np.zeros((0, *self.shape[1:]), dtype=np.uint8)
