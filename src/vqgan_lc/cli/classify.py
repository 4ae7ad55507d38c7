"""`vqgan-lc classify`: how much of an image's class survives in its token map.

    vqgan-lc classify TOKENIZER --train DIR --val DIR --out OUT [--embed codebook|index] [--set epochs=30 ...]

Both sets are encoded by the tokenizer, a small ViT trains on the train set's token maps and
OUT/report.json holds its top-1 on the val set (the paper's ViT-on-tokens result).
"""
from __future__ import annotations

from . import common


_ClassifyParser = common.parser_listing_keys("vqgan_lc.classify.training:ClassifierTrainConfig",
                                             "--set keys (model.* reach the ViT, e.g. model.depth=6; "
                                             "codebook_size, grid, num_classes and code_dim come from the caches):")


def register(sub) -> None:
    p = common.add_parser(sub, "classify", _ClassifyParser, help="train a ViT on a tokenizer's token maps and report "
                          "top-1 on held-out images", parents=[common.parent(common.device, common.image_size,
                                                                             common.overrides)])
    p.add_argument("tokenizer", help="tokenizer folder (config.json + model.safetensors)")
    p.add_argument("--train", required=True, help="labelled images: class sub-folders, a .txt list with labels, "
                   "or demo:train:N (crops labelled by photo)")
    p.add_argument("--val", required=True, help="held-out labelled images, in the same classes")
    p.add_argument("--out", required=True, help="output folder: token caches, the run, report.json (resumable)")
    p.add_argument("--preset", default="vit-tiny",
                   help="classifier size: vit-micro, vit-tiny (CPU), vit-small, vit-b (the paper's ViT-B)")
    p.add_argument("--embed", choices=("codebook", "index"), default="codebook",
                   help="token -> vector: the tokenizer's codebook entry through a learned linear layer (default), "
                        "or a learned embedding row per token id")
    p.add_argument("--flip", action="store_true", help="also train on the token maps of mirrored train images")
    p.add_argument("--workers", type=int, default=0, help="image-decoding processes while encoding")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..classify.model import classifier_preset
    from ..classify.training import classify
    from .common import writable_out

    writable_out(args.out)
    # before any encoding: the library meets a bad --set key or an empty --val only after it has
    # encoded the train set
    from ..classify.training import ClassifierTrainConfig
    from ..data import list_images
    ClassifierTrainConfig(tokenizer=args.tokenizer).override(args.set).validate()  # the cache sizes it later
    for data in (args.train, args.val):
        if not str(data).startswith("demo"):  # demo crops are generated, not listed
            list_images(data)
    model = classifier_preset(args.preset)
    model.embed = args.embed
    report = classify(args.tokenizer, args.train, args.val, args.out, model=model, overrides=args.set,
                      image_size=args.image_size, flip=args.flip, workers=args.workers, device=args.device)
    print(f"top-1 {100 * report['top1']:.1f}% on {report['num_val']} held-out images "
          f"({report['num_classes']} classes, {report['embed']} embedding; train top-1 "
          f"{100 * report['train_top1']:.1f}%); report in {args.out}/report.json")
    return 0
