"""`vqgan-lc info PATH`: what a folder is, read from the files in it, without loading a model.

    vqgan-lc info runs/dit           # a training run: family, step, classes, tokenizer, cache, EMA, checkpoint
    vqgan-lc info runs/dit/generator # a model folder
    vqgan-lc info caches/latents     # a token or latent cache
    vqgan-lc info samples/dit        # a folder written by `vqgan-lc sample`

Each kind of folder is one function in `KINDS`: it gets the folder and returns None when the
folder is not of its kind, else the rows to print (label -> value, in order). The first kind
that answers wins, so a more specific kind goes before a more general one. A new kind of
folder is one more function registered with `@folder_kind`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

Rows = dict[str, object]
KINDS: list[Callable[[Path], Rows | None]] = []


def folder_kind(describe: Callable[[Path], Rows | None]) -> Callable[[Path], Rows | None]:
    """Register a kind of folder (in order: earlier kinds are asked first)."""
    KINDS.append(describe)
    return describe


def register(sub) -> None:
    p = sub.add_parser("info", help="say what a run, model folder, cache or samples folder is (family, step, "
                                    "classes, tokenizer, codebook, cache, EMA, last checkpoint)")
    p.add_argument("path", help="a folder written by vqgan-lc: train/train-gen --out, a model folder, "
                                "cache --out, sample --out, classify --out")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    rows = describe(args.path)
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    width = max(len(label) for label in rows)
    for label, value in rows.items():
        print(f"{label + ':':<{width + 1}} {value}")
    return 0


def describe(path: str | os.PathLike) -> Rows:
    """The rows of the first kind that recognises `path`; one line when none does."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"{folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder; pass a run, model, cache or samples folder "
                         "(for a codebook file: `vqgan-lc codebook info`)")
    for kind in KINDS:
        rows = kind(folder)
        if rows is not None:
            return {"path": str(folder), **rows}
    raise ValueError(f"{folder} is not a folder vqgan-lc wrote (no train_config.json, config.json, manifest.json "
                     "or report.json); pass a run, model, cache or samples folder")


# --- reading files without loading models -------------------------------------------------------

def _json(path: Path) -> dict | None:
    """A JSON object file, or None when it is absent; damaged files are named (`files.read_json`)."""
    from ..files import read_json

    if not path.is_file():
        return None
    data = read_json(path, f"the {path.name} of {path.parent}", "restore it, or rebuild the folder")
    return data if isinstance(data, dict) else None


def _checkpoint_step(run: Path) -> int | str | None:
    """The step the run's checkpoint holds (memory-mapped: the tensors are not read), None when
    there is none yet, or a line saying it is damaged."""
    import torch

    from ..train.state import STATE_NAME

    path = run / STATE_NAME
    if not path.is_file():
        return None
    try:
        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["step"])
    except Exception as err:  # noqa: BLE001 - a damaged checkpoint is reported beside the rest
        return f"unreadable {STATE_NAME} ({type(err).__name__}): the run cannot resume from it"


def _classes(names: list[str]) -> str:
    if not names:
        return "none (unlabelled)"
    shown = ", ".join(f"{i}={name}" for i, name in enumerate(names[:20]))
    return f"{len(names)}: {shown}{', ...' if len(names) > 20 else ''}"


def _weights(folder: Path) -> str:
    """The size of a model folder's weights, from the safetensors header alone."""
    from ..pretrained import WEIGHTS_NAME

    path = folder / WEIGHTS_NAME
    if not path.is_file():
        return f"missing ({WEIGHTS_NAME} not written yet)"
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            count = 0
            for key in f.keys():
                size = 1
                for dim in f.get_slice(key).get_shape():
                    size *= dim
                count += size
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
        return f"unreadable ({' '.join(str(err).split())})"
    return f"{count / 1e6:.2f}M values in {path}"


def _ema(config: dict, step: int | None) -> str:
    from ..train.loop import EMA_STALE_SHARE, ema_decay_at, ema_initial_share

    decay = config.get("ema_decay")
    if decay is None:
        return "none: the exported weights are the trained ones"
    if not step:
        return f"decay {decay:g}, no step yet"
    share = ema_initial_share(decay, step)
    note = "; too few steps for the EMA to stand for training: train longer" if share > EMA_STALE_SHARE else ""
    return (f"decay {decay:g} over {step} steps (last update's decay {ema_decay_at(decay, step - 1):.4g}; "
            f"{100 * share:.2g}% initial weights left){note}")


def _cache_rows(folder: Path, manifest: dict) -> Rows:
    header = manifest.get("header", {})
    kind = header.get("kind", "features")
    arrays = manifest.get("arrays", {})
    rows: Rows = {"kind": f"{kind} cache" if kind in ("tokens", "latents") else "cache",
                  "items": f"{len(manifest.get('image_ids', []))} stored, {manifest.get('num_skipped', 0)} unreadable "
                           f"of {manifest.get('num_listed', '?')} listed",
                  "classes": _classes(manifest.get("class_names", []))}
    if kind in ("tokens", "latents"):
        grid = "x".join(str(g) for g in header.get("grid", []))
        shape = arrays.get(kind, {}).get("shape")
        rows.update({"grid": f"{grid} tokens per image ({header.get('image_size')} px)",
                     "item": f"{shape} {arrays.get(kind, {}).get('dtype', '')}".strip(),
                     "tokenizer": header.get("tokenizer"),
                     "codebook": f"{header.get('codebook_size')} entries of dimension {header.get('latent_dim')}",
                     "flipped copies": "yes" if header.get("flip") else "no"})
    rows["data"] = header.get("data")
    return rows


# --- the kinds ------------------------------------------------------------------------------------

@folder_kind
def pipeline_folder(folder: Path) -> Rows | None:
    """A generator pipeline folder made by `export` or `convert` (a finished run is described as
    the run it is, with a pipeline row)."""
    from ..generate.pipeline import GENERATOR_DIR, PROCESS_NAME
    from ..train.config import CONFIG_NAME

    process = _json(folder / PROCESS_NAME)
    if process is None or (folder / CONFIG_NAME).exists():
        return None
    rows: Rows = {"kind": "generator pipeline folder", "family": process.get("family"),
                  "classes": _classes(process.get("class_names") or [str(i) for i in range(process.get("num_classes", 0))]),
                  "tokenizer": _pipeline_tokenizer(folder, process),
                  "codebook": f"{process.get('codebook_size')} entries; grid {'x'.join(map(str, process.get('grid', [])))}",
                  "latent scale": process.get("latent_scale"),
                  "sampling protocol": process.get("protocol", "ours"),
                  "generator": _weights(folder / GENERATOR_DIR)}
    if process.get("source"):
        rows["converted from"] = f"{process['source'].get('file')} (sha256 {str(process['source'].get('sha256'))[:12]})"
    return rows


def _pipeline_tokenizer(folder: Path, process: dict) -> str:
    name = process.get("tokenizer") or ""
    if not name:
        return "none (convert again with --tokenizer to decode)"
    where = f"{folder / name}" if (folder / name).is_dir() else f"hub id {name}"
    return f"{where}, fingerprint {str(process.get('tokenizer_fingerprint') or 'not recorded')[:12]}"


@folder_kind
def training_run(folder: Path) -> Rows | None:
    from ..train.config import CONFIG_NAME

    config = _json(folder / CONFIG_NAME)
    if config is None:
        return None
    step = _checkpoint_step(folder)
    if "generator" in config:
        what, export, family = "generator run", "generator", f"{config['generator'].split('-')[0]} ({config['generator']})"
    elif "val_data" in config:
        what, export, family = "classifier run", "classifier", "token-map ViT"
    else:
        quantizer = config.get("model", {}).get("quantizer", {})
        what, export = "tokenizer run", "tokenizer"
        family = f"{quantizer.get('kind', '?')} tokenizer, {quantizer.get('codebook_size', '?')} entries"
    total = f"max_steps={config['max_steps']}" if config.get("max_steps") else f"epochs={config.get('epochs')}"
    rows: Rows = {"kind": what, "family": family,
                  "step": f"{step} ({total})" if step is not None else f"no checkpoint yet ({total})"}
    done = step if isinstance(step, int) else None  # (a damaged checkpoint is named in the step row)
    data = config.get("data", "")
    manifest = _json(Path(data) / "manifest.json") if data and Path(data).is_dir() else None
    if what == "generator run":
        header = (manifest or {}).get("header", {})
        names = config.get("class_names") or (manifest or {}).get("class_names")
        rows["classes"] = _classes(names) if names else f"unknown (cache {data} not found)"
        rows["tokenizer"] = config.get("tokenizer") or header.get("tokenizer", "unknown (the cache is gone)")
        process = _json(folder / "process.json")
        rows["pipeline"] = (f"yes: {folder} samples anywhere (generator/, tokenizer/, process.json)" if process
                            else "not yet (written when training finishes; or `vqgan-lc export`)")
        rows["codebook"] = (f"{header['codebook_size']} entries; {header['kind']} of grid "
                            f"{'x'.join(map(str, header['grid']))}" if header else "unknown")
        rows["latent scale"] = config.get("latent_scale")
    elif what == "classifier run":
        rows["classes"] = _classes(manifest["class_names"]) if manifest else f"{config['model'].get('num_classes')}"
        rows["tokenizer"] = config.get("tokenizer")
    else:
        rows["codebook"] = config.get("codebook") or "Gaussian initialisation (no codebook file)"
    rows["data" if what == "tokenizer run" else "cache"] = data
    rows["EMA"] = _ema(config, done)
    rows["exported model"] = _weights(folder / export)
    rows["last checkpoint"] = (f"step {done} in {folder / 'train_state.pt'}; continue with "
                               f"`vqgan-lc {'train-gen' if what == 'generator run' else 'train'} --resume {folder}`"
                               if done is not None else "none")
    return rows


@folder_kind
def model_folder(folder: Path) -> Rows | None:
    from ..pretrained import CONFIG_NAME

    config = _json(folder / CONFIG_NAME)
    if config is None or "model_type" not in config:
        return None
    rows: Rows = {"kind": f"model folder ({config['model_type']})"}
    quantizer = config.get("quantizer")
    if isinstance(quantizer, dict):  # a tokenizer
        autoencoder = config.get("autoencoder", {})
        rows.update({"quantizer": quantizer.get("kind"),
                     "codebook": f"{quantizer.get('codebook_size')} entries, D'={quantizer.get('dim')}",
                     "resolution": f"{autoencoder.get('resolution')} px",
                     "latent scale": config.get("latent_scale")})
    else:
        rows.update({key.replace("_", " "): config[key] for key in ("vocab_size", "num_classes", "in_channels",
                                                                     "input_size", "block_size", "grid") if key in config})
    rows["weights"] = _weights(folder)
    parent = _json(folder.parent / "train_config.json")
    if parent is not None:
        rows["in run"] = f"{folder.parent} (`vqgan-lc info {folder.parent}`)"
    return rows


@folder_kind
def cache_folder(folder: Path) -> Rows | None:
    from ..data.cache import MANIFEST

    manifest = _json(folder / MANIFEST)
    if manifest is not None:
        return _cache_rows(folder, manifest)
    progress = _json(folder / "rank0.json")
    if progress is None:
        return None
    header = progress.get("header", {})
    return {"kind": f"unfinished {header.get('kind', '')} cache".replace("  ", " "),
            "stored": f"{progress.get('next', 0) - progress.get('slice', [0])[0]} images so far (rank 0)",
            "tokenizer": header.get("tokenizer"), "data": header.get("data"),
            "resume": "run the same cache command again"}


@folder_kind
def samples_folder(folder: Path) -> Rows | None:
    report = _json(folder / "report.json")
    if report is None or "num_samples" not in report or "generator" not in report:
        return None
    on_disk = {sub.name: len(list(sub.glob("*.png"))) for sub in sorted(folder.iterdir()) if sub.is_dir()}
    count = sum(on_disk.values())
    rows: Rows = {"kind": "samples folder", "generator": f"{report['generator']} (run {report.get('run')})",
                  "samples": f"{report['num_samples']} in the report, {count} PNGs on disk"
                             + ("" if count == report["num_samples"] else ": the folder holds other images too"),
                  "classes": ", ".join(f"{name} ({n})" for name, n in on_disk.items()),
                  "sampler": f"{report.get('method')}, guidance {report.get('guidance_scale')}, "
                             f"steps {report.get('steps')}, seed {report.get('seed')}",
                  "utilization": f"{100 * report.get('utilization', 0):.1f}% of {report.get('codebook_size')} entries"}
    return rows


@folder_kind
def classification_folder(folder: Path) -> Rows | None:
    report = _json(folder / "report.json")
    if report is None or "top1" not in report:
        return None
    return {"kind": "classification (vqgan-lc classify --out)",
            "top-1": f"{100 * report['top1']:.1f}% on {report.get('num_val')} held-out images "
                     f"(train {100 * report.get('train_top1', 0):.1f}%)",
            "classes": _classes(report.get("class_names", [])),
            "tokenizer": report.get("tokenizer"), "embedding": report.get("embed"),
            "run": f"{folder / 'run'} (`vqgan-lc info {folder / 'run'}`)"}


__all__ = ["KINDS", "describe", "folder_kind", "register"]
