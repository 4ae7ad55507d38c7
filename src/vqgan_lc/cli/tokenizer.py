"""Tokenizer commands: train, eval, reconstruct, encode, decode, export, presets."""
from __future__ import annotations

from . import common

_TrainParser = common.parser_listing_keys("vqgan_lc.tokenizer.training:TokenizerTrainConfig",
                                          "--set keys (type, default of the base config; recipes change some defaults):")


def register(sub) -> None:
    p = common.add_parser(sub, "train", _TrainParser, help="train a tokenizer (under torchrun for several processes)",
                          parents=[common.parent(common.overrides, common.download, common.overwrite)])
    p.add_argument("recipe", nargs="?", help="a recipe name (see `vqgan-lc presets`) or a training config .json; "
                   "optional with --resume")
    p.add_argument("--data", help="image folder, .txt list, or 'demo'")
    p.add_argument("--out", help="run folder (checkpoints, tensorboard, samples)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder exactly where it stopped, with "
                   "its saved configuration (only run-length, logging and device settings may change)")
    p.set_defaults(func=train)

    p = sub.add_parser("eval", help="evaluate a tokenizer: utilization, PSNR, SSIM, perceptual, FD-lite0, rFID",
                       parents=[common.parent(common.checkpoint, common.out, common.image_size, common.device,
                                              common.download)])
    p.add_argument("--data", required=True, help="image folder, .txt list, or 'demo:eval'")
    p.add_argument("--batch-size", type=common.positive_int, default=16)
    p.add_argument("--max-images", type=common.positive_int, help="per process")
    p.add_argument("--perceptual", default="auto", help="auto | lpips-vgg | perceptual-lite0")
    p.add_argument("--fid", default="auto", help="auto (rFID when Inception weights are on disk) | inception | off")
    p.add_argument("--fd-image-size", type=common.positive_int, default=256, help="size FD-lite0 resizes images to")
    p.set_defaults(func=evaluate)

    files = common.parent(common.checkpoint, common.out, common.device)
    p = sub.add_parser("reconstruct", help="encode and decode images", parents=[files, common.parent(common.image_size)])
    p.add_argument("images", nargs="+")
    p.set_defaults(func=reconstruct)
    p = sub.add_parser("encode", help="images -> token ids (.npy int32 (h, w), one per image)",
                       parents=[files, common.parent(common.image_size)])
    p.add_argument("images", nargs="+")
    p.set_defaults(func=encode)
    p = sub.add_parser("decode", help="token ids (.npy) -> images (.png)", parents=[files])
    p.add_argument("indices", nargs="+")
    p.set_defaults(func=decode)
    p = sub.add_parser("export", help="a tokenizer: inference export keeping only the projected N x D' codebook; "
                       "a generator run: its portable pipeline folder (generator/, tokenizer/, process.json)",
                       parents=[common.parent(common.checkpoint, common.out)])
    p.add_argument("--tokenizer-hub-id", metavar="ORG/NAME", help="generator runs: name the tokenizer by this hub "
                   "id in process.json instead of copying it into the folder")
    p.set_defaults(func=export)

    p = sub.add_parser("presets", help="list tokenizer, generator presets and training recipes")
    p.set_defaults(func=presets)


def _resolve_train_config(args):
    import os

    from ..tokenizer.training import get_recipe, read_train_config

    if args.recipe is None and args.resume is None:
        raise ValueError("train needs a recipe (see `vqgan-lc presets`), or --resume RUN")
    requested = get_recipe(args.recipe) if args.recipe else None
    if args.resume is None:
        requested.data = args.data or requested.data
        requested.out_dir = args.out or requested.out_dir
        return requested.override(args.set).validate()
    if args.out and os.path.abspath(args.out) != os.path.abspath(args.resume):
        raise ValueError(f"--resume {args.resume} continues in that folder; drop --out {args.out}")
    common.refuse_other_family(args.resume, generator=False)
    saved = read_train_config(args.resume)
    if requested is None and args.data:
        requested = type(saved).from_dict(saved.to_dict())
    if requested is not None:  # a recipe or --data given again must name the same run
        requested.data = args.data or saved.data
    return common.resumed_config(saved, args.resume, args.set, requested)


def train(args) -> int:
    from ..tokenizer.training import train_tokenizer

    config = _resolve_train_config(args)
    if args.resume is None:
        common.refuse_existing_run(config.out_dir, args.overwrite, "tokenizer")
    elif args.overwrite:
        raise ValueError("--overwrite starts a new run and --resume continues one; give only one of them")
    common.writable_out(config.out_dir, "run folder")
    result = train_tokenizer(config, resume=args.resume)
    if result.is_main:
        print(common.training_summary(result, "tokenizer", config))
    return 0


def _load(checkpoint: str, device: str = "auto"):
    from ..distributed import resolve_device
    from ..tokenizer.model import VQModel
    return VQModel.from_pretrained(checkpoint).to(resolve_device(device)).eval()


def evaluate(args) -> int:
    from ..evaluate.evaluator import EvalConfig, evaluate_checkpoint

    common.writable_out(args.out)
    config = EvalConfig(image_size=args.image_size, batch_size=args.batch_size, max_images=args.max_images,
                        perceptual=args.perceptual, fid=args.fid, fd_image_size=args.fd_image_size,
                        dataset=str(args.data))
    report = evaluate_checkpoint(args.checkpoint, args.data, args.out, config, device=args.device)
    if report is not None:
        print(f"utilization {report['utilization']:.4f} over {report['num_tokens']} tokens | PSNR {report['psnr']:.2f} "
              f"| SSIM {report['ssim']:.4f} | {report['perceptual_name']} {report['perceptual']:.4f} "
              f"| FD-lite0 {report['fd_lite0']:.3f} -> {args.out}/report.json")
    return 0


def reconstruct(args) -> int:
    from ..tokenizer.inference import reconstruct_files
    common.writable_out(args.out)
    summary = reconstruct_files(_load(args.checkpoint, args.device), args.images, args.out, args.image_size)
    print(summary.line("reconstructions", args.out))
    return 0


def encode(args) -> int:
    from ..tokenizer.inference import encode_files
    common.writable_out(args.out)
    summary = encode_files(_load(args.checkpoint, args.device), args.images, args.out, args.image_size)
    print(summary.line("token arrays", args.out))
    return 0


def decode(args) -> int:
    from ..tokenizer.inference import decode_files
    common.writable_out(args.out)
    summary = decode_files(_load(args.checkpoint, args.device), args.indices, args.out)
    print(summary.line("decoded images", args.out))
    return 0


def export(args) -> int:
    from pathlib import Path

    from ..generate.pipeline import PROCESS_NAME
    if (Path(args.checkpoint) / PROCESS_NAME).is_file() or common.is_generator_run(args.checkpoint):
        from .generate import export_pipeline
        return export_pipeline(args)
    if args.tokenizer_hub_id:
        raise ValueError("--tokenizer-hub-id applies to generator runs; a tokenizer export holds its own weights")
    from ..tokenizer.checkpoint import export_for_inference
    common.writable_out(args.out)
    model = _load(args.checkpoint, "cpu")
    export_for_inference(model).save_pretrained(args.out)
    print(f"inference export (projected {model.codebook_size} x {model.quantizer.dim} codebook) written to {args.out}")
    return 0


def presets(args) -> int:
    from ..tokenizer.config import PRESETS, get_preset
    from ..tokenizer.training import RECIPES

    print("tokenizer presets:")
    for name in sorted(PRESETS):
        cfg = get_preset(name)
        q, ae = cfg.quantizer, cfg.autoencoder
        print(f"  {name:22s} {q.kind:4s} N={q.codebook_size:<7d} D'={q.dim:<4d} f{ae.downsample_factor} {ae.resolution}px")
    print("tokenizer training recipes:", ", ".join(sorted(RECIPES)))
    from .generate import list_generator_presets
    list_generator_presets()
    return 0
