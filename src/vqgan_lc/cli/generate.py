"""Generator commands: cache, train-gen, sample, eval-gen.

    vqgan-lc cache tokens|latents TOKENIZER --data DIR --out CACHE [--flip] [--write-scale]
    vqgan-lc train-gen gpt-tiny|dit-tiny|sit-tiny|ldm-tiny --cache CACHE --out RUN [--set key=value ...]
    vqgan-lc sample RUN --classes 0,1,2 --per-class 8 --cfg-scale 2 --out DIR
    vqgan-lc eval-gen SAMPLES --reference DIR --out OUT
"""
from __future__ import annotations

import argparse

from . import common


TRAIN_GEN_EXAMPLES = """examples:
  vqgan-lc cache tokens TOKENIZER --data DIR --out tokens
  vqgan-lc train-gen gpt-tiny --cache tokens --out runs/gpt --set max_steps=2000 model.n_layer=6
  vqgan-lc cache latents TOKENIZER --data DIR --out latents
  vqgan-lc train-gen dit-tiny --cache latents --out runs/dit --set max_steps=5000 ema_decay=0.999
  vqgan-lc train-gen sit-tiny --cache latents --out runs/sit --set lr=2e-4
  vqgan-lc train-gen ldm-tiny --cache latents --out runs/ldm --set model.model_channels=64
  vqgan-lc train-gen --resume runs/dit --set max_steps=8000
  vqgan-lc train-gen dit-S --help        (the --set keys with dit-S's model.* values)"""

# The families' smallest presets, whose model.* keys `train-gen --help` lists when no preset is named.
HELP_PRESETS = ("gpt-tiny", "dit-tiny", "sit-tiny", "ldm-tiny")


def model_keys_help(preset: str) -> str:
    """The model.* `--set` keys of a generator preset with its values; the fields the cache
    decides are marked (they are set from the cache, not by the preset)."""
    from ..generate.training import model_config_for

    class Sizes:  # what a cache tells model_config_for, with stand-in values
        header = {"kind": "tokens" if preset.startswith("gpt") else "latents", "grid": [16, 16],
                  "codebook_size": 16384, "latent_dim": 8}
        labels, class_names = None, ["a class"]

    config = model_config_for(preset, Sizes())
    from_cache = {"vocab_size", "num_classes", "block_size", "in_channels", "input_size"}
    rows = [(f"model.{key}", kind, "from the cache" if key in from_cache else f"{preset}: {getattr(config, key)!r}")
            for key, kind, _ in type(config).describe_fields()]
    width = max(len(key) for key, _, _ in rows)
    return f"model.* keys of {preset} ({type(config).__name__}):\n" + "\n".join(
        f"  {key:<{width}}  {kind:<22} {value}" for key, kind, value in rows)


class _TrainGenParser(common.OneLineParser):
    """`train-gen --help` ends with the run's --set keys and the model.* keys of the preset named
    on the command line (`train-gen dit-S --help`), or of each family's tiny preset."""

    preset: str | None = None

    def parse_known_args(self, args=None, namespace=None):
        from ..generate.training import FAMILIES

        self.preset = next((a for a in args or () if a.split("-", 1)[0] in FAMILIES and "-" in a), None)
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        from ..generate.training import GeneratorTrainConfig

        rows = [row for row in GeneratorTrainConfig.describe_fields() if row[0] != "model"]
        width = max(len(key) for key, _, _ in rows)
        run_keys = "\n".join(f"  {key:<{width}}  {kind:<22} default {value!r}" for key, kind, value in rows)
        try:
            models = [model_keys_help(name) for name in ((self.preset,) if self.preset else HELP_PRESETS)]
        except ValueError as err:  # an unknown preset: say so, and list the tiny ones
            models = [f"({err})"] + [model_keys_help(name) for name in HELP_PRESETS]
        return (super().format_help() + "\n--set keys of the run (gpt presets set ema_decay=none):\n" + run_keys
                + "\n\n" + "\n\n".join(models) + "\n\n" + TRAIN_GEN_EXAMPLES + "\n")


def _classes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated class ids like 0,1,7; got {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser("cache", help="encode a dataset once with a tokenizer: token ids (GPT) or latents (DiT/SiT/LDM)",
                       parents=[common.parent(common.device, common.image_size)])
    p.add_argument("kind", choices=("tokens", "latents"))
    p.add_argument("tokenizer", help="tokenizer folder (config.json + model.safetensors)")
    p.add_argument("--data", required=True, help="image folder (class sub-folders -> labels), .txt list, or 'demo'")
    p.add_argument("--out", required=True, help="cache folder (resumable; under torchrun each rank encodes a slice)")
    p.add_argument("--flip", action="store_true", help="also store each image's horizontal mirror")
    p.add_argument("--write-scale", action="store_true", help="latents: write the measured 1/std into the "
                   "tokenizer's config.json as latent_scale, which train-gen then uses by default (the paper: unscaled)")
    p.add_argument("--batch-size", type=common.positive_int, default=32)
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    p.set_defaults(func=cache)

    p = common.add_parser(sub, "train-gen", _TrainGenParser, help="train a generator on a token or latent cache "
                          "(under torchrun for several processes)",
                          parents=[common.parent(common.overrides, common.overwrite)])
    p.add_argument("preset", nargs="?", help="gpt-tiny ... gpt-404m, dit-tiny ... dit-XL, sit-*, ldm-tiny, ldm-base; "
                   "optional with --resume")
    p.add_argument("--cache", help="token cache (gpt) or latent cache (dit, sit, ldm)")
    p.add_argument("--out", help="run folder")
    p.add_argument("--resume", metavar="RUN", help="continue this run exactly where it stopped, with its saved configuration")
    p.set_defaults(func=train_gen)

    p = sub.add_parser("sample", help="sample a generator run into PNGs, a grid and token ids",
                       parents=[common.parent(common.device)])
    p.add_argument("run", help="generator run folder (train-gen --out)")
    p.add_argument("--out", required=True)
    p.add_argument("--classes", type=_classes, default=(), help="comma-separated class ids (default: every class)")
    p.add_argument("--per-class", type=common.positive_int, default=4)
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1: none)")
    p.add_argument("--temperature", type=float, default=1.0, help="gpt")
    p.add_argument("--top-k", type=int, help="gpt: default 10%% of the vocabulary (the paper); 0 disables")
    p.add_argument("--top-p", type=float, help="gpt: nucleus sampling")
    p.add_argument("--method", help="dit/ldm: ddpm | ddim; sit: dopri5 | heun | euler | sde")
    p.add_argument("--steps", type=common.positive_int, help="sampling steps (default: 250 DDPM, 200 DDIM, 50 Heun)")
    p.add_argument("--no-snap", action="store_true", help="decode latents as sampled, without snapping to the codebook")
    p.add_argument("--batch-size", type=common.positive_int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=sample)

    p = sub.add_parser("eval-gen", help="score samples: FD-lite0 (and FID) against real images, class consistency, "
                       "utilization", parents=[common.parent(common.device, common.download)])
    p.add_argument("samples", help="folder written by `vqgan-lc sample` (<class>/<NNNN>.png)")
    p.add_argument("--reference", required=True, help="real images in class sub-folders (the training images)")
    p.add_argument("--out", required=True)
    p.add_argument("--fid", default="auto", help="auto (when the Inception weights are on disk) | inception | off")
    p.add_argument("--fd-image-size", type=common.positive_int, default=256)
    p.add_argument("--batch-size", type=common.positive_int, default=64)
    p.set_defaults(func=eval_gen)


def cache(args) -> int:
    from ..generate.cache import CacheConfig, build_cache
    config = CacheConfig(tokenizer=args.tokenizer, data=args.data, out=args.out, kind=args.kind, flip=args.flip,
                         image_size=args.image_size, batch_size=args.batch_size, workers=args.workers,
                         device=args.device, write_scale=args.write_scale)
    store = build_cache(config)
    if store is not None:
        print(f"{store.num_items} images encoded into {args.kind} of shape {store.item_shape(args.kind)} -> {args.out}")
        if args.write_scale:
            from ..tokenizer.model import VQModel
            print(f"latent_scale {VQModel.read_config(args.tokenizer).latent_scale:.6g} written to "
                  f"{args.tokenizer}/config.json")
    return 0


def train_gen(args) -> int:
    import os

    from ..generate.training import generator_config, read_generator_run, train_generator

    if args.resume:
        if args.out and os.path.abspath(args.out) != os.path.abspath(args.resume):
            raise ValueError(f"--resume {args.resume} continues in that folder; drop --out {args.out}")
        if args.overwrite:
            raise ValueError("--overwrite starts a new run and --resume continues one; give only one of them")
        common.refuse_other_family(args.resume, generator=True)
        saved = read_generator_run(args.resume)
        if (args.preset and args.preset != saved.generator) or (args.cache and args.cache != saved.data):
            raise ValueError(f"--resume {args.resume} keeps the run's saved preset and cache; drop the preset and --cache")
        config = common.resumed_config(saved, args.resume, args.set)
    else:
        if not (args.preset and args.cache and args.out):
            raise ValueError("train-gen needs a preset, --cache and --out (or --resume RUN)")
        config = generator_config(args.preset, args.cache, args.out, args.set)
        common.refuse_existing_run(config.out_dir, args.overwrite, "generator")
    common.writable_out(config.out_dir, "run folder")
    result = train_generator(config, resume=args.resume)
    if result.is_main:
        print(common.training_summary(result, "generator", config))
    return 0


def sample(args) -> int:
    from ..generate.sample import SampleConfig, sample_run
    config = SampleConfig(run=args.run, out=args.out, classes=args.classes, per_class=args.per_class,
                          cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          method=args.method, steps=args.steps, snap=not args.no_snap, batch_size=args.batch_size,
                          seed=args.seed, device=args.device)
    report = sample_run(config)
    print(f"{report['num_samples']} samples ({report['method']}, guidance {report['guidance_scale']}) -> {args.out}; "
          f"utilization of the generated tokens {100 * report['utilization']:.1f}% of {report['codebook_size']}")
    return 0


def eval_gen(args) -> int:
    from ..evaluate.generation import GenEvalConfig, evaluate_samples
    config = GenEvalConfig(samples=args.samples, reference=args.reference, out=args.out, fid=args.fid,
                           fd_image_size=args.fd_image_size, batch_size=args.batch_size, device=args.device)
    report = evaluate_samples(config)
    consistency = report.get("class_consistency")
    print(f"FD-lite0 {report['fd_lite0']:.2f} | class consistency "
          f"{'n/a' if consistency is None else f'{100 * consistency:.1f}%'} | {report['num_samples']} samples "
          f"-> {args.out}/report.json")
    return 0


def list_generator_presets() -> None:
    from ..generate.dit import DIT_PRESETS
    from ..generate.gpt import GPT_PRESETS
    from ..generate.unet import UNET_PRESETS

    print("generator presets (vqgan-lc train-gen PRESET --cache CACHE --out RUN):")
    print("  gpt (token ids):       ", ", ".join(GPT_PRESETS))
    print("  dit (latents):         ", ", ".join(DIT_PRESETS))
    print("  sit (latents, SiT):    ", ", ".join("sit-" + name.split("-", 1)[1] for name in DIT_PRESETS))
    print("  ldm (latents, UNet):   ", ", ".join(UNET_PRESETS))
