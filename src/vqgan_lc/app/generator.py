"""Every call the app makes to a generator goes through this module (two functions).

`generator_info` describes a generator (and checks it can be read) once at start-up;
`sample_for_app` draws samples. Both read a train-gen run folder through
`generate.sample.load_run`; a loaded run is kept in memory between calls.
"""
from __future__ import annotations

import threading
from pathlib import Path

import torch

_LOADED: dict[tuple[str, str], tuple] = {}
_LOADING = threading.Lock()


def _load(generator_path: str, device: str):
    from ..generate.sample import load_run

    key = (str(Path(generator_path).resolve()), str(device))
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = load_run(generator_path, torch.device(device))
        return _LOADED[key]


def generator_info(generator_path: str, device: str = "cpu") -> dict:
    """family, samplers (first: the default), default steps per sampler, classes, tokenizer folder."""
    from ..generate.sample import DEFAULT_STEPS, SAMPLERS
    from ..generate.training import family_of

    train_cfg, generator, tokenizer, header = _load(generator_path, device)
    family = family_of(train_cfg.generator)
    return {"path": str(generator_path), "preset": train_cfg.generator, "family": family,
            "samplers": list(SAMPLERS[family]), "default_steps": {m: DEFAULT_STEPS[m] for m in SAMPLERS[family]},
            "num_classes": int(generator.config.num_classes), "class_names": list(header.get("class_names") or []),
            "tokenizer": str(header["tokenizer"]), "codebook_size": int(tokenizer.num_codes),
            "grid": list(header["grid"])}


@torch.no_grad()
def sample_for_app(generator_path: str, class_id: int, cfg_scale: float, method: str | None, steps: int | None,
                   seed: int, count: int = 4, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """`count` samples of class `class_id`: images (B, 3, H, W) in [-1, 1] and token ids (B, h, w).

    GPT samples token ids; DiT/SiT/LDM sample latents that are snapped to the codebook (the
    paper's decoding), so every sample has a token map."""
    from ..generate.sample import DEFAULT_STEPS, SAMPLERS, _sample_latents
    from ..generate.training import family_of

    train_cfg, generator, tokenizer, header = _load(generator_path, device)
    family = family_of(train_cfg.generator)
    num_classes = int(generator.config.num_classes)
    if not 0 <= class_id < num_classes:
        raise ValueError(f"class {class_id} does not exist: the generator knows classes 0..{num_classes - 1}")
    method = method or SAMPLERS[family][0]
    if method not in SAMPLERS[family]:
        raise ValueError(f"{family} samples with {' | '.join(SAMPLERS[family])}, not {method!r}")
    steps = steps or DEFAULT_STEPS[method]
    h, w = header["grid"]
    labels = torch.full((count,), class_id, dtype=torch.long, device=device)
    rng = torch.Generator(device=device).manual_seed(seed)
    if family == "gpt":
        ids = generator.generate(labels, cfg_scale=cfg_scale, generator=rng).view(count, h, w)
        return tokenizer.decode_indices(ids).clamp(-1, 1).cpu(), ids.cpu()
    latents, _ = _sample_latents(family, generator, train_cfg, labels, (header["latent_dim"], h, w), method, steps,
                                 cfg_scale, rng)
    snapped = tokenizer.snap_latents(latents)
    return tokenizer.decode(snapped.quantized).clamp(-1, 1).cpu(), snapped.indices.cpu()
