"""Token and latent caches: every training image encoded once by the tokenizer.

`vqgan-lc cache tokens TOKENIZER --data DIR --out CACHE` stores int32 (h, w) token ids per image
(what GPT trains on); `cache latents` stores the quant_conv output (D', h, w), the continuous
latents LDM/DiT/SiT model, unscaled (the paper's choice) — per-channel statistics measured on
the cache are stored beside it (`latent_stats.json`) for a generator that wants a scale.
`--write-scale` also stores the measured 1/std as the cache's own `latent_scale.json`, from
where `train-gen` takes it as its default `latent_scale` (the tokenizer is never written to).
`--flip` also stores each image's horizontal mirror, and training picks one of the two per
item and epoch (seeded, so a resumed run sees the same choice).

Generators read the cache, never the images. It is the shared sharded cache (`data/cache.py`):
resumable, sliced over `torchrun` ranks, memory-bounded.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..config import Config
from ..data.cache import CacheStore, read_header, write_cache
# the encoded-image cache's reader, under the names the generators use
from ..data.encoded import ENCODED_KINDS as KINDS
from ..data.encoded import EncodedImageDataset as GeneratorDataset
from ..data.encoded import open_encoded_cache as open_cache
from ..files import atomic_write_json

STATS_NAME = "latent_stats.json"
SCALE_NAME = "latent_scale.json"  # written on request: makes the measured scale train-gen's default


@dataclass
class CacheConfig(Config):
    tokenizer: str = ""             # tokenizer folder (config.json + model.safetensors)
    data: str = ""                  # image folder (class sub-folders -> labels), .txt list, or "demo..."
    out: str = ""                   # cache folder
    kind: str = "tokens"            # "tokens" (GPT) | "latents" (LDM / DiT / SiT)
    flip: bool = False              # also store each image's horizontal mirror
    image_size: int | None = None   # default: the tokenizer's resolution
    batch_size: int = 32
    workers: int = 2
    shard_mb: float = 256
    device: str = "auto"
    progress: bool = True
    write_scale: bool = False       # latents: make the measured scale train-gen's default for this cache

    def check(self) -> None:
        if not (self.tokenizer and self.data and self.out):
            raise ValueError("a cache needs the tokenizer folder, --data and --out")
        if self.kind not in KINDS:
            raise ValueError(f"cache kind must be one of {KINDS}, got {self.kind!r}")
        if self.write_scale and self.kind != "latents":
            raise ValueError("--write-scale measures latents; use it with `vqgan-lc cache latents`")
        if self.batch_size < 1 or self.workers < 0 or self.shard_mb <= 0:
            raise ValueError("batch_size >= 1, workers >= 0 and shard_mb > 0 are needed")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")


def build_cache(config: CacheConfig) -> CacheStore | None:
    """Encode `config.data` with the tokenizer into `config.out` (or resume); returns the store."""
    from ..data import build_dataset
    from ..files import check_writable_dir, refuse_output_inside
    from ..tokenizer.model import VQModel
    from ..tokenizer.fingerprint import tokenizer_fingerprint

    config.validate()
    refuse_output_inside(config.out, config.data, "cache folder", "data folder")
    check_writable_dir(config.out, "cache folder")
    env = distributed.init(config.device)
    model = VQModel.from_pretrained(config.tokenizer).to(env.device).eval()
    size = config.image_size or model.config.autoencoder.resolution
    grid = model.token_grid(size)
    dataset = build_dataset(config.data, size, train=False)
    key = config.kind

    def encode(images: torch.Tensor) -> dict[str, np.ndarray]:
        images = images.to(env.device)
        variants = {key: images}
        if config.flip:
            variants[f"{key}_flip"] = images.flip(-1)
        out = {}
        for name, batch in variants.items():
            if config.kind == "tokens":
                out[name] = model.encode(batch).indices.to(torch.int32).cpu().numpy()
            else:
                out[name] = model.encode_latents(batch).float().cpu().numpy()
        return out

    header = {"kind": config.kind, "tokenizer": os.path.abspath(config.tokenizer), "data": str(config.data),
              "image_size": size, "grid": list(grid), "flip": config.flip,
              "codebook_size": model.codebook_size, "latent_dim": model.quantizer.dim,
              "tokenizer_config": _encoding_config(model.config.to_dict()),
              "tokenizer_fingerprint": tokenizer_fingerprint(config.tokenizer)}
    found = read_header(config.out)
    if found and same_encoder(found.get("tokenizer_config") or {}, header["tokenizer_config"]):
        # written before a tokenizer setting existed: the stored config lacks it, and its default
        # encodes alike, so the cache is this job's; keep the stored form for write_cache's check
        header["tokenizer_config"] = found["tokenizer_config"]
    store = write_cache(dataset, encode, config.out, header=header, batch_size=config.batch_size,
                        num_workers=config.workers, shard_mb=config.shard_mb, progress=config.progress)
    if store is not None and config.kind == "latents" and env.is_main:
        atomic_write_json(Path(config.out) / STATS_NAME, latent_stats(store))
        if config.write_scale:
            write_latent_scale(config.out)
    distributed.barrier()
    return store


def _encoding_config(tokenizer_config: dict) -> dict:
    """The tokenizer config without its latent statistics: they are measured from caches, do
    not change what the tokenizer encodes, and must not make a finished cache look like
    another job's once `--write-scale` has stored them in the tokenizer."""
    return {k: v for k, v in tokenizer_config.items() if k != "latent_scale"}


def write_latent_scale(cache_folder: str | os.PathLike) -> float:
    """Store the scale measured on a latent cache (1 / overall std, see `latent_stats`) in the
    cache as train-gen's default `latent_scale` for it; returns it.

    Only on request (`vqgan-lc cache latents ... --write-scale`): the paper trains its
    generators on unscaled latents."""
    store = open_cache(str(cache_folder))
    if store.header.get("kind") != "latents":
        raise ValueError(f"{cache_folder} holds token ids; a latent scale is measured on `vqgan-lc cache latents`")
    stats_path = Path(cache_folder) / STATS_NAME
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else latent_stats(store)
    scale = float(stats["scale"])
    atomic_write_json(Path(cache_folder) / SCALE_NAME, {"latent_scale": scale})
    return scale


def default_latent_scale(store: CacheStore) -> float | None:
    """train-gen's default `latent_scale` for a latent cache: the one stored in the cache by
    `--write-scale`; else one an earlier version stored in the tokenizer's config (read only if
    that folder still holds the tokenizer that encoded the cache); else None (unscaled)."""
    from ..pretrained import CONFIG_NAME
    from ..tokenizer.model import VQModel

    if store.header.get("kind") != "latents":
        return None
    stored = Path(store.folder) / SCALE_NAME
    if stored.is_file():
        try:
            return float(json.loads(stored.read_text())["latent_scale"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ValueError(f"{stored} is unreadable; run `vqgan-lc cache latents ... --write-scale` again "
                             "or delete it") from None
    folder = store.header.get("tokenizer")
    if not folder or not (Path(folder) / CONFIG_NAME).is_file():
        return None
    config = VQModel.read_config(folder)
    if not same_encoder(store.header.get("tokenizer_config", {}), config.to_dict()):
        return None
    return config.latent_scale


def same_encoder(a: dict, b: dict) -> bool:
    """Two tokenizer configs (one may come from JSON) that encode alike, whatever their latent statistics."""
    from ..tokenizer.config import TokenizerConfig

    if not (a and b):  # a cache from before headers named their tokenizer: nothing to match
        return False

    def canonical(data: dict) -> dict:  # through the dataclass: defaults filled in, lists and tuples alike
        return json.loads(json.dumps(_encoding_config(TokenizerConfig.from_dict(_encoding_config(data)).to_dict())))
    try:
        return canonical(a) == canonical(b)
    except ValueError:  # not a tokenizer config this version reads (another model type's fields)
        return False


def latent_stats(store: CacheStore, chunk: int = 4096) -> dict:
    """Per-channel mean and std of the cached latents (streamed in chunks), and the scale
    1 / overall std that would bring them to unit variance."""
    rows = store.rows("latents")
    c = rows.shape[1]
    total, total_sq, count = np.zeros(c), np.zeros(c), 0
    for start in range(0, len(rows), chunk):
        block = np.asarray(rows[start:start + chunk], dtype=np.float64)  # (n, C, h, w)
        total += block.sum(axis=(0, 2, 3))
        total_sq += (block ** 2).sum(axis=(0, 2, 3))
        count += block.shape[0] * block.shape[2] * block.shape[3]
    mean = total / count
    var = np.maximum(total_sq / count - mean ** 2, 0.0)
    # every channel has the same count, so the pooled variance is E[x^2] - E[x]^2 over channels
    overall = float(np.sqrt(max((var + mean ** 2).mean() - mean.mean() ** 2, 0.0)))
    return {"mean": mean.tolist(), "std": np.sqrt(var).tolist(), "scale": 1.0 / max(overall, 1e-12),
            "num_values_per_channel": int(count)}
