"""Generator commands: cache, train-gen, export, sample, eval-gen.

    vqgan-lc cache tokens|latents TOKENIZER --data DIR --out CACHE [--flip] [--write-scale]
    vqgan-lc train-gen gpt-tiny|dit-tiny|sit-tiny|ldm-tiny --cache CACHE --out RUN [--set key=value ...]
    vqgan-lc export RUN --out PIPELINE [--tokenizer-hub-id ORG/NAME]   (the command lives in cli/tokenizer.py)
    vqgan-lc sample PIPELINE|RUN --classes 0,1,2 --per-class 8 --cfg-scale 2 --out DIR [--npz]
    vqgan-lc eval-gen SAMPLES|NPZ --reference DIR|NPZ --out OUT
    vqgan-lc eval-gen stats DIR|NPZ --out REF.npz
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
    from ..generate.families import family_of
    from ..generate.training import model_config_for

    class Sizes:  # what a cache tells model_config_for, with stand-in values
        header = {"kind": family_of(preset).data_kind, "grid": [16, 16],
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
        from ..generate.families import FAMILIES

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
    p.add_argument("--write-scale", action="store_true", help="latents: store the measured 1/std in the cache as "
                   "train-gen's default latent_scale for it (the paper: unscaled); the tokenizer is not written to")
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

    p = sub.add_parser("sample", help="sample a generator into PNGs and/or an ADM npz batch, a grid and token ids "
                       "(any count; sharded under torchrun; resumable)", parents=[common.parent(common.device)],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="pipeline folder (vqgan-lc export, or a finished train-gen run), hub id, or run folder")
    p.add_argument("--out", required=True, help="samples folder: empty, or holding this same sampling (resumed)")
    p.add_argument("--overwrite", action="store_true", help="clear --out first when it holds anything else")
    p.add_argument("--fid-protocol", action="store_true", help="the paper's FID protocol: 50 samples of every class")
    p.add_argument("--protocol", choices=("ours", "reference"), help="ours: the flags below; reference: the released "
                   "model's own sampler, steps, grid, guidance and channels (top-k may be set); None: the folder's "
                   "(reference for converted checkpoints)")
    p.add_argument("--npz", action="store_true", help="also write samples.npz, the ADM suite's sample batch "
                   "(arr_0 uint8 N x H x W x 3, arr_1 labels)")
    p.add_argument("--no-png", action="store_true", help="write no PNG per sample (with --npz)")
    p.add_argument("--classes", type=_classes, default=(), help="comma-separated class ids (empty: every class)")
    p.add_argument("--per-class", type=common.positive_int, default=4)
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1: none)")
    p.add_argument("--temperature", type=float, default=1.0, help="gpt")
    p.add_argument("--top-k", type=int, help="gpt: None is 10%% of the vocabulary (the paper); 0 disables")
    p.add_argument("--top-p", type=float, help="gpt: nucleus sampling")
    p.add_argument("--method", help="dit: ddpm | ddim; ldm: ddim | ddpm; sit: dopri5 | heun | euler | sde "
                   "(None: the first, or the pipeline's)")
    p.add_argument("--steps", type=common.positive_int, help="sampling steps (None: 250 DDPM, 200 DDIM, 50 Heun; "
                   "dopri5 is adaptive and takes none)")
    p.add_argument("--no-snap", action="store_true", help="decode latents as sampled, without snapping to the codebook")
    p.add_argument("--batch-size", type=common.positive_int, default=32)
    p.add_argument("--seed", type=int, default=0, help="sample i draws from its own generator seeded by (seed, i)")
    p.set_defaults(func=sample)

    p = sub.add_parser("eval-gen", help="score samples: the ADM suite's IS, FID, sFID, precision, recall (Inception "
                       "weights), FD-lite0, class consistency, utilization; `eval-gen stats` writes reference statistics",
                       parents=[common.parent(common.device, common.download)])
    p.add_argument("samples", help="folder written by `vqgan-lc sample` (<class>/<NNNN>.png), an ADM sample batch .npz "
                   "or a statistics .npz; or the word `stats` followed by SOURCE")
    p.add_argument("stats_source", nargs="?", metavar="SOURCE", help="with `stats`: the image folder or sample .npz whose "
                   "statistics --out REF.npz receives (computed once, resumable, sharded under torchrun)")
    p.add_argument("--reference", default="", help="real images in class sub-folders (the training images), an ADM reference batch "
                   "(e.g. VIRTUAL_imagenet256_labeled.npz) or a `vqgan-lc eval-gen stats` file")
    p.add_argument("--out", required=True, help="report folder; with `stats`: the .npz to write")
    # defaults equal GenEvalConfig's and StatsConfig's (tests/test_cli_defaults.py keeps them so)
    p.add_argument("--fid", default="auto", help="auto (when the Inception weights are on disk) | inception | off")
    p.add_argument("--fd-image-size", type=common.positive_int, default=256, help="folder images are loaded at this size")
    p.add_argument("--batch-size", type=common.positive_int, default=32)
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    p.add_argument("--pr-reference-images", type=common.positive_int, default=10000,
                   help="reference images behind precision / recall: a seeded subset of a larger set")
    p.add_argument("--max-images", type=common.positive_int, help="with `stats`: stop after this many images per "
                   "process (rerun to continue)")
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
            from ..generate.cache import SCALE_NAME, default_latent_scale
            print(f"latent_scale {default_latent_scale(store):.6g} written to {args.out}/{SCALE_NAME} "
                  "(train-gen's default for this cache)")
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
        import os
        if (args.preset and args.preset != saved.generator) or (
                args.cache and os.path.abspath(args.cache) != os.path.abspath(saved.data)):
            raise ValueError(f"--resume {args.resume} keeps the run's saved preset and cache; drop the preset and --cache")
        config = common.resumed_config(saved, args.resume, args.set)
    else:
        if not (args.preset and args.cache and args.out):
            raise ValueError("train-gen needs a preset, --cache and --out (or --resume RUN)")
        config = generator_config(args.preset, args.cache, args.out, args.set)
        from ..generate.pipeline import GENERATOR_DIR, PROCESS_NAME, TOKENIZER_DIR
        # a finished run is a pipeline folder: its tokenizer copy and process.json are the run's too
        common.refuse_existing_run(config.out_dir, args.overwrite, GENERATOR_DIR, TOKENIZER_DIR, PROCESS_NAME)
    common.writable_out(config.out_dir, "run folder")
    result = train_generator(config, resume=args.resume)
    if result.is_main:
        print(common.training_summary(result, "generator", config))
    return 0


def export_pipeline(args) -> int:
    """`vqgan-lc export RUN --out DIR` for a generator run (the tokenizer export shares the command)."""
    from ..generate.pipeline import export_run
    common.writable_out(args.out, "pipeline folder")
    folder = export_run(args.checkpoint, args.out, tokenizer_hub_id=args.tokenizer_hub_id)
    print(f"pipeline folder written: {folder} (generator/, {'tokenizer ' + args.tokenizer_hub_id if args.tokenizer_hub_id else 'tokenizer/'}, "
          "process.json); sample it with `vqgan-lc sample " f"{folder} --out SAMPLES`")
    return 0


def sample(args) -> int:
    from ..generate.sample import SampleConfig, sample_run
    config = SampleConfig(run=args.run, out=args.out, classes=args.classes, per_class=50 if args.fid_protocol and
                          args.per_class == 4 else args.per_class, fid_protocol=args.fid_protocol,
                          protocol=args.protocol, cfg_scale=args.cfg_scale, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p,
                          method=args.method, steps=args.steps, snap=not args.no_snap, png=not args.no_png,
                          npz=args.npz, batch_size=args.batch_size, seed=args.seed, overwrite=args.overwrite,
                          device=args.device)
    report = sample_run(config)
    if report:  # rank 0
        print(f"{report['num_samples']} samples ({report['method']}, guidance {report['guidance_scale']}) -> "
              f"{args.out}; utilization of the generated tokens {100 * report['utilization']:.1f}% of "
              f"{report['codebook_size']}")
    return 0


def eval_gen(args) -> int:
    from ..evaluate.generation import GenEvalConfig, StatsConfig, adm_table, compute_reference_stats, evaluate_samples

    chosen = {key: getattr(args, key) for key in ("fid", "fd_image_size", "batch_size", "workers", "pr_reference_images")}
    if args.samples == "stats" and args.stats_source is not None:
        if args.reference:
            raise ValueError("eval-gen stats summarises one set: drop --reference")
        info = compute_reference_stats(StatsConfig(source=args.stats_source, out=args.out, device=args.device,
                                                   max_images=args.max_images, **chosen))
        if info is None:
            from ..distributed import is_main
            if is_main():
                print(f"{args.out}: not finished yet (progress saved in {args.out}.partial); run the same command again "
                      "to continue")
        else:
            print(f"statistics of {info['num_images']} images ({'Inception + ' if info['inception'] else ''}FD-lite0; "
                  f"{info['pool_images']} pool feature rows for precision / recall) -> {args.out}")
        return 0
    if args.stats_source is not None:
        raise ValueError(f"eval-gen takes one samples argument, got {args.samples!r} and {args.stats_source!r} "
                         "(the two-argument form is `eval-gen stats SOURCE --out REF.npz`)")
    if not args.reference:
        raise ValueError("eval-gen needs --reference: the training images, an ADM reference batch or a stats .npz")
    if args.max_images is not None:
        raise ValueError("--max-images belongs to `eval-gen stats`")
    report = evaluate_samples(GenEvalConfig(samples=args.samples, reference=args.reference, out=args.out,
                                            device=args.device, **chosen))
    if report is None:  # ranks > 0 of a torchrun job
        return 0
    print(adm_table(report))
    consistency, fd = report.get("class_consistency"), report.get("fd_lite0")
    print(f"FD-lite0 {'n/a' if fd is None else f'{fd:.2f}'} | class consistency "
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
