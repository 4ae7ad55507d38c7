"""Model cards: the README.md that `save_pretrained` writes beside config.json and model.safetensors.

A card says what a saved folder holds without loading it: the model type, its configuration
and parameter count; for a tokenizer, where its frozen codebook came from (backbone, layer,
pooling, k-means mode, size, seed and dataset fingerprint, taken from the codebook file when
the model was built from one, see `LCQuantizer.provenance`); the training recipe when the
folder sits in a run folder (`train_config.json` beside it, used only when it describes this
very model); and the evaluation report with its protocol when one is given or lies beside it.

Its YAML front matter is what the Hugging Face hub reads (library, tags, license, the paper's
arXiv id). A card this module wrote carries `MARKER` and is rewritten on every save; a README.md
without the marker was written by someone else and is never overwritten.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PAPER_ARXIV = "2406.11837"
PAPER_URL = f"https://arxiv.org/abs/{PAPER_ARXIV}"
PAPER_TITLE = "Scaling the Codebook Size of VQ-GAN to 100,000 with a Utilization Rate of 99%"
CARD_NAME = "README.md"
MARKER = "<!-- model card written by vqgan-lc; rewritten on every save_pretrained (delete this line to keep your edits) -->"
DEFAULT_LICENSE = "mit"  # the library's license; pass license= for weights released under other terms

# model_type -> (what it is, hub tags besides "vqgan-lc")
FAMILIES = {
    "vqgan-lc-tokenizer": ("image tokenizer (VQGAN encoder/decoder with a quantized latent)",
                           ["image-tokenizer", "vector-quantization", "vqgan"]),
    "vqgan-lc-gpt": ("class-conditional autoregressive image generator (GPT over token ids)",
                     ["image-generation", "autoregressive", "gpt"]),
    "vqgan-lc-dit": ("class-conditional latent image generator (DiT / SiT transformer)",
                     ["image-generation", "diffusion", "dit"]),
    "vqgan-lc-unet": ("class-conditional latent diffusion model (LDM UNet)",
                      ["image-generation", "diffusion", "latent-diffusion"]),
    "vqgan-lc-token-classifier": ("image classifier over tokenizer token ids", ["image-classification"]),
}
# train_config.json fields that say where and how often a run wrote, not how it trained
_NOT_RECIPE = {"model", "out_dir", "device", "num_workers", "save_every", "log_every", "image_every", "usage_every"}


def beside(directory: str | os.PathLike, name: str) -> Path | None:
    """`name` in the model folder, else in the folder above it (a run folder holds
    train_config.json next to the model folder it exports into)."""
    directory = Path(directory)
    return next((p for p in (directory / name, directory.parent / name) if p.is_file()), None)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # an unreadable side file only leaves its section out of the card


def _normalised(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))  # tuples and lists alike, as they are in JSON


# Sizes a training config's codebook file decides for the model it builds (the model's config is
# then a copy with the file's N and C; the training config keeps the values it was given).
_SET_BY_CODEBOOK_FILE = ("codebook_size", "codebook_dim")


def _model_config_as_trained(data: dict, model_config: dict) -> Any:
    recipe = _normalised(data.get("model"))
    if data.get("codebook") and isinstance(recipe, dict) and isinstance(recipe.get("quantizer"), dict):
        built = (model_config.get("quantizer") or {}) if isinstance(model_config, dict) else {}
        recipe["quantizer"].update({k: built[k] for k in _SET_BY_CODEBOOK_FILE if k in built})
    return recipe


def find_train_config(directory: str | os.PathLike, model_config: dict) -> dict | None:
    """The run's train_config.json beside `directory`, only when it trains this model: its
    `model` equals this model's config (but for the sizes its codebook file set)."""
    path = beside(directory, "train_config.json")
    data = _read_json(path) if path is not None else None
    if isinstance(data, dict) and _model_config_as_trained(data, model_config) == _normalised(model_config):
        return data
    return None


def _is_report(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("protocol"), (dict, str))


def read_report(report: dict | str | os.PathLike | None, directory: str | os.PathLike | None = None) -> dict | None:
    """An evaluation report: the dict or report.json path given, else the first report.json found
    in `directory`, the folder above it, or that folder's eval/ (where the README's
    `vqgan-lc eval RUN/tokenizer --out RUN/eval` writes). Only a report that states its protocol
    (as every vqgan-lc report does) is used."""
    if isinstance(report, dict):
        return report if _is_report(report) else None
    if report is not None:
        path = Path(report)
        if not path.is_file():
            raise FileNotFoundError(f"evaluation report {path} not found; pass the report.json that `vqgan-lc eval` wrote")
        data = _read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a JSON report; pass the report.json that `vqgan-lc eval` wrote")
        return data if _is_report(data) else None
    if directory is None:
        return None
    directory = Path(directory)
    for path in (directory / "report.json", directory.parent / "report.json", directory.parent / "eval" / "report.json"):
        data = _read_json(path) if path.is_file() else None
        if _is_report(data):
            return data
    return None


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(map(str, value)) if len(value) <= 12 else f"{len(value)} items"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _text(value: Any) -> str:
    return json.dumps(value, default=str) if isinstance(value, (dict, list)) else _cell(value)


def _table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("field", "value")) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in rows)]


def _yaml_list(items: list[str]) -> list[str]:
    return [f"- {json.dumps(item)}" for item in items]  # JSON strings are valid YAML scalars


def _tokenizer_summary(config: dict) -> list[tuple[str, Any]]:
    ae, q = config["autoencoder"], config["quantizer"]
    f = 2 ** (len(ae["ch_mult"]) - 1)
    grid = ae["resolution"] // f
    rows = [("resolution", f"{ae['resolution']} px"), ("downsampling", f"f{f}: {grid}x{grid} tokens per image"),
            ("quantizer", q["kind"]), ("codebook entries (N)", q["codebook_size"]), ("latent width (D')", q["dim"])]
    if q["kind"] == "lc":
        rows += [("frozen entry width (C)", q["codebook_dim"]), ("projector", q["projector"]),
                 ("codebook trainable", q["train_codebook"])]
    rows += [("encoder/decoder", f"ch {ae['ch']}, ch_mult {tuple(ae['ch_mult'])}, {ae['num_res_blocks']} res blocks, "
                                 f"z_channels {ae['z_channels']}")]
    if config.get("latent_scale") is not None:
        rows.append(("latent_scale", config["latent_scale"]))
    return rows


def _codebook_rows(origin: dict) -> list[tuple[str, Any]]:
    labels = [("size", "entries"), ("dim", "entry width"), ("backbone", "backbone"), ("layer", "layer"),
              ("input_size", "input size (px)"), ("pooling", "pooling"), ("mode", "k-means mode"), ("seed", "seed"),
              ("iters", "k-means iterations"), ("init", "k-means init"), ("num_images", "images"),
              ("num_vectors", "feature vectors"), ("inertia", "k-means inertia"), ("fingerprint", "dataset fingerprint"),
              ("fingerprint_of", "fingerprint of"), ("backbone_weights", "backbone weights")]
    rows = [(label, origin[key]) for key, label in labels if key in origin]
    known = {key for key, _ in labels} | {"format_version"}
    return rows + [(key, value) for key, value in origin.items() if key not in known]


def render(model_type: str, config: dict, *, parameters: int, trainable: int, frozen_values: int = 0,
           provenance: dict | None = None, train_config: dict | None = None, report: dict | None = None,
           license: str = DEFAULT_LICENSE, repo_id: str | None = None) -> str:
    """The card's Markdown (front matter included) from plain data: no model or file needed."""
    what, tags = FAMILIES.get(model_type, ("model", []))
    generator = (train_config or {}).get("generator")
    if isinstance(generator, str) and model_type == "vqgan-lc-dit":
        # DiT and SiT share the network; the last tag names the family the run trained it as
        tags = [*tags[:-1], generator.split("-", 1)[0]]
    lines = ["---", "library_name: vqgan-lc", f"license: {json.dumps(license)}", "tags:",
             *_yaml_list(["vqgan-lc", *tags, f"arxiv:{PAPER_ARXIV}"]), "---", MARKER, ""]
    title = repo_id or model_type
    lines += [f"# {title}", "",
              f"{'An' if what[0] in 'aeiou' else 'A'} {what}, saved by [vqgan-lc](https://pypi.org/project/vqgan-lc/), the package implementing "
              f"VQGAN-LC ([{PAPER_TITLE}]({PAPER_URL}), arXiv {PAPER_ARXIV}).", "",
              "## Model", ""]
    rows: list[tuple[str, Any]] = [("model_type", model_type), ("parameters", f"{parameters:,}"),
                                   ("trainable parameters", f"{trainable:,}")]
    if frozen_values:
        rows.append(("frozen buffers (values)", f"{frozen_values:,}"))
    if model_type == "vqgan-lc-tokenizer" and {"autoencoder", "quantizer"} <= set(config):
        rows += _tokenizer_summary(config)
    else:
        rows += _flatten(config)
    lines += _table(rows) + [""]
    converted = (provenance or {}).get("converted_from")
    if isinstance(converted, dict):
        lines += ["## Source", "", "Converted from a released checkpoint (`vqgan-lc convert`):", "",
                  *_table(list(converted.items())), ""]
    origin = (provenance or {}).get("codebook")
    if model_type == "vqgan-lc-tokenizer":
        lines += ["## Codebook", ""]
        if origin:
            lines += ["Frozen entries from k-means over backbone features (metadata of the codebook file):", "",
                      *_table(_codebook_rows(origin)), ""]
        else:
            lines += ["Not recorded: the model was not built from a codebook file (`vqgan-lc codebook build`).", ""]
    if train_config:
        recipe = [(k, v) for k, v in _flatten({k: v for k, v in train_config.items() if k not in _NOT_RECIPE})]
        batch = train_config.get("batch_size", 1) * train_config.get("grad_accum", 1)
        gpus = train_config.get("recipe_gpus")
        note = (f"Global batch {batch * gpus} ({gpus} processes x batch {train_config.get('batch_size')} x "
                f"{train_config.get('grad_accum', 1)} accumulation)." if gpus else
                f"Batch {batch} per process (batch x accumulation); the global batch multiplies it by the process count.")
        lines += ["## Training recipe", "", f"From the run's `train_config.json`. {note}", "", *_table(recipe), ""]
    if report:
        metrics = [(k, v) for k, v in report.items()
                   if k != "protocol" and isinstance(v, (int, float, str, bool)) and not isinstance(v, dict)]
        lines += ["## Evaluation", "", *_table(metrics, ("metric", "value")), ""]
        protocol = report["protocol"]
        if isinstance(protocol, dict):
            lines += ["Protocol:", ""]
            for key, value in protocol.items():
                if isinstance(value, list):
                    lines += [f"- **{key}**:", *(f"  - {_text(item)}" for item in value)]
                else:
                    lines.append(f"- **{key}**: {_text(value)}")
            lines.append("")
        else:
            lines += [f"Protocol: {protocol}", ""]
    source = repo_id or "path/to/this/folder"
    lines += ["## Usage", "", "```python", "from vqgan_lc.pretrained import load_pretrained", "",
              f"model = load_pretrained({json.dumps(source)})  # a local folder or a Hugging Face hub id", "```", "",
              "## Citation", "", f"Zhu, Wei, Lu, Chen. *{PAPER_TITLE}*. NeurIPS 2024. [arXiv:{PAPER_ARXIV}]({PAPER_URL})", ""]
    return "\n".join(lines)


def may_write(path: Path) -> bool:
    """A README.md is (re)written only where none exists or where this module wrote it."""
    if not path.exists():
        return True
    try:
        return MARKER in path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
