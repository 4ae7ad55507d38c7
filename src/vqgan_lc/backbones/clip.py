"""CLIP ViT image encoders (the paper's codebook backbone) through `transformers`.

Features, as in the paper: the patch tokens of the last transformer block, passed through
the final layer norm (`post_layernorm`) and the output projection (`visual_projection`),
CLS token dropped, laid out as a (B, C, g, g) map. At 224 px:

| name          | patch | width | layers | C (projection) | grid  |
|---------------|-------|-------|--------|----------------|-------|
| clip-vit-l14  | 14    | 1024  | 24     | 768            | 16x16 |
| clip-vit-b16  | 16    | 768   | 12     | 512            | 14x14 |

Inputs in [-1, 1] are mapped to [0, 1] and normalised with CLIP's mean/std; other sizes
are resized to 224 px (the position embeddings are fixed).

Weights come from (first match wins) the `weights` argument (`--backbone-weights`), the
environment variable named in `CLIP_VIT_SPECS` (a Hugging Face model folder, or a
.safetensors/.bin/.pt state dict of `CLIPVisionModelWithProjection` or `CLIPModel`), both
resolved by `vqgan_lc.files.require_weights`, or the Hugging Face cache of the official model
id. The hub is asked only when downloads are enabled (`--download`, VQGAN_LC_DOWNLOAD=1);
otherwise `from_pretrained` runs with `local_files_only=True`.
`transformers` is an optional extra: `pip install vqgan-lc[clip]`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vqgan_lc.backbones.base import FeatureBackbone
from vqgan_lc.files import downloads_enabled, require_weights

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_clip_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images in [-1, 1] -> CLIP's input: bicubic resize to `size`, then OpenAI mean/std normalisation."""
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = images.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((images + 1) / 2 - mean) / std


@dataclass(frozen=True)
class ClipVitSpec:
    hf_id: str  # the official Hugging Face model id, looked up in the local cache only
    env: str  # environment variable that may point at local weights
    width: int
    layers: int
    heads: int
    patch: int
    projection: int
    image_size: int = 224


CLIP_VIT_SPECS = {
    "clip-vit-l14": ClipVitSpec("openai/clip-vit-large-patch14", "VQGAN_LC_CLIP_VIT_L14", 1024, 24, 16, 14, 768),
    "clip-vit-b16": ClipVitSpec("openai/clip-vit-base-patch16", "VQGAN_LC_CLIP_VIT_B16", 768, 12, 12, 16, 512),
}


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise RuntimeError("CLIP backbones need transformers: pip install 'vqgan-lc[clip]'") from err
    return transformers


def clip_vision_config(name: str, **overrides):
    """The `CLIPVisionConfig` of a named CLIP ViT; `overrides` (e.g. num_hidden_layers=1) for tests."""
    spec = CLIP_VIT_SPECS[name]
    fields = dict(
        hidden_size=spec.width, intermediate_size=4 * spec.width, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, patch_size=spec.patch, image_size=spec.image_size,
        projection_dim=spec.projection, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    fields.update(overrides)
    return _transformers().CLIPVisionConfig(**fields)


class ClipVitBackbone(FeatureBackbone):
    """Projected CLIP ViT patch tokens as a (B, projection_dim, grid, grid) map."""

    def __init__(self, name: str, model):
        config = model.config
        super().__init__(name, config.projection_dim, config.image_size, "post_layernorm+visual_projection")
        self.model = model
        self.grid = config.image_size // config.patch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = to_clip_pixels(images, self.input_size)
        tokens = self.model.vision_model(pixel_values=pixels).last_hidden_state  # (B, 1 + g*g, width)
        patches = self.model.visual_projection(self.model.vision_model.post_layernorm(tokens[:, 1:]))
        b, n, c = patches.shape
        return patches.transpose(1, 2).reshape(b, c, self.grid, self.grid)


def _load_state_file(model, path: str, name: str) -> None:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    # A full CLIPModel checkpoint also holds the text tower: keep the vision side only.
    state = {k: v for k, v in state.items() if k.startswith(("vision_model.", "visual_projection."))}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches: report the first one on one line
        detail = " ".join(str(err).split("\n")[1:2]).strip()
        raise RuntimeError(f"{path} is not a {name} vision checkpoint ({detail})") from None
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected or not state:
        raise RuntimeError(f"{path} is not a {name} vision checkpoint (missing {missing[:2]}, unexpected {unexpected[:2]})")


def _check_layout(model, name: str, source: str) -> None:
    spec, config = CLIP_VIT_SPECS[name], model.config
    got = (config.hidden_size, config.patch_size, config.projection_dim, config.image_size)
    want = (spec.width, spec.patch, spec.projection, spec.image_size)
    if got != want:
        raise RuntimeError(f"{source} holds a different CLIP ViT (width, patch, projection, size) = {got}, {name} needs {want}")


def _load_pretrained(name: str, weights: str | None, download: bool | None = None):
    spec = CLIP_VIT_SPECS[name]
    tf = _transformers()
    if weights or os.environ.get(spec.env):
        # a folder (Hugging Face layout) or a state-dict file; a missing one is an error, never a fallback
        source = str(require_weights(None, f"{name} weights", path=weights, env=spec.env, folders=True))
        if os.path.isdir(source):
            model = tf.CLIPVisionModelWithProjection.from_pretrained(source, local_files_only=True)
        else:
            model = tf.CLIPVisionModelWithProjection(clip_vision_config(name))
            _load_state_file(model, source, name)
        _check_layout(model, name, source)
        return model
    online = downloads_enabled(download)
    try:  # the Hugging Face cache; the hub itself only when downloads are enabled
        model = tf.CLIPVisionModelWithProjection.from_pretrained(spec.hf_id, local_files_only=not online)
    except (OSError, ValueError) as err:
        if online:
            raise RuntimeError(f"{name}: could not fetch {spec.hf_id} from the Hugging Face hub "
                               f"({' '.join(str(err).split())[:200]}); pass --backbone-weights PATH instead") from None
        raise RuntimeError(
            f"{name} weights not found: pass --backbone-weights PATH (a Hugging Face {spec.hf_id} folder or a "
            f".safetensors/.bin state dict), set ${spec.env}, populate the Hugging Face cache with {spec.hf_id}, "
            "or run with --download (or VQGAN_LC_DOWNLOAD=1)"
        ) from None
    _check_layout(model, name, spec.hf_id)
    return model


def build_clip_vit(name: str, weights: str | None = None, *, pretrained: bool = True, download: bool | None = None,
                   **config_overrides) -> ClipVitBackbone:
    """A CLIP ViT feature backbone; with `pretrained=False` a random model of the same layout
    (`config_overrides`, e.g. `num_hidden_layers=1`, shrink it for fast shape tests).
    `download`: may the Hugging Face hub be asked (default: $VQGAN_LC_DOWNLOAD)."""
    if name not in CLIP_VIT_SPECS:
        raise ValueError(f"unknown CLIP ViT {name!r}; choose from {sorted(CLIP_VIT_SPECS)}")
    if pretrained:
        if config_overrides:
            raise ValueError(f"{name}: config overrides {sorted(config_overrides)} only apply with pretrained=False")
        model = _load_pretrained(name, weights, download)
    else:
        model = _transformers().CLIPVisionModelWithProjection(clip_vision_config(name, **config_overrides))
    return ClipVitBackbone(name, model.eval())
