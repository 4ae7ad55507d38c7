"""Every call the app makes to a generator goes through this module (two functions).

`generator_info` describes a generator (and checks it can be read) once at start-up;
`sample_for_app` draws samples. Both load a pipeline folder (or a train-gen run, or a hub id)
through `GenerationPipeline`; a loaded pipeline is kept in memory between calls.
"""
from __future__ import annotations

import threading
from pathlib import Path

import torch

_LOADED: dict[tuple[str, str], object] = {}
_LOADING = threading.Lock()


def _load(generator_path: str, device: str):
    from ..generate.pipeline import GenerationPipeline

    key = (str(Path(generator_path).resolve()), str(device))
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = GenerationPipeline.from_pretrained(generator_path).to(torch.device(device))
        return _LOADED[key]


def generator_info(generator_path: str, device: str = "cpu") -> dict:
    """family, samplers (first: the default), default steps per sampler, classes, tokenizer folder."""
    pipeline = _load(generator_path, device)
    family, process = pipeline.family, pipeline.process_config
    return {"path": str(generator_path), "preset": family.name, "family": family.name,
            "samplers": list(family.samplers),
            "default_steps": {m: family.resolve_sampler(m, None)[1] for m in family.samplers},
            "num_classes": int(process.num_classes), "class_names": list(process.class_names),
            "tokenizer": str(process.tokenizer), "codebook_size": int(pipeline.tokenizer.codebook_size),
            "grid": list(process.grid)}


@torch.no_grad()
def sample_for_app(generator_path: str, class_id: int, cfg_scale: float, method: str | None, steps: int | None,
                   seed: int, count: int = 4, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """`count` samples of class `class_id`: images (B, 3, H, W) in [-1, 1] and token ids (B, h, w).

    GPT samples token ids; DiT/SiT/LDM sample latents that are snapped to the codebook (the
    paper's decoding), so every sample has a token map. Sample i draws from the generator
    seeded by (seed, i), as `vqgan-lc sample` does."""
    from ..generate.families import SampleRequest
    from ..generate.noise import RowGenerators

    pipeline = _load(generator_path, device)
    num_classes = int(pipeline.process_config.num_classes)
    if not 0 <= class_id < num_classes:
        raise ValueError(f"class {class_id} does not exist: the generator knows classes 0..{num_classes - 1}")
    method, steps = pipeline.family.resolve_sampler(method, steps)
    request = SampleRequest(method=method, steps=steps, cfg_scale=cfg_scale)
    if pipeline.family.data_kind == "tokens":
        request.top_k = max(1, pipeline.process_config.codebook_size // 10)  # the paper's 10% of the vocabulary
    labels = torch.full((count,), class_id, dtype=torch.long, device=device)
    drawn = pipeline.draw(labels, request, RowGenerators(seed, list(range(count)), device))
    images, ids = pipeline.decode(drawn)
    return images.cpu(), ids.reshape(count, *pipeline.process_config.grid).cpu()
