"""`vqgan-lc demo`: the whole method on photos bundled with installed packages, offline, on a CPU.

1. build a 16,384-entry codebook by k-means over EfficientNet-Lite0 patch features of crops
   of the bundled photos (the offline stand-in for the paper's CLIP features);
2. train VQGAN-LC (that codebook frozen + a linear projector) and the plain VQGAN baseline
   (a learned codebook of the same size) with the same architecture, data and step budget;
3. evaluate both on held-out crops (pixels never seen in training) holding >= 10 N tokens, so
   utilization is measured over a window large enough to mean something; count utilization
   over as many fixed crops of the training region too (the paper's Table 2 counts over its
   training images), and beside both the codebook's own ceiling: the share of entries the
   backbone features of the same crops reach when assigned straight to the k-means centres;
4. write report.json / report.md, reconstruction grids (comparison.png: held-out originals, then
   VQGAN-LC, then VQGAN) and a utilization-over-training plot.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .config import Config
from .data import build_dataset, collate_skip_corrupt
from .data.grid import pyplot
from .files import atomic_path, atomic_write_json, atomic_write_text
from .tokenizer.config import CPU_QUANTIZER_LR_SCALE, get_preset
from .tokenizer.losses import LossConfig
from .tokenizer.training import TokenizerTrainConfig, train_tokenizer

log = logging.getLogger("vqgan_lc.demo")

MODELS = {"vqgan-lc": "vqgan-lc-tiny", "vqgan": "vqgan-tiny"}


@dataclass
class DemoConfig(Config):
    out_dir: str = "runs/demo"
    codebook_size: int = 16_384
    codebook_crops: int = 1024       # crops whose Lite0 patch features feed k-means
    codebook_crop_size: int = 128    # 128 px -> 8x8 stride-16 grid, no pooling: 64 vectors per crop
    kmeans_iters: int = 20
    image_size: int = 64             # the tiny presets: 64 px crops, f8 -> 8x8 tokens
    train_crops: int = 2048          # crops per epoch (new random crops every epoch)
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    quantizer_lr_scale: float = CPU_QUANTIZER_LR_SCALE  # LC projector / VQGAN codebook at 30x the rate
    tokens_per_entry: int = 10       # eval window: >= 10 N tokens
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        counts = (self.codebook_size, self.codebook_crops, self.kmeans_iters, self.train_crops, self.steps,
                  self.batch_size, self.tokens_per_entry)
        if min(counts) < 1:
            raise ValueError("codebook_size, codebook_crops, kmeans_iters, train_crops, steps, batch_size and "
                             f"tokens_per_entry must be >= 1, got {counts}")
        if self.image_size < 8 or self.image_size % 8 or self.codebook_crop_size < 16 or self.codebook_crop_size % 16:
            raise ValueError(f"image_size must be a multiple of 8 (the tiny presets' f8) and codebook_crop_size of 16 "
                             f"(Lite0's stride), got {self.image_size} and {self.codebook_crop_size}")
        if not (self.lr > 0 and self.quantizer_lr_scale > 0):
            raise ValueError(f"lr and quantizer_lr_scale must be > 0, got {self.lr} and {self.quantizer_lr_scale}")

    @classmethod
    def quick(cls) -> "DemoConfig":
        """Seconds instead of minutes: for the test suite."""
        return cls(codebook_size=256, codebook_crops=48, kmeans_iters=5, train_crops=64, steps=4,
                   batch_size=8, tokens_per_entry=2)

    @property
    def eval_crops(self) -> int:
        tokens_per_crop = (self.image_size // 8) ** 2
        return -(-self.tokens_per_entry * self.codebook_size // tokens_per_crop)


def build_demo_codebook(cfg: DemoConfig, path: Path) -> dict:
    from .codebook import build_codebook, save_codebook

    crops = build_dataset(f"demo:train:{cfg.codebook_crops}", cfg.codebook_crop_size, train=True, seed=cfg.seed + 1)
    loader = DataLoader(crops, batch_size=32, collate_fn=collate_skip_corrupt)
    codebook = build_codebook((batch["image"] for batch in loader), cfg.codebook_size,
                              backbone="efficientnet-lite0", pool=None, mode="global", seed=cfg.seed,
                              iters=cfg.kmeans_iters)
    save_codebook(path, codebook.vectors, codebook.metadata, exemplars=codebook.exemplars)
    return dict(codebook.metadata)


def _train_config(cfg: DemoConfig, preset: str, out: Path, codebook: Path | None) -> TokenizerTrainConfig:
    # Same data, budget and losses for both models; no GAN: a few hundred steps are far too few for it.
    # The baseline learns a codebook of the same size as the LC one (the LC size comes from the file).
    model = get_preset(preset)
    model.quantizer.codebook_size = cfg.codebook_size
    return TokenizerTrainConfig(model=model, codebook=str(codebook) if codebook else None,
                                data=f"demo:train:{cfg.train_crops}", batch_size=cfg.batch_size, lr=cfg.lr,
                                quantizer_lr_scale=cfg.quantizer_lr_scale,
                                max_steps=cfg.steps, warmup_epochs=0.0, loss=LossConfig(disc_start=10**9),
                                seed=cfg.seed, out_dir=str(out), save_every=max(cfg.steps, 1),
                                image_every=max(cfg.steps, 1), usage_every=max(cfg.steps // 10, 1), log_every=10)


def _window(cfg: DemoConfig, split: str, size: int):
    """The fixed crops utilization is counted over: held-out crops (the evaluation set) or as many
    crops of the training region (fixed boxes, no flips, drawn apart from the training stream)."""
    seed = cfg.seed if split == "eval" else cfg.seed + 2
    return build_dataset(f"demo:{split}:{cfg.eval_crops}", size, train=False, seed=seed)


def _evaluate(model, cfg: DemoConfig, out: Path) -> dict:
    from .evaluate.evaluator import EvalConfig, run_evaluation

    loader = DataLoader(_window(cfg, "eval", cfg.image_size), batch_size=64, collate_fn=collate_skip_corrupt)
    # FD-lite0 at the crops' own 64 px keeps the demo fast; compare it only between demo models.
    config = EvalConfig(image_size=cfg.image_size, batch_size=64, perceptual="perceptual-lite0", fid="off",
                        fd_image_size=cfg.image_size,
                        dataset=f"demo held-out crops ({cfg.eval_crops} crops of the bundled photos' held-out regions)",
                        preprocessing="random square crops of the held-out region, resized to 64 px")
    return run_evaluation(model, loader, out, config)


def _ceilings(cfg: DemoConfig, codebook_path: Path) -> dict:
    """The codebook's feature-space ceiling on both windows (see `codebook.coverage`): the same
    crop boxes at the codebook's crop size, so each crop gives as many vectors as tokens."""
    from .backbones.registry import build_backbone
    from .codebook import load_codebook
    from .codebook.coverage import feature_ceiling

    backbone = build_backbone("efficientnet-lite0")
    vectors = load_codebook(codebook_path).vectors
    return {split: feature_ceiling(vectors, _window(cfg, split, cfg.codebook_crop_size), backbone, pool=None)
            for split in ("eval", "train")}


def _comparison_grid(models: dict, cfg: DemoConfig, path: Path, count: int = 8) -> None:
    """Held-out originals (top row) above each model's reconstructions, one row per model."""
    from .data.grid import save_grid

    data = _window(cfg, "eval", cfg.image_size)
    originals = torch.stack([data[i]["image"] for i in range(min(count, len(data)))])
    rows = [originals]
    with torch.no_grad():
        rows += [model(originals).reconstruction.clamp(-1, 1) for model in models.values()]
    save_grid(torch.cat(rows), path, nrow=len(originals))


def _plot_usage(curves: dict[str, list[dict]], path: Path) -> None:
    plt = pyplot("the demo plots utilization")

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for name, curve in curves.items():
        ax.plot([c["step"] for c in curve], [100 * c["utilization"] for c in curve], marker="o", label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("codebook utilization (%)\nper training window")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _markdown(report: dict) -> str:
    rows = ["| model | codebook size | utilization, held-out crops (ceiling) | utilization, training-region crops "
            "(ceiling) | PSNR | SSIM | perceptual-lite0 | FD-lite0 |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in report["models"].items():
        held = f"{_percent(r['utilization'])} ({_percent(r.get('ceiling'))})"
        train = f"{_percent(r['utilization_train'])} ({_percent(r.get('ceiling_train'))})"
        rows.append(f"| {name} | {r['codebook_size']:,} | {held} | {train} | {r['psnr']:.2f} | "
                    f"{r['ssim']:.4f} | {r['perceptual']:.4f} | {r['fd_lite0']:.2f} |")
    first = next(iter(report["models"].values()))
    note = (f"\nUtilization: entries used at least once / N over {first['num_tokens']:,} tokens "
            f"({first['num_tokens'] / first['codebook_size']:.0f} per entry) of each window. Ceiling: the same crops' "
            "backbone features assigned straight to the k-means centres (the codebook's own reach; the VQGAN "
            "baseline learns its codebook, so it has none).\n")
    return "\n".join(rows) + "\n" + note


def run_demo(cfg: DemoConfig) -> dict:
    from .evaluate.evaluator import token_usage

    cfg.validate()
    pyplot("the demo plots utilization")  # a missing extra is reported before minutes of training, not after
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    codebook_path = out / "codebook.safetensors"
    log.info("building a %d-entry codebook from %d crops of the bundled photos", cfg.codebook_size, cfg.codebook_crops)
    codebook_info = build_demo_codebook(cfg, codebook_path)
    report = {"config": asdict(cfg), "codebook": codebook_info, "models": {}, "usage_curves": {}}
    log.info("measuring the codebook's feature-space ceiling on both windows")
    ceilings = _ceilings(cfg, codebook_path)
    report["ceilings"] = ceilings
    trained = {}
    for name, preset in MODELS.items():
        log.info("training %s (%s), %d steps", name, preset, cfg.steps)
        result = train_tokenizer(_train_config(cfg, preset, out / name, codebook_path if name == "vqgan-lc" else None))
        report["usage_curves"][name] = result.usage_curve
        entry = _evaluate(result.model, cfg, out / name / "eval")
        on_train = token_usage(result.model.eval(), DataLoader(_window(cfg, "train", cfg.image_size), batch_size=64,
                                                               collate_fn=collate_skip_corrupt))
        entry.update({"utilization_train": on_train["utilization"], "num_used_train": on_train["num_used"],
                      "num_tokens_train": on_train["num_tokens"], "top1_share_train": on_train["top1_share"]})
        # The ceiling belongs to the k-means codebook; the baseline learns its own, so it has none (None).
        for key, window in (("ceiling", "eval"), ("ceiling_train", "train")):
            stats = ceilings[window] if name == "vqgan-lc" else {}
            entry[key], entry[f"{key}_top1_share"] = stats.get("utilization"), stats.get("top1_share")
        report["models"][name] = entry
        trained[name] = result.model
    _plot_usage(report["usage_curves"], out / "utilization.png")
    _comparison_grid(trained, cfg, out / "comparison.png")
    report["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / "report.json", report)
    table = _markdown(report)
    atomic_write_text(out / "report.md", "# vqgan-lc demo\n\n" + table + f"\nReconstruction metrics on the "
                      f"held-out crops. {report['seconds']} s.\n")
    print(table)
    print(f"report, grids and plot in {out}")
    return report
