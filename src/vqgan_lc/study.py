"""`vqgan-lc study`: the paper's claims as numbers this project produces on demand.

    vqgan-lc study --out runs/study                                  # 7 quantizers at 1K..64K entries
    vqgan-lc study --out runs/study --sizes 262144 --quantizers lc   # the 262,144-entry point
    vqgan-lc study --out runs/study --ablation init|projector|dim    # Tables 6, 10, 11
    vqgan-lc study --out runs/study --ablation gradient --quantizers lc,vq  # + the rotation trick
    vqgan-lc study --out runs/study --classify mnist,photos          # + a ViT on every tokenizer's token maps
    vqgan-lc study --out runs/study --seeds 3                        # replicates: mean +- 95% interval

Every combination (quantizer x codebook size, or an ablation's variant x size) trains the
same tokenizer architecture on the same data (crops of the bundled photos' train regions),
for the same steps, batch and losses, with only the quantizer changed; it is evaluated on the
same held-out crops (the photos' held-out regions):

- utilization over a token window of max(`usage_crops` crops, `usage_tokens_per_entry` x N
  tokens) (4,096 crops up to 8,192 entries, 32 tokens per entry beyond; first crops shared by
  every size), with the share a perfectly uniform code would reach on that window beside it
  (1 - (1 - 1/N)^T), so a small window is never mistaken for an unused codebook; the same pass
  also reads it at 4, 8, 16, ... tokens per entry (`window_curve`);
- PSNR, SSIM, perceptual-lite0 and FD-lite0 (offline stand-ins: not LPIPS / rFID) over the
  first `eval_crops` of those crops, by the project's evaluator.

LC codebooks are k-means centres of EfficientNet-Lite0 patch features of train crops (one
global k-means per size, as class-free data needs, over max(codebook_crops' vectors,
codebook_vectors_per_entry x N) vectors; two-level from 250,000 entries); the init ablation swaps them for random
feature vectors or Gaussian draws at the features' scale.

Resumable at every level: OUT/codebooks/<mode>-<N>.safetensors is built once; each
combination lives in OUT/runs/<name>/ and is finished when its result.json exists, which
records the settings it was made with. A rerun skips finished combinations (and refuses,
in one line, one made with other settings), continues an interrupted training from its last
checkpoint, and rewrites the report from all results. Ablation variants equal to the main
sweep's LC model (k-means, projector + frozen codebook, D' = low_dim) share its folder, so
they are trained once for all tables.

Outputs: OUT/report.json, OUT/report.md, OUT/utilization.png (utilization against codebook
size per quantizer, the paper's Figure 1a), OUT/reconstruction.png (PSNR and FD-lite0
against size) and OUT/window.png (utilization against the window's tokens per entry).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from .classify.data import LABELLED_SETS
from .classify.model import TokenClassifierConfig, classifier_preset
from .config import Config, config_differences
from .data.grid import pyplot
from .files import atomic_path, atomic_write_json, atomic_write_text
from .quantize.config import GRADIENTS, KINDS
from .tokenizer.config import AutoencoderConfig, get_preset
from .tokenizer.losses import LossConfig

log = logging.getLogger("vqgan_lc.study")

QUANTIZERS = KINDS  # lc, vq, fc, ema (the paper's) and ema-restart, l2, simvq (the field's today)
ABLATIONS = ("none", "init", "projector", "dim", "gradient")
LABELS = {"lc": "VQGAN-LC", "vq": "VQGAN", "fc": "VQGAN-FC", "ema": "VQGAN-EMA",
          # the field's baselines of today (sources in each quantizer's module)
          "ema-restart": "EMA + data start + restarts (SoundStream/Jukebox)",
          "l2": "l2-normalised codes, D'=8 (LlamaGen)", "simvq": "SimVQ"}
# Baselines trained with their source's loss weights (alpha: commitment, beta: codebook term);
# the paper's four keep the project's alpha 1.0 / beta 0.33.
SOURCE_LOSS_WEIGHTS = {"l2": {"alpha": 0.25, "beta": 1.0}, "simvq": {"alpha": 0.25, "beta": 1.0}}
# Quantizers that quantize at the low width D' (low_dim); the others keep the encoder's z_channels.
LOW_DIM_KINDS = ("lc", "fc", "l2", "simvq")
BACKBONE = "efficientnet-lite0"
CODEBOOK_DIM = 112           # EfficientNet-Lite0 stride-16 features: the width of every LC entry here
FEATURE_STRIDE = 16          # one feature vector per 16x16 pixels of a codebook crop
RESULT_NAME = "result.json"
# The quantizers' trained parameters (LC projector, VQ/FC/l2 codebooks, SimVQ map) learn at this
# multiple of the common rate, alike for every quantizer. 128 steps are shorter than the demo's
# 200 (which keeps CPU_QUANTIZER_LR_SCALE = 30): at 30, LC at 1,024 entries used 84.8%, 98.2% and
# 93.8% at seeds 0-2; at 100, 95.8%, 98.6% and 99.9%, PSNR unchanged (docs/utilization.md, section 5).
STUDY_QUANTIZER_LR_SCALE = 100.0
WINDOW_CURVE_START = 4  # tokens per entry of the window curve's first point


def free_train_fields() -> tuple[str, ...]:
    """Training settings that do not change what a combination computes (a rerun may differ in
    them): the config's bookkeeping, and the codebook's path (its settings are in the spec)."""
    from .tokenizer.training import TokenizerTrainConfig

    return TokenizerTrainConfig.bookkeeping_fields + ("codebook",)


def _tiny_autoencoder() -> AutoencoderConfig:
    return get_preset("vqgan-lc-tiny").autoencoder


@dataclass
class StudyConfig(Config):
    out_dir: str = "runs/study"
    sizes: tuple[int, ...] = (1024, 4096, 16384, 65536)   # 262144 too with --sizes (IBQ's and SimVQ's size)
    quantizers: tuple[str, ...] = QUANTIZERS
    ablation: str = "none"           # "none" | "init" (Table 6) | "projector" (Table 10) | "dim" (Table 11)
    #                                  | "gradient" (each of `quantizers` with straight-through and the rotation trick)
    dims: tuple[int, ...] = (4, 8, 16, 64)  # D' of the dim ablation
    # --- one training budget for every combination ---
    # 128 steps of 16 = one pass over the 2,048 train crops: 1.5-2.5 min of training per
    # combination on 2 CPU cores (README, "Study", for the sweep's time)
    steps: int = 128
    batch_size: int = 16
    lr: float = 1e-3
    quantizer_lr_scale: float = STUDY_QUANTIZER_LR_SCALE
    low_dim: int = 8                 # D' of LC and FC (the paper's f16: 8); VQ and EMA use z_channels (paper: 256)
    autoencoder: AutoencoderConfig = field(default_factory=_tiny_autoencoder)  # 64 px, f8: 8x8 tokens
    # No GAN: a few hundred CPU steps are far too few for it to help (the demo's choice too).
    loss: LossConfig = field(default_factory=lambda: LossConfig(disc_start=10**9))
    train_crops: int = 2048          # crops per epoch of the photos' train regions (new crops every epoch)
    # --- LC codebooks: k-means over Lite0 features of train crops ---
    codebook_crops: int = 2048       # at 128 px each gives 8x8 = 64 vectors: 131,072 vectors
    codebook_crop_size: int = 128
    # k-means of a size gets at least this many feature vectors per entry: more train crops are
    # extracted when the largest size needs them (65,536 entries: 10,240 crops, 655,360 vectors);
    # each size uses max(codebook_crops' vectors, this x N) of them, so small sizes are unchanged
    codebook_vectors_per_entry: int = 10
    kmeans_iters: int = 10
    # --- evaluation, the same held-out crops for every combination ---
    eval_crops: int = 1024           # PSNR / SSIM / perceptual-lite0 / FD-lite0
    usage_crops: int = 4096          # utilization window: 4,096 crops x 64 tokens = 262,144 tokens
    # A larger size gets a larger window: at least this many tokens per entry (65,536 entries:
    # 32,768 crops; 262,144: 131,072). At 4 per entry LC's 65,536 entries read 70.6%, at 8 81.9%,
    # 16 89.0%, 32 93.3%: the short window, not the codebook, held the number down
    # (docs/utilization.md, section 5); the paper's window is 128 per entry at 100,000 entries.
    usage_tokens_per_entry: int = 32
    fd_image_size: int = 64
    # --- classification on token maps (`--classify`) ---
    classify: tuple[str, ...] = ()   # labelled sets: "mnist" and/or "photos" (classify/data.py); () = off
    classifier: TokenClassifierConfig = field(default_factory=lambda: classifier_preset("vit-micro"))
    # 20 epochs (1,260 steps on 4,000 digits): at the old 4, train and held-out top-1 were equal
    # (60.6% / 60.2% for LC): the classifier underfitted (README, "Classification on token maps")
    classify_epochs: int = 20
    # classifiers per tokenizer (seeds seed..seed+n-1): mean and 95% interval; with --seeds N every
    # replicate's tokenizer is classified and the interval is over the N replicates' means
    classify_seeds: int = 3
    classify_batch_size: int = 64
    classify_lr: float = 3e-3        # measured on mnist tokens: 1e-3 left the 248-step run well short of fitting
    classify_per_class: int = 500    # mnist: digits per class (80% train, 20% held out)
    classify_train_crops: int = 2048  # photos: labelled train crops
    classify_val_crops: int = 512     # photos: labelled held-out crops
    seed: int = 0
    # Replicates of the whole pipeline at seeds seed .. seed+seeds-1 (codebook crops, k-means, the
    # tokenizer's initialisation and data order): the tables then give each number as the mean
    # +- the half-width of its 95% interval. One seed can mislead: LC at 1,024 entries used 84.8%,
    # 98.2% and 93.8% of its entries at seeds 0, 1, 2 with the projector at 30x (README, "Study").
    seeds: int = 1
    device: str = "auto"
    progress: bool = True

    @property
    def image_size(self) -> int:
        return self.autoencoder.resolution

    @property
    def tokens_per_crop(self) -> int:
        f = self.autoencoder.downsample_factor
        return (self.image_size // f) ** 2

    @property
    def vectors_per_codebook_crop(self) -> int:
        return (self.codebook_crop_size // FEATURE_STRIDE) ** 2

    def codebook_vectors(self, size: int) -> int:
        """Feature vectors the k-means of `size` entries runs on."""
        return max(self.codebook_crops * self.vectors_per_codebook_crop, self.codebook_vectors_per_entry * size)

    def feature_crops(self) -> int:
        """Train crops whose features are extracted: enough for the largest size's k-means."""
        most = max(self.codebook_vectors(s) for s in self.sizes)
        return max(self.codebook_crops, -(-most // self.vectors_per_codebook_crop))

    def usage_window(self, size: int) -> int:
        """Held-out crops the utilization of `size` entries is counted over."""
        return max(self.usage_crops, -(-self.usage_tokens_per_entry * size // self.tokens_per_crop))

    def usage_marks(self, size: int) -> tuple[int, ...]:
        """Token counts inside the window where utilization is also read: 4, 8, 16, ... tokens per
        entry up to `usage_tokens_per_entry`, so every size is seen at the same tokens per entry."""
        marks, per_entry = [], WINDOW_CURVE_START
        while per_entry <= self.usage_tokens_per_entry:
            marks.append(per_entry * size)
            per_entry *= 2
        return tuple(marks)

    def check(self) -> None:
        if not self.sizes or min(self.sizes) < 2 or len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"sizes must be distinct codebook sizes >= 2, e.g. sizes=1024,4096; got {self.sizes}")
        unknown = sorted(set(self.quantizers) - set(QUANTIZERS))
        if not self.quantizers or unknown:
            raise ValueError(f"quantizers must be chosen from {','.join(QUANTIZERS)}, got {','.join(self.quantizers)}")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}, got {self.ablation!r}")
        if not self.dims or min(self.dims) < 1:
            raise ValueError(f"dims must be positive latent widths, e.g. dims=4,8,16,64; got {self.dims}")
        if min(self.steps, self.batch_size, self.low_dim, self.train_crops, self.kmeans_iters, self.seeds) < 1 \
                or self.lr <= 0:
            raise ValueError("steps, batch_size, low_dim, train_crops, kmeans_iters and seeds must be >= 1 and lr > 0")
        if self.eval_crops < 2 or self.usage_crops < self.eval_crops:
            raise ValueError(f"need eval_crops >= 2 and usage_crops >= eval_crops (the usage window contains the "
                             f"metric crops), got {self.eval_crops} and {self.usage_crops}")
        if self.image_size < 32 or self.fd_image_size % 32:
            raise ValueError(f"the evaluator needs autoencoder.resolution >= 32 and fd_image_size a multiple of 32, "
                             f"got {self.image_size} and {self.fd_image_size}")
        if self.codebook_crop_size % FEATURE_STRIDE or self.codebook_crop_size < 32:
            raise ValueError(f"codebook_crop_size must be a multiple of {FEATURE_STRIDE} and >= 32, got "
                             f"{self.codebook_crop_size}")
        if min(self.codebook_crops, self.codebook_vectors_per_entry, self.usage_tokens_per_entry) < 1:
            raise ValueError("codebook_crops, codebook_vectors_per_entry and usage_tokens_per_entry must be >= 1")
        unknown = sorted(set(self.classify) - set(LABELLED_SETS))
        if unknown:
            raise ValueError(f"classify sets must be chosen from {','.join(LABELLED_SETS)}, got {','.join(unknown)}")
        if min(self.classify_epochs, self.classify_batch_size, self.classify_train_crops, self.classify_val_crops,
               self.classify_seeds) < 1 \
                or self.classify_lr <= 0 or not 2 <= self.classify_per_class <= 500:
            raise ValueError("classify_epochs, classify_batch_size, classify_seeds and the crop counts must be >= 1, "
                             "classify_lr > 0 "
                             "and 2 <= classify_per_class <= 500")

    def _needs_kmeans(self) -> bool:
        return any(c.codebook in ("global", "random-select") for c in plan(self))


@dataclass(frozen=True)
class Combination:
    """One tokenizer of the study: a quantizer variant at one codebook size."""

    name: str                 # run folder name, e.g. "lc-4096"; equal variants share it
    series: str               # one line in the plots, one row in the pivot tables
    label: str                # what the tables print for the series
    kind: str                 # quantizer kind: lc | vq | fc | ema
    size: int                 # N
    dim: int                  # D', the latent width the decoder sees
    codebook: str | None = None   # LC codebook: "global" (k-means) | "random-select" | "gaussian"
    projector: str = "linear"
    train_codebook: bool = False
    gradient: str = "straight-through"  # or "rotation": the rotation trick (quantize/base.py, rotate_onto)
    seed: int = 0             # the replicate: codebook crops, k-means, initialisation and data order


def _seed_suffix(cfg: StudyConfig, seed: int) -> str:
    """Folder and codebook names of a replicate; the first seed keeps the plain names."""
    return "" if seed == cfg.seed else f"-seed{seed}"


def _lc(cfg: StudyConfig, size: int, seed: int, series: str = "lc", label: str = LABELS["lc"],
        tag: str | None = None, **kw) -> Combination:
    """An LC variant; the one equal to the main sweep's VQGAN-LC gets its name (trained once),
    the others lc-<tag>-<size> (tag: the series unless given)."""
    base = dict(kind="lc", size=size, dim=cfg.low_dim, codebook="global", projector="linear", train_codebook=False)
    spec = {**base, **kw}
    name = (f"lc-{size}" if spec == base else f"lc-{tag or series}-{size}") + _seed_suffix(cfg, seed)
    return Combination(name=name, series=series, label=label, seed=seed, **spec)


def _quantizer(cfg: StudyConfig, kind: str, size: int, seed: int, gradient: str = GRADIENTS[0]) -> Combination:
    """`kind` at `size` as the main sweep trains it; with the rotation trick, <kind>-rotation-<size>."""
    plain = gradient == GRADIENTS[0]
    series = kind if plain else f"{kind}-{gradient}"
    label = LABELS[kind] if plain else f"{LABELS[kind]}, rotation trick"
    extra = {} if plain else {"gradient": gradient}
    if kind == "lc":
        return _lc(cfg, size, seed, series, label, tag=gradient, **extra)
    # VQ and EMA (with or without restarts) keep the encoder's width, as in the paper; FC,
    # LlamaGen's l2 codes and SimVQ quantize at low_dim
    dim = cfg.low_dim if kind in LOW_DIM_KINDS else cfg.autoencoder.z_channels
    name = (f"{kind}-{size}" if plain else f"{kind}-{gradient}-{size}") + _seed_suffix(cfg, seed)
    return Combination(name, series, label, kind, size, dim, seed=seed, **extra)


def plan(cfg: StudyConfig) -> list[Combination]:
    """The combinations a study trains, in order (by replicate, then size, then quantizer or variant)."""
    combos: list[Combination] = []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        for size in cfg.sizes:
            combos += _plan_size(cfg, size, seed)
    return combos


def _plan_size(cfg: StudyConfig, size: int, seed: int) -> list[Combination]:
    if cfg.ablation == "none":
        return [_quantizer(cfg, kind, size, seed) for kind in cfg.quantizers]
    if cfg.ablation == "gradient":  # the decoder's gradient through the quantizer: copied, or rotated
        return [_quantizer(cfg, kind, size, seed, gradient) for kind in cfg.quantizers for gradient in GRADIENTS]
    if cfg.ablation == "init":  # Table 6: how the frozen entries are initialised
        return [_lc(cfg, size, seed, "gaussian", "random Gaussian (features' mean/std)", codebook="gaussian"),
                _lc(cfg, size, seed, "random-select", "random selection of features", codebook="random-select"),
                _lc(cfg, size, seed, "kmeans", "k-means of features (VQGAN-LC)")]
    if cfg.ablation == "projector":  # Table 10: the projector and a frozen codebook, each removed
        return [_lc(cfg, size, seed, "static", "static codebook, no projector", projector="none", dim=CODEBOOK_DIM),
                _lc(cfg, size, seed, "frozen", "projector + frozen codebook (VQGAN-LC)"),
                _lc(cfg, size, seed, "trainable", "projector + trainable codebook", train_codebook=True)]
    # Table 11: the latent width D'
    return [_lc(cfg, size, seed, f"d{d}", f"D'={d}", dim=d) for d in cfg.dims]


def tokenizer_train_config(cfg: StudyConfig, combo: Combination, out_dir: Path, codebook: Path | None):
    """The combination's tokenizer training config: the shared budget, only the quantizer differs."""
    from .quantize.config import QuantizerConfig
    from .tokenizer.config import TokenizerConfig
    from .tokenizer.training import TokenizerTrainConfig

    quantizer = QuantizerConfig(kind=combo.kind, codebook_size=combo.size, dim=combo.dim, gradient=combo.gradient,
                                **SOURCE_LOSS_WEIGHTS.get(combo.kind, {}))
    if combo.kind == "lc":
        quantizer.codebook_dim = CODEBOOK_DIM
        quantizer.projector = combo.projector
        quantizer.train_codebook = combo.train_codebook
    model = TokenizerConfig(copy.deepcopy(cfg.autoencoder), quantizer)
    return TokenizerTrainConfig(
        model=model, codebook=str(codebook) if codebook is not None else None, data=f"demo:train:{cfg.train_crops}",
        batch_size=cfg.batch_size, lr=cfg.lr, quantizer_lr_scale=cfg.quantizer_lr_scale, max_steps=cfg.steps,
        warmup_epochs=0.0, loss=copy.deepcopy(cfg.loss),
        seed=combo.seed, out_dir=str(out_dir), save_every=max(cfg.steps // 2, 1), image_every=cfg.steps,
        usage_every=max(cfg.steps // 10, 1), log_every=10, device=cfg.device).validate()


def _json(data):
    """As it reads back from a JSON file (tuples become lists), for comparing with saved settings."""
    return json.loads(json.dumps(data, default=str))


def codebook_spec(cfg: StudyConfig, mode: str, size: int, seed: int) -> dict:
    return {"mode": mode, "size": size, "backbone": BACKBONE, "crops": cfg.codebook_crops,
            "vectors": cfg.codebook_vectors(size), "crop_size": cfg.codebook_crop_size,
            "kmeans_iters": cfg.kmeans_iters, "seed": seed}


def combination_spec(cfg: StudyConfig, combo: Combination) -> dict:
    """Everything that decides a combination's numbers: what a finished one is checked against."""
    train = tokenizer_train_config(cfg, combo, Path("."), None).to_dict()
    # series and label only name the table a variant appears in: equal variants share one folder
    # (the replicate's seed is recorded by the training and codebook settings)
    what = {k: v for k, v in asdict(combo).items() if k not in ("series", "label", "seed")}
    return _json({"combination": what,
                  "train": {k: v for k, v in train.items() if k not in free_train_fields()},
                  "codebook": codebook_spec(cfg, combo.codebook, combo.size, combo.seed) if combo.codebook else None,
                  "eval": {"eval_crops": cfg.eval_crops, "usage_crops": cfg.usage_window(combo.size),
                           "fd_image_size": cfg.fd_image_size}})


def read_spec(saved: dict) -> dict:
    """A finished combination's saved spec read through today's classes: a setting added since it
    was written takes its default, which is how that run was made (the train part as
    TokenizerTrainConfig.differences reads a saved run)."""
    from .tokenizer.training import TokenizerTrainConfig

    spec = dict(saved)
    if isinstance(spec.get("combination"), dict):
        defaults = {f.name: f.default for f in fields(Combination)
                    if f.default is not MISSING and f.name not in ("series", "label", "seed")}
        spec["combination"] = {**defaults, **spec["combination"]}
    if isinstance(spec.get("train"), dict):
        train = TokenizerTrainConfig.read_saved(spec["train"])
        spec["train"] = {k: v for k, v in train.items() if k not in free_train_fields()}
    return _json(spec)


# --- codebooks -------------------------------------------------------------------------------------

class _Features:
    """Lite0 patch features of the codebook crops, extracted on first use and kept for every size
    (one set per replicate seed: its crops are its own)."""

    def __init__(self, cfg: StudyConfig, seed: int | None = None):
        self.cfg = cfg
        self.seed = cfg.seed if seed is None else seed
        self._vectors = None

    def __call__(self):
        if self._vectors is None:
            from torch.utils.data import DataLoader

            from .backbones.registry import as_backbone
            from .codebook.build import extract_in_memory
            from .data import build_dataset, collate_skip_corrupt

            cfg = self.cfg
            count = cfg.feature_crops()
            log.info("extracting %s features of %d train crops (%d px) for the LC codebooks", BACKBONE,
                     count, cfg.codebook_crop_size)
            t0 = time.perf_counter()
            # the first codebook_crops crops are the same whatever the count (one seeded stream)
            crops = build_dataset(f"demo:train:{count}", cfg.codebook_crop_size, train=True, seed=self.seed + 1)
            loader = DataLoader(crops, batch_size=32, collate_fn=collate_skip_corrupt)
            # pool=None: every grid cell is a vector (8x8 per 128 px crop), as in the demo
            self._vectors, _, _ = extract_in_memory(loader, as_backbone(BACKBONE), pool=None)
            self.seconds = round(time.perf_counter() - t0, 1)
            log.info("%d feature vectors in %.1f s", len(self._vectors), self.seconds)
            if self._vectors.shape[1] != CODEBOOK_DIM:
                raise ValueError(f"{BACKBONE} features are {self._vectors.shape[1]}-d, the study expects "
                                 f"{CODEBOOK_DIM}; the backbone's layer choice changed")
        return self._vectors


def ensure_codebook(cfg: StudyConfig, mode: str, size: int, features: _Features) -> Path:
    """OUT/codebooks/<mode>-<size>[-seed<k>].safetensors, built once (from the features' seed);
    its .json sidecar (written last) holds the settings it was built with."""
    from .codebook.build import build_codebook_from_vectors
    from .codebook.io import save_codebook

    seed = features.seed
    path = Path(cfg.out_dir) / "codebooks" / f"{mode}-{size}{_seed_suffix(cfg, seed)}.safetensors"
    sidecar = path.with_suffix(".json")
    spec = _json(codebook_spec(cfg, mode, size, seed))
    if path.is_file() and sidecar.is_file():
        saved = json.loads(sidecar.read_text())["spec"]
        if saved == spec:
            return path
        raise ValueError(f"{path} was built with other settings ({', '.join(config_differences(saved, spec))} differ); "
                         "choose another --out")
    t0 = time.perf_counter()
    vectors, info = build_codebook_from_vectors(features()[:cfg.codebook_vectors(size)], None, size, mode, seed,
                                                iters=cfg.kmeans_iters)
    save_codebook(path, vectors, {"backbone": BACKBONE, "pooling": "none", **info})
    info["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(sidecar, {"spec": spec, "info": info})
    log.info("codebook %s: %d entries in %.1f s", mode, size, info["seconds"])
    return path


# --- one combination ----------------------------------------------------------------------------------

def uniform_ceiling(num_tokens: int, size: int) -> float:
    """Expected utilization of a perfectly uniform code of `size` entries over `num_tokens` tokens."""
    return 1.0 - math.exp(num_tokens * math.log1p(-1.0 / size)) if size > 1 else 1.0


def _loader(cfg: StudyConfig, crops: int):
    from torch.utils.data import DataLoader

    from .data import build_dataset, collate_skip_corrupt

    data = build_dataset(f"demo:eval:{crops}", cfg.image_size, train=False, seed=cfg.seed)
    return DataLoader(data, batch_size=64, collate_fn=collate_skip_corrupt)


def evaluate_combination(cfg: StudyConfig, model, folder: Path) -> dict:
    """Utilization over the usage window, image metrics over its first `eval_crops` crops."""
    from .evaluate.evaluator import EvalConfig, run_evaluation, token_usage

    model.eval()
    device = next(model.parameters()).device
    size = model.codebook_size
    window = token_usage(model, _loader(cfg, cfg.usage_window(size)), device, marks=cfg.usage_marks(size))
    config = EvalConfig(image_size=cfg.image_size, batch_size=64, perceptual="perceptual-lite0", fid="off",
                        fd_image_size=cfg.fd_image_size, grid_images=8,
                        dataset=f"study held-out crops: the first {cfg.eval_crops} of the usage window's crops of the "
                                "bundled photos' held-out regions",
                        preprocessing=f"random square crops of the held-out regions, resized to {cfg.image_size} px")
    metrics = run_evaluation(model, _loader(cfg, cfg.eval_crops), folder / "eval", config, device=device,
                             progress=False)
    tokens = int(window["num_tokens"])
    return {
        "utilization": float(window["utilization"]), "num_used": int(window["num_used"]), "num_tokens": tokens,
        "perplexity": float(window["perplexity"]), "tokens_per_entry": tokens / size,
        "uniform_ceiling": uniform_ceiling(tokens, size),
        # utilization against the window's length, at 4, 8, 16, ... tokens per entry
        "window_curve": [{"tokens_per_entry": point["num_tokens"] / size, "utilization": point["utilization"],
                          "num_used": point["num_used"], "perplexity": point["perplexity"],
                          "uniform_ceiling": uniform_ceiling(point["num_tokens"], size)}
                         for point in window["curve"]],
        "utilization_eval_window": metrics["utilization"],
        **{k: metrics[k] for k in ("psnr", "psnr_y", "ssim", "perceptual", "perceptual_name", "fd_lite0",
                                   "num_images")},
    }


def run_combination(cfg: StudyConfig, combo: Combination, features: _Features) -> dict:
    """Train (or resume) and evaluate one combination; a finished one is read back, not redone."""
    from .train.state import STATE_NAME
    from .tokenizer.training import train_tokenizer

    folder = Path(cfg.out_dir) / "runs" / combo.name
    spec = combination_spec(cfg, combo)
    marker = folder / RESULT_NAME
    if marker.is_file():
        done = json.loads(marker.read_text())
        # the folder's name is where the result lives, not a setting: a replicate trained as a
        # study of its own (seed=1) can be linked in as lc-1024-seed1
        differ = config_differences(read_spec(done.get("spec", {})), spec, ignore=("combination.name",))
        if not differ:
            log.info("%s: finished earlier, skipped", combo.name)
            return {**done, "name": combo.name, "seed": combo.seed}
        raise ValueError(f"{folder} was trained with other settings ({', '.join(differ)} differ); choose another "
                         f"--out, or delete {folder} to retrain it")
    codebook = ensure_codebook(cfg, combo.codebook, combo.size, features) if combo.codebook else None
    train_config = tokenizer_train_config(cfg, combo, folder, codebook)
    resume = None
    if (folder / STATE_NAME).is_file() and (folder / "train_config.json").is_file():
        saved = json.loads((folder / "train_config.json").read_text())
        differ = train_config.differences(saved, ignore=free_train_fields())
        if differ:
            raise ValueError(f"{folder} holds an unfinished run with other settings ({', '.join(differ)} differ); "
                             f"choose another --out, or delete {folder} to retrain it")
        resume = folder
    log.info("%s (%s, N=%d, D'=%d): %s %d steps", combo.name, combo.label, combo.size, combo.dim,
             "resuming" if resume else "training", cfg.steps)
    t0 = time.perf_counter()
    result = train_tokenizer(train_config, resume=resume, progress=cfg.progress)
    train_seconds = time.perf_counter() - t0
    if result.step < cfg.steps:  # stopped early: a half-trained model must never be scored as finished
        raise RuntimeError(f"{combo.name} stopped at step {result.step} of {cfg.steps}; rerun the study to resume it")
    t0 = time.perf_counter()
    scores = evaluate_combination(cfg, result.model, folder)
    done = {**asdict(combo), **scores, "usage_curve": result.usage_curve,
            "trainable_parameters": result.model.num_parameters(trainable_only=True),
            "train_seconds": round(train_seconds, 1), "eval_seconds": round(time.perf_counter() - t0, 1),
            "resumed": resume is not None, "spec": spec}
    atomic_write_json(marker, done)
    log.info("%s: utilization %.1f%% (%d entries), PSNR %.2f, FD-lite0 %.1f", combo.name,
             100 * done["utilization"], done["num_used"], done["psnr"], done["fd_lite0"])
    return done


# --- classification -------------------------------------------------------------------------------

def mean_interval(values: list[float]) -> dict:
    """Mean, sample standard deviation and the half-width of the 95% Student-t interval of the
    mean (0 for a single value: no interval can be given, and the report says n = 1)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "std": 0.0, "ci95": 0.0, "n": n}
    from scipy.stats import t

    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"mean": mean, "std": std, "ci95": float(t.ppf(0.975, n - 1)) * std / math.sqrt(n), "n": n}


def classify_all(cfg: StudyConfig, results: list[dict]) -> dict:
    """Top-1 of token-map ViTs for every tokenizer of the study, on each labelled set:
    `classify_seeds` classifiers per tokenizer (one recipe for all), with mean and 95% interval."""
    from .classify.data import labelled_set
    from .classify.training import classify

    out = Path(cfg.out_dir)
    scores: dict[str, dict] = {}
    for name in cfg.classify:
        train, val = labelled_set(name, out / "classify-data", per_class=cfg.classify_per_class,
                                  train_crops=cfg.classify_train_crops, val_crops=cfg.classify_val_crops)
        scores[name] = {}
        for r in results:
            tokenizer = out / "runs" / r["name"] / "tokenizer"  # where OUT is now, even if it moved
            folder = out / "classify" / name / r["name"]
            runs = []
            for k in range(cfg.classify_seeds):
                seed = cfg.seed + k
                log.info("classify %s on %s token maps (seed %d)", name, r["name"], seed)
                target = folder / f"seed-{seed}"
                if k:  # the token caches do not depend on the seed: encode once, link for the others
                    target.mkdir(parents=True, exist_ok=True)
                    for split in ("train", "val"):
                        link = target / f"cache-{split}"
                        if not link.exists():
                            link.symlink_to(Path("..") / f"seed-{cfg.seed}" / f"cache-{split}",
                                            target_is_directory=True)
                overrides = [f"epochs={cfg.classify_epochs}", f"batch_size={cfg.classify_batch_size}",
                             f"lr={cfg.classify_lr}", f"seed={seed}", "warmup_epochs=0.5"]
                runs.append(classify(tokenizer, train, val, target, model=cfg.classifier, overrides=overrides,
                                     workers=0, device=cfg.device, progress=cfg.progress))
            first = runs[0]
            scores[name][r["name"]] = {
                **{k: first[k] for k in ("num_val", "num_train", "num_classes", "embed")},
                "top1": mean_interval([x["top1"] for x in runs]),
                "train_top1": mean_interval([x["train_top1"] for x in runs]),
                "seeds": [cfg.seed + k for k in range(cfg.classify_seeds)],
                "per_seed_top1": [x["top1"] for x in runs], "seconds": sum(x["seconds"] for x in runs)}
    return scores


def pool_classification(scores: dict, summary: list[dict]) -> list[dict]:
    """One row per table cell (series x size) of one labelled set's scores. Over several tokenizer
    replicates, top-1 is the mean of the replicates' mean top-1 with the 95% interval over the
    replicates, so it carries how much the tokenizer's own seed moves the score (the classifiers
    of one tokenizer share its token maps and vary less); over one, the interval is over its
    classifier seeds."""
    rows = []
    for cell in summary:
        runs = [scores[name] for name in cell["names"] if name in scores]
        if not runs:
            continue
        top1 = runs[0]["top1"] if len(runs) == 1 else mean_interval([r["top1"]["mean"] for r in runs])
        rows.append({**cell, "top1": top1, "train_top1": mean_interval([r["train_top1"]["mean"] for r in runs]),
                     "tokenizers": len(runs), "classifiers": sum(len(r["per_seed_top1"]) for r in runs)})
    return rows


# --- report ----------------------------------------------------------------------------------------

SUMMARIZED = ("utilization", "num_used", "perplexity", "psnr", "ssim", "perceptual", "fd_lite0")


def first_replicate(results: list[dict], seed: int) -> list[dict]:
    """The results of the base seed's replicate (a result of an earlier version has no seed: it is one)."""
    return [r for r in results if r.get("seed", seed) == seed]


def summarize(results: list[dict]) -> list[dict]:
    """One row per table cell (series x size): the replicates' mean of every scored number, with
    `spread[key]` = mean_interval over the seeds (n = 1 where the study ran one seed)."""
    cells: dict[tuple, list[dict]] = {}
    for r in results:
        cells.setdefault((r["series"], r["size"]), []).append(r)
    rows = []
    for runs in cells.values():
        spread = {k: mean_interval([float(r[k]) for r in runs]) for k in SUMMARIZED}
        rows.append({**{k: v for k, v in runs[0].items() if k not in ("name", "usage_curve", "window_curve")},
                     **{k: spread[k]["mean"] for k in SUMMARIZED}, "spread": spread,
                     "seeds": [r.get("seed", 0) for r in runs], "names": [r["name"] for r in runs]})
    return rows


def _mean_pm(row: dict, key: str, scale: float = 1.0, digits: int = 1) -> str:
    """"m" for one seed, "m +- h" (the 95% interval's half-width) for several."""
    spread = row.get("spread", {}).get(key)
    text = f"{scale * row[key]:.{digits}f}"
    return text if spread is None or spread["n"] < 2 else f"{text} +- {scale * spread['ci95']:.{digits}f}"

def _series(results: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for r in results:
        grouped.setdefault(r["series"], []).append(r)
    return {k: sorted(v, key=lambda r: r["size"]) for k, v in grouped.items()}


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _errors(rows: list[dict], key: str, scale: float = 1.0) -> list[float] | None:
    """The 95% intervals' half-widths of summarized rows (None where every cell had one seed)."""
    half = [scale * r.get("spread", {}).get(key, {}).get("ci95", 0.0) for r in rows]
    return half if any(half) else None


def _save_utilization_axes(plt, fig, ax, ticks, tick_labels, xlabel: str, ylabel: str, path: Path,
                           legend_size: int) -> None:
    """A utilization plot's common finish: log2 x axis at the given ticks, 0-105% y axis, saved."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, tick_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_utilization(results: list[dict], path: Path) -> None:
    """Utilization against codebook size, one line per quantizer (the paper's Figure 1a); over
    several seeds, the mean with its 95% interval."""
    plt = pyplot("the study plots")
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=120)
    for rows in _series(results).values():
        ax.errorbar([r["size"] for r in rows], [100 * r["utilization"] for r in rows],
                    yerr=_errors(rows, "utilization", 100), marker="o", capsize=3, label=rows[0]["label"])
    sizes = sorted({r["size"] for r in results})
    ceiling = {r["size"]: r["uniform_ceiling"] for r in results}
    ax.plot(sizes, [100 * ceiling[s] for s in sizes], ls="--", color="grey", lw=1, label="uniform code, same window")
    _save_utilization_axes(plt, fig, ax, sizes, [f"{s:,}" for s in sizes], "codebook size N",
                           "utilization (%) on held-out crops", path, legend_size=8)


def plot_window_curves(results: list[dict], path: Path) -> bool:
    """Utilization against the window's length (tokens per entry), one line per combination that
    kept a curve, with a uniform code's for reference. False (no file) where none kept one."""
    with_curve = [r for r in results if len(r.get("window_curve") or ()) > 1]
    if not with_curve:
        return False
    plt = pyplot("the study plots")
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=120)
    for r in sorted(with_curve, key=lambda r: r["size"]):
        points = r["window_curve"]
        ax.plot([p["tokens_per_entry"] for p in points], [100 * p["utilization"] for p in points], marker="o",
                label=f"{r['label']}, {r['size']:,}")
    ticks = sorted({p["tokens_per_entry"] for r in with_curve for p in r["window_curve"]})
    # uniform_ceiling's large-N limit, 1 - exp(-tokens per entry): one line for every size
    ax.plot(ticks, [100 * -math.expm1(-t) for t in ticks], ls="--", color="grey", lw=1, label="uniform code")
    _save_utilization_axes(plt, fig, ax, ticks, [f"{t:g}" for t in ticks], "window: held-out tokens per codebook entry",
                           "utilization (%)", path, legend_size=7)
    return True


def plot_reconstruction(results: list[dict], path: Path) -> None:
    """PSNR and FD-lite0 against codebook size, one line per quantizer."""
    plt = pyplot("the study plots")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    sizes = sorted({r["size"] for r in results})
    for key, ax, title in (("psnr", axes[0], "PSNR (dB), higher is better"),
                           ("fd_lite0", axes[1], "FD-lite0, lower is better")):
        for rows in _series(results).values():
            ax.errorbar([r["size"] for r in rows], [r[key] for r in rows], yerr=_errors(rows, key), marker="o",
                        capsize=3, label=rows[0]["label"])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
        ax.set_xlabel("codebook size N")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _pivot(results: list[dict], value, header: str) -> str:
    sizes = sorted({r["size"] for r in results})
    lines = [f"| {header} | " + " | ".join(f"{s:,}" for s in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for rows in _series(results).values():
        by_size = {r["size"]: r for r in rows}
        cells = [value(by_size[s]) if s in by_size else "" for s in sizes]
        lines.append(f"| {rows[0]['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _window_table(results: list[dict]) -> str:
    """One row per combination: utilization at 4, 8, 16, ... tokens per entry of the held-out
    window ("" for a result of an earlier version, which kept no curve)."""
    with_curve = [r for r in results if r.get("window_curve")]
    if not with_curve:
        return ""
    columns = sorted({round(p["tokens_per_entry"]) for r in with_curve for p in r["window_curve"]})
    lines = ["| model | N | " + " | ".join(str(c) for c in columns) + " |", "|---" * (len(columns) + 2) + "|"]
    order = {series: k for k, series in enumerate(dict.fromkeys(r["series"] for r in with_curve))}
    for r in sorted(with_curve, key=lambda r: (order[r["series"]], r["size"])):  # the plan's order
        points = {round(p["tokens_per_entry"]): p for p in r["window_curve"]}
        cells = [f"{100 * points[c]['utilization']:.1f} ({100 * points[c]['uniform_ceiling']:.0f})" if c in points
                 else "" for c in columns]
        lines.append(f"| {r['label']} | {r['size']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    cfg, results = report["config"], report["combinations"]
    summary = report.get("summary") or summarize(results)
    seeds = cfg.get("seeds", 1)
    title = "vqgan-lc study" + ("" if cfg["ablation"] == "none" else f": {cfg['ablation']} ablation")
    parts = [f"# {title}\n"]
    over = "" if seeds < 2 else f"; mean +- 95% interval over {seeds} seeds"
    parts.append(f"Utilization (%) over the held-out window (in brackets: what a uniform code would reach on it{over}):\n")
    parts.append(_pivot(summary, lambda r: f"{_mean_pm(r, 'utilization', 100)} ({100 * r['uniform_ceiling']:.0f})",
                        "model \\ N"))
    curves = _window_table(first_replicate(results, cfg["seed"]))
    if curves:
        parts.append(f"\nUtilization (%) against the window's length in tokens per entry (seed {cfg['seed']}; in "
                     "brackets what a uniform code would reach):\n")
        parts.append(curves)
    parts.append(f"\nPSNR (dB) / FD-lite0{over}:\n")
    parts.append(_pivot(summary, lambda r: f"{_mean_pm(r, 'psnr', digits=2)} / {_mean_pm(r, 'fd_lite0', digits=0)}",
                        "model \\ N"))
    for name, rows in report.get("classification_summary", {}).items():
        if rows:
            first = next(iter(report["classification"][name].values()))
            tokenizers, classifiers = rows[0]["tokenizers"], len(first["per_seed_top1"])
            over = (f"{classifiers} classifier seeds" if tokenizers == 1 else
                    f"{tokenizers} tokenizer replicates, each the mean of {classifiers} classifier seeds")
            parts.append(f"\nToken-map classification top-1 (%) on {name} ({first['num_val']} held-out images, "
                         f"{first['num_classes']} classes, {first['embed']} embedding; mean +- 95% interval over "
                         f"{over}; in brackets the mean on the training images):\n")
            parts.append(_pivot(rows, lambda r: f"{100 * r['top1']['mean']:.1f} +- {100 * r['top1']['ci95']:.1f} "
                                                f"({100 * r['train_top1']['mean']:.1f})", "tokenizer \\ N"))
    rows = ["| model | N | D' | seed | utilization | entries used | tokens / entry | PSNR | SSIM | perceptual-lite0 | "
            "FD-lite0 | train s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['label']} | {r['size']:,} | {r['dim']} | {r.get('seed', cfg['seed'])} | "
                    f"{100 * r['utilization']:.1f}% | "
                    f"{r['num_used']:,} | {r['tokens_per_entry']:.1f} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                    f"{r['perceptual']:.3f} | {r['fd_lite0']:.1f} | {r['train_seconds']:.0f} |")
    parts.append("\nEvery combination:\n")
    parts.append("\n".join(rows))
    parts.append(f"\n\n{report['protocol']}\n\n{report['seconds']:.0f} s for this invocation "
                 f"({report['combinations_trained']} combinations trained, the rest reused).\n")
    return "\n".join(parts)


def _losses(loss: LossConfig) -> str:
    perceptual = [loss.perceptual] if loss.perceptual != "none" else []
    return " + ".join([loss.reconstruction.upper(), *perceptual, "quantizer loss"])


def _protocol(cfg: StudyConfig) -> str:
    ae = cfg.autoencoder
    return (f"Protocol: every tokenizer has the same encoder/decoder ({cfg.image_size} px, f{ae.downsample_factor}, "
            f"ch {ae.ch}, z_channels {ae.z_channels}) and trains {cfg.steps} steps of batch {cfg.batch_size} "
            f"(lr {cfg.lr}, the quantizers' trained parameters (LC projector, VQ/FC/l2 codebooks, SimVQ map) at "
            f"{cfg.quantizer_lr_scale:g}x that rate, "
            f"Adam (0.5, 0.9), {_losses(cfg.loss)}, no GAN) on random crops "
            f"of the bundled photos' train regions; only the quantizer differs (LC, FC, l2 and SimVQ: D'={cfg.low_dim}; "
            f"VQ and EMA with or without restarts: D'={ae.z_channels}; l2 and SimVQ with their sources' loss weights "
            f"0.25 / 1.0). LC codebooks: {cfg.kmeans_iters}-iteration k-means of {BACKBONE} features "
            f"({CODEBOOK_DIM}-d) of max({cfg.codebook_crops} crops' vectors, {cfg.codebook_vectors_per_entry} x N) "
            f"vectors of train crops. Utilization: distinct entries used / N over max({cfg.usage_crops} crops, "
            f"{cfg.usage_tokens_per_entry} tokens per entry) of held-out crops ({cfg.tokens_per_crop} tokens each), "
            f"also read at {WINDOW_CURVE_START}, {2 * WINDOW_CURVE_START}, ... tokens per entry of the same window; "
            f"PSNR (RGB), SSIM, "
            f"perceptual-lite0 and FD-lite0 over the first {cfg.eval_crops} of them. "
            + (f"Seed {cfg.seed}. " if cfg.seeds == 1 else
               f"Seeds {cfg.seed}-{cfg.seed + cfg.seeds - 1}, each replicate with its own codebook crops, k-means, "
               "initialisation and data order; tables give the mean +- the half-width of the 95% Student-t interval. ")
            + "Scale: the paper trains f16 "
            "models at 256 px for 20 ImageNet epochs and scores 50,000 val images with LPIPS and rFID; this is a "
            "CPU-sized run of the same code, so compare the trends, not the values (perceptual-lite0 and FD-lite0 "
            "are offline stand-ins, not comparable with LPIPS or FID).")


def run_study(cfg: StudyConfig) -> dict:
    """Train and evaluate every planned combination (skipping finished ones), then classify
    (when asked) and write OUT/report.json, OUT/report.md and the plots."""
    from .files import DirectoryLock, check_writable_dir

    cfg.validate()
    pyplot("the study plots")  # a missing extra is reported before an hour of training, not after
    out = check_writable_dir(cfg.out_dir)
    lock = DirectoryLock(out).acquire()
    try:
        started = time.perf_counter()
        features = {seed: _Features(cfg, seed) for seed in range(cfg.seed, cfg.seed + cfg.seeds)}
        combos = plan(cfg)
        log.info("study: %d combinations (%s) in %s", len(combos), ", ".join(c.name for c in combos), out)
        results, trained = [], 0
        for combo in combos:
            before = (out / "runs" / combo.name / RESULT_NAME).is_file()
            result = run_combination(cfg, combo, features[combo.seed])
            # a shared folder (an ablation variant equal to the main LC) keeps this table's label
            shown = {k: v for k, v in result.items() if k != "spec"}  # the settings live in the run folder
            results.append({**shown, "series": combo.series, "label": combo.label})
            trained += not before
        summary = summarize(results)
        report = {"config": _json(cfg.to_dict()), "combinations": results, "summary": summary,
                  "protocol": _protocol(cfg), "combinations_trained": trained}
        if cfg.classify:  # every replicate's tokenizers, each with classifier seeds of its own
            report["classification"] = classify_all(cfg, results)
            report["classification_summary"] = {
                name: [{k: row[k] for k in ("series", "label", "size", "names", "top1", "train_top1", "tokenizers",
                                            "classifiers")} for row in pool_classification(scores, summary)]
                for name, scores in report["classification"].items()}
        report["seconds"] = round(time.perf_counter() - started, 1)
        plot_utilization(summary, out / "utilization.png")
        plot_reconstruction(summary, out / "reconstruction.png")
        plot_window_curves(first_replicate(results, cfg.seed), out / "window.png")
        atomic_write_json(out / "report.json", report)
        text = markdown(report)
        atomic_write_text(out / "report.md", text)
        print(text)
        print(f"report and plots in {out}")
        return report
    finally:
        lock.release()
