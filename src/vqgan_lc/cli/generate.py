"""Generator commands: cache, train-gen, export, sample, eval-gen.

    vqgan-lc cache tokens|latents TOKENIZER --data DIR --out CACHE [--flip] [--write-scale]
    vqgan-lc train-gen gpt-tiny|dit-tiny|sit-tiny|ldm-tiny --cache CACHE --out RUN [--set key=value ...]
    vqgan-lc export RUN --out PIPELINE [--tokenizer-hub-id ORG/NAME]   (the command lives in cli/tokenizer.py)
    vqgan-lc sample PIPELINE|RUN --classes 0,1,2 --per-class 8 --cfg-scale 2 --out DIR [--npz]
    vqgan-lc eval-gen SAMPLES --reference DIR --out OUT
"""
from __future__ import annotations

import argparse

from . import common


_TrainGenParser = common.parser_listing_keys("vqgan_lc.generate.training:GeneratorTrainConfig",
                                             "--set keys (model.* reach the architecture, e.g. model.n_layer=6):")


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
                          "(under torchrun for several processes)", parents=[common.parent(common.overrides)])
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

    p = sub.add_parser("eval-gen", help="score samples: FD-lite0 (and FID) against real images, class consistency, "
                       "utilization", parents=[common.parent(common.device, common.download)])
    p.add_argument("samples", help="folder written by `vqgan-lc sample` (<class>/<NNNN>.png)")
    p.add_argument("--reference", required=True, help="real images in class sub-folders (the training images)")
    p.add_argument("--out", required=True)
    p.add_argument("--fid", default="auto", help="auto (when the Inception weights are on disk) | inception | off")
    p.add_argument("--fd-image-size", type=common.positive_int, default=256)
    p.add_argument("--batch-size", type=common.positive_int, default=32)
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
    from ..generate.training import generator_config, read_generator_run, train_generator

    if args.resume:
        common.refuse_other_family(args.resume, generator=True)
        saved = read_generator_run(args.resume)
        if (args.preset and args.preset != saved.generator) or (args.cache and args.cache != saved.data):
            raise ValueError(f"--resume {args.resume} keeps the run's saved preset and cache; drop the preset and --cache")
        config = common.resumed_config(saved, args.resume, args.set)
    else:
        if not (args.preset and args.cache and args.out):
            raise ValueError("train-gen needs a preset, --cache and --out (or --resume RUN)")
        config = generator_config(args.preset, args.cache, args.out, args.set)
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
                          cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
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
