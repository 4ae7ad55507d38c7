"""Every command against the same broken inputs: one line on stderr, exit status 2, no traceback.

The commands run in-process (`vqgan_lc.cli.main`), so a failure that only shows after work has
started (a progress bar on stderr, a second line) fails the test too, except where nothing but
that work can find the problem (every image unreadable: marked AFTER_PASS). Inputs that would
let a command run to completion are not in the table. `test_every_command_is_covered` makes a
command added later fail here until it has cases of its own.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vqgan_lc.cli import main

TINY_GPT = ["model.n_layer=1", "model.n_embd=16", "model.n_head=2"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_tokenizer):
    return build_inputs(tmp_path_factory.mktemp("bad"), tiny_tokenizer)


def build_inputs(root, tiny_tokenizer):
    """Tiny valid inputs (a tokenizer, images, a token cache, a generator run, samples) and broken ones."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from vqgan_lc.codebook.io import CODEBOOK_KEY
    from vqgan_lc.tokenizer.training import TokenizerTrainConfig

    tiny_tokenizer(root / "tok", codebook_size=16, codebook_dim=8)
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / "images" / str(c)).mkdir(parents=True)
        (root / "samples" / str(c)).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / str(c) / f"{i}.png")
            Image.fromarray(pixels).save(root / "samples" / str(c) / f"{i:04d}.png")
    (root / "corrupt" / "0").mkdir(parents=True)
    (root / "corrupt" / "1").mkdir(parents=True)
    for i in range(2):
        (root / "corrupt" / "0" / f"{i}.png").write_bytes(b"\x89PNG not an image")
        (root / "corrupt" / "1" / f"{i}.jpg").write_bytes(b"")
    (root / "empty").mkdir()
    (root / "plain").mkdir()
    (root / "plain" / "notes.txt").write_text("a folder that is not a checkpoint, run or cache")
    (root / "garbage").mkdir()
    shutil.copy(root / "tok" / "config.json", root / "garbage" / "config.json")
    (root / "garbage" / "model.safetensors").write_bytes(b"\x00garbage" * 16)
    (root / "taken").write_text("an existing file")
    np.save(root / "tokens.npy", np.zeros((4, 4), dtype=np.int32))
    save_file({CODEBOOK_KEY: torch.zeros(0, 8)}, str(root / "rows0.safetensors"))
    (root / "garbage.safetensors").write_bytes(b"\x00garbage" * 16)
    (root / "garbage.pth").write_bytes(b"\x00garbage" * 16)
    assert main(["cache", "tokens", str(root / "tok"), "--data", str(root / "images"), "--out", str(root / "cache"),
                 "--workers", "0"]) == 0
    assert main(["train-gen", "gpt-tiny", "--cache", str(root / "cache"), "--out", str(root / "run"), "--set",
                 *TINY_GPT, "max_steps=1", "batch_size=2", "device=cpu"]) == 0
    (root / "tokrun").mkdir()  # what a tokenizer run folder holds first
    (root / "tokrun" / "train_config.json").write_text(json.dumps(TokenizerTrainConfig().to_dict()))
    shutil.copytree(root / "tok", root / "nanckpt")  # weights that parse but hold a NaN
    with safe_open(str(root / "tok" / "model.safetensors"), framework="pt") as f:
        state, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone().fill_(float("nan"))
    save_file(state, str(root / "nanckpt" / "model.safetensors"), metadata=meta)
    shutil.copytree(root / "run", root / "badrun", ignore=shutil.ignore_patterns(".lock"))
    (root / "badrun" / "generator" / "model.safetensors").write_bytes(b"\x00garbage" * 16)
    # files cut short, as a full disk or an interrupted copy leaves them
    shutil.copytree(root / "run", root / "cutrun", ignore=shutil.ignore_patterns(".lock"))
    _cut(root / "cutrun" / "train_config.json")
    # a finished run is a pipeline folder: sampling reads its process.json, not the training config
    shutil.copytree(root / "run", root / "cutpipe", ignore=shutil.ignore_patterns(".lock"))
    _cut(root / "cutpipe" / "process.json")
    shutil.copytree(root / "cache", root / "cutmanifest")
    _cut(root / "cutmanifest" / "manifest.json")
    shutil.copytree(root / "cache", root / "cutshard")
    _cut(next((root / "cutshard").glob("shard-*.tokens.npy")))
    # one class only; and a held-out set whose class folder was renamed
    (root / "oneclass" / "cat").mkdir(parents=True)
    shutil.copy(root / "images" / "0" / "0.png", root / "oneclass" / "cat" / "0.png")
    shutil.copytree(root / "images", root / "renamed")
    (root / "renamed" / "1").rename(root / "renamed" / "one")
    return root


def _cut(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.fixture(scope="module")
def readonly(tmp_path_factory, mounted_tmpfs):
    """A read-only file system (a tmpfs mounted ro): what root cannot write either."""
    with mounted_tmpfs(tmp_path_factory.mktemp("ro"), "ro,size=64k") as folder:
        yield folder


# "{name}" is replaced by the fixture file or folder of that name, "{new}" by a fresh path,
# "{missing}" by a path that does not exist and "{ro}" by the read-only mount. Each case: the
# arguments, a phrase the error line must hold, and whether the error can only show after a
# pass over the data (every image unreadable: nothing but reading them all can tell).
TOK = "{tok}"
AFTER_PASS = True
TINY_TRAIN = ["--set", "model.autoencoder.resolution=32", "model.autoencoder.ch=8", "model.autoencoder.ch_mult=1,2,2",
              "model.autoencoder.num_res_blocks=1", "model.autoencoder.z_channels=8",
              "model.autoencoder.norm_groups=4", "model.quantizer.codebook_size=16", "model.quantizer.codebook_dim=8",
              "loss.perceptual=none", "device=cpu", "batch_size=2", "max_steps=3", "num_workers=0"]
CASES = {
    # train: data, run folder, resume, values
    "train-missing-data": (["train", "cpu-tiny-lc", "--data", "{missing}", "--out", "{new}"], "no such file"),
    "train-empty-data": (["train", "cpu-tiny-lc", "--data", "{empty}", "--out", "{new}"], "no images"),
    "train-corrupt-data": (["train", "cpu-tiny-lc", "--data", "{corrupt}", "--out", "{new}", *TINY_TRAIN],
                           "could be read", AFTER_PASS),
    "train-out-is-file": (["train", "cpu-tiny-lc", "--data", "{images}", "--out", "{taken}"], "not a folder"),
    "train-out-readonly": (["train", "cpu-tiny-lc", "--data", "{images}", "--out", "{ro}/run"], "read-only"),
    "train-resume-missing": (["train", "--resume", "{missing}"], "not a training run"),
    "train-resume-plain": (["train", "--resume", "{plain}"], "not a training run"),
    "train-resume-generator-run": (["train", "--resume", "{run}"], "train-gen --resume"),
    "train-max-steps-negative": (["train", "cpu-tiny-lc", "--out", "{new}", "--set", "max_steps=-3"], "max_steps"),
    "train-max-steps-0": (["train", "cpu-tiny-lc", "--out", "{new}", "--set", "max_steps=0"], "max_steps"),
    "train-betas-one-value": (["train", "cpu-tiny-lc", "--out", "{new}", "--set", "betas=0.5"], "betas"),
    "train-log-every-0": (["train", "cpu-tiny-lc", "--out", "{new}", "--set", "log_every=0"], "log_every"),
    "train-unknown-key": (["train", "cpu-tiny-lc", "--out", "{new}", "--set", "lrr=1"], "lrr"),
    # eval
    "eval-missing-ckpt": (["eval", "{missing}", "--data", "{images}", "--out", "{new}"], "no such path"),
    "eval-plain-ckpt": (["eval", "{plain}", "--data", "{images}", "--out", "{new}"], "config.json"),
    "eval-garbage-ckpt": (["eval", "{garbage}", "--data", "{images}", "--out", "{new}"], "model.safetensors"),
    "eval-missing-data": (["eval", TOK, "--data", "{missing}", "--out", "{new}"], "no such file"),
    "eval-empty-data": (["eval", TOK, "--data", "{empty}", "--out", "{new}"], "no images"),
    "eval-corrupt-data": (["eval", TOK, "--data", "{corrupt}", "--out", "{new}"], "readable", AFTER_PASS),
    "eval-out-is-file": (["eval", TOK, "--data", "{images}", "--out", "{taken}"], "not a folder"),
    "eval-out-readonly": (["eval", TOK, "--data", "{images}", "--out", "{ro}/ev"], "read-only"),
    "eval-image-size-0": (["eval", TOK, "--data", "{images}", "--out", "{new}", "--image-size", "0"], "positive"),
    # reconstruct / encode / decode / export
    "reconstruct-missing-ckpt": (["reconstruct", "{missing}", "{images}/0/0.png", "--out", "{new}"], "no such path"),
    "reconstruct-garbage-ckpt": (["reconstruct", "{garbage}", "{images}/0/0.png", "--out", "{new}"],
                                 "model.safetensors"),
    "reconstruct-missing-image": (["reconstruct", TOK, "{missing}", "--out", "{new}"], "no such file"),
    "reconstruct-corrupt-images": (["reconstruct", TOK, "{corrupt}/0/0.png", "{corrupt}/1/0.jpg", "--out", "{new}"],
                                   "none readable"),
    "reconstruct-folder-as-image": (["reconstruct", TOK, "{images}", "--out", "{new}"], "is a folder"),
    "reconstruct-out-is-file": (["reconstruct", TOK, "{images}/0/0.png", "--out", "{taken}"], "not a folder"),
    "reconstruct-out-readonly": (["reconstruct", TOK, "{images}/0/0.png", "--out", "{ro}/rec"], "read-only"),
    "encode-plain-ckpt": (["encode", "{plain}", "{images}/0/0.png", "--out", "{new}"], "config.json"),
    "encode-corrupt-image": (["encode", TOK, "{corrupt}/0/0.png", "--out", "{new}"], "cannot decode"),
    "encode-image-size-0": (["encode", TOK, "{images}/0/0.png", "--out", "{new}", "--image-size", "0"], "positive"),
    "reconstruct-onto-its-input": (["reconstruct", TOK, "{images}/0/0.png", "--out", "{images}/0"],
                                   "would overwrite an input"),
    "encode-out-is-file": (["encode", TOK, "{images}/0/0.png", "--out", "{taken}"], "not a folder"),
    "encode-out-readonly": (["encode", TOK, "{images}/0/0.png", "--out", "{ro}/tok"], "read-only"),
    "decode-garbage-ckpt": (["decode", "{garbage}", "{tokens.npy}", "--out", "{new}"], "model.safetensors"),
    "decode-missing-tokens": (["decode", TOK, "{missing}", "--out", "{new}"], "no such file"),
    "decode-image-as-tokens": (["decode", TOK, "{images}/0/0.png", "--out", "{new}"], "not a .npy file"),
    "decode-out-is-file": (["decode", TOK, "{tokens.npy}", "--out", "{taken}"], "not a folder"),
    "decode-out-readonly": (["decode", TOK, "{tokens.npy}", "--out", "{ro}/dec"], "read-only"),
    "export-missing-ckpt": (["export", "{missing}", "--out", "{new}"], "no such path"),
    "export-plain-ckpt": (["export", "{plain}", "--out", "{new}"], "config.json"),
    "export-garbage-ckpt": (["export", "{garbage}", "--out", "{new}"], "model.safetensors"),
    "export-out-is-file": (["export", TOK, "--out", "{taken}"], "not a folder"),
    "export-out-readonly": (["export", TOK, "--out", "{ro}/exp"], "read-only"),
    # codebook build / info
    "codebook-build-missing-data": (["codebook", "build", "{missing}", "--size", "4", "--out", "{new}.safetensors"],
                                    "no such file"),
    "codebook-build-empty-data": (["codebook", "build", "{empty}", "--size", "4", "--out", "{new}.safetensors"],
                                  "no images"),
    "codebook-build-corrupt-data": (["codebook", "build", "{corrupt}", "--size", "4", "--out", "{new}.safetensors",
                                     "--workers", "0", "--cache-dir", "{new}-cache", "--input-size", "32"],
                                    "could be read", AFTER_PASS),
    "codebook-build-out-is-folder": (["codebook", "build", "{images}", "--size", "4", "--out", "{empty}"], "folder"),
    "codebook-build-out-readonly": (["codebook", "build", "{images}", "--size", "4", "--out", "{ro}/cb.safetensors"],
                                    "read-only"),
    "codebook-build-size-0": (["codebook", "build", "{images}", "--size", "0", "--out", "{new}.safetensors"],
                              "positive"),
    "codebook-build-pool-0": (["codebook", "build", "{images}", "--size", "4", "--pool", "0", "--out",
                               "{new}.safetensors"], "positive"),
    "codebook-build-garbage-weights": (["codebook", "build", "{images}", "--size", "4", "--backbone-weights",
                                        "{garbage.pth}", "--out", "{new}.safetensors"], "garbage.pth"),
    "codebook-build-unknown-backbone": (["codebook", "build", "{images}", "--size", "4", "--backbone", "resnet-9000",
                                         "--out", "{new}.safetensors"], "resnet-9000"),
    "codebook-info-missing": (["codebook", "info", "{missing}"], "not found"),
    "codebook-info-folder": (["codebook", "info", "{empty}"], "not found"),
    "codebook-info-garbage": (["codebook", "info", "{garbage.safetensors}"], "not a codebook"),
    "codebook-info-zero-rows": (["codebook", "info", "{rows0.safetensors}"], "0"),
    # cache
    "cache-missing-tokenizer": (["cache", "tokens", "{missing}", "--data", "{images}", "--out", "{new}"],
                                "no such path"),
    "cache-garbage-tokenizer": (["cache", "tokens", "{garbage}", "--data", "{images}", "--out", "{new}"],
                                "model.safetensors"),
    "cache-missing-data": (["cache", "tokens", TOK, "--data", "{missing}", "--out", "{new}"], "no such file"),
    "cache-empty-data": (["cache", "latents", TOK, "--data", "{empty}", "--out", "{new}"], "no images"),
    "cache-corrupt-data": (["cache", "tokens", TOK, "--data", "{corrupt}", "--out", "{new}", "--workers", "0"],
                           "could be read", AFTER_PASS),
    "cache-out-is-file": (["cache", "tokens", TOK, "--data", "{images}", "--out", "{taken}"], "not a folder"),
    "cache-out-readonly": (["cache", "tokens", TOK, "--data", "{images}", "--out", "{ro}/cache"], "read-only"),
    # train-gen
    "train-gen-missing-cache": (["train-gen", "gpt-tiny", "--cache", "{missing}", "--out", "{new}"],
                                "does not exist"),
    "train-gen-empty-cache": (["train-gen", "gpt-tiny", "--cache", "{empty}", "--out", "{new}"], "not a cache"),
    "train-gen-images-as-cache": (["train-gen", "gpt-tiny", "--cache", "{images}", "--out", "{new}"], "not a cache"),
    "train-gen-out-is-file": (["train-gen", "gpt-tiny", "--cache", "{cache}", "--out", "{taken}"], "not a folder"),
    "train-gen-out-readonly": (["train-gen", "gpt-tiny", "--cache", "{cache}", "--out", "{ro}/run"], "read-only"),
    "train-gen-resume-plain": (["train-gen", "--resume", "{plain}"], "not a generator run"),
    "train-gen-resume-tokenizer-run": (["train-gen", "--resume", "{tokrun}"], "train --resume"),
    "train-gen-max-steps-0": (["train-gen", "gpt-tiny", "--cache", "{cache}", "--out", "{new}", "--set",
                               "max_steps=0"], "max_steps"),
    # sample
    # convert: released checkpoints
    "convert-missing-checkpoint": (["convert", "reference-dit", "{missing}", "--out", "{new}"], "not found"),
    "convert-not-a-checkpoint": (["convert", "reference-gpt", "{taken}", "--out", "{new}"], "not a loadable torch"),
    "convert-out-is-file": (["convert", "reference-sit", "{taken}", "--out", "{taken}"], "not a folder"),
    "convert-out-readonly": (["convert", "reference-ldm", "{taken}", "--out", "{ro}/c"], "read-only"),
    "sample-missing-run": (["sample", "{missing}", "--out", "{new}"], "not a generator run"),
    "sample-empty-run": (["sample", "{empty}", "--out", "{new}"], "not a generator run"),
    "sample-tokenizer-as-run": (["sample", TOK, "--out", "{new}"], "not a generator run"),
    "sample-garbage-weights": (["sample", "{badrun}", "--out", "{new}"], "model.safetensors"),
    "sample-out-is-file": (["sample", "{run}", "--out", "{taken}"], "not a folder"),
    "sample-out-readonly": (["sample", "{run}", "--out", "{ro}/s"], "read-only"),
    "sample-per-class-0": (["sample", "{run}", "--out", "{new}", "--per-class", "0"], "positive"),
    "sample-unknown-class": (["sample", "{run}", "--out", "{new}", "--classes", "7"], "class 7"),
    # eval-gen
    "eval-gen-missing-samples": (["eval-gen", "{missing}", "--reference", "{images}", "--out", "{new}"],
                                 "does not exist"),
    "eval-gen-empty-samples": (["eval-gen", "{empty}", "--reference", "{images}", "--out", "{new}"], "empty"),
    "eval-gen-corrupt-samples": (["eval-gen", "{corrupt}", "--reference", "{images}", "--out", "{new}"], "readable",
                                 AFTER_PASS),
    "eval-gen-missing-reference": (["eval-gen", "{samples}", "--reference", "{missing}", "--out", "{new}"],
                                   "does not exist"),
    "eval-gen-empty-reference": (["eval-gen", "{samples}", "--reference", "{empty}", "--out", "{new}"], "no images"),
    "eval-gen-corrupt-reference": (["eval-gen", "{samples}", "--reference", "{corrupt}", "--out", "{new}"],
                                   "readable", AFTER_PASS),
    "eval-gen-out-is-file": (["eval-gen", "{samples}", "--reference", "{images}", "--out", "{taken}"], "not a folder"),
    "eval-gen-out-readonly": (["eval-gen", "{samples}", "--reference", "{images}", "--out", "{ro}/eg"], "read-only"),
    # plot
    "plot-missing-run": (["plot", "{missing}"], "not found"),
    "plot-empty-run": (["plot", "{empty}"], "not found"),
    "plot-unknown-key": (["plot", "{run}", "--keys", "nope", "--out", "{new}.png"], "no logged value"),
    "plot-out-not-png": (["plot", "{run}", "--out", "{taken}"], ".png"),
    "plot-out-is-folder": (["plot", "{run}", "--out", "{empty}"], ".png"),
    "plot-out-readonly": (["plot", "{run}", "--out", "{ro}/curves.png"], "read-only"),
    # classify
    "classify-missing-tokenizer": (["classify", "{missing}", "--train", "{images}", "--val", "{images}", "--out",
                                    "{new}"], "no such path"),
    "classify-missing-train": (["classify", TOK, "--train", "{missing}", "--val", "{images}", "--out", "{new}"],
                               "no such file"),
    "classify-empty-val": (["classify", TOK, "--train", "{images}", "--val", "{empty}", "--out", "{new}"],
                           "no images"),
    "classify-out-is-file": (["classify", TOK, "--train", "{images}", "--val", "{images}", "--out", "{taken}"],
                             "not a folder"),
    "classify-out-readonly": (["classify", TOK, "--train", "{images}", "--val", "{images}", "--out", "{ro}/c"],
                              "read-only"),
    "classify-unknown-key": (["classify", TOK, "--train", "{images}", "--val", "{images}", "--out", "{new}", "--set",
                              "epochz=3"], "epochz"),
    # study (a valid call would run it: only refusals are tried)
    "study-out-is-file": (["study", "--out", "{taken}"], "not a folder"),
    "study-out-readonly": (["study", "--out", "{ro}/study"], "read-only"),
    "study-size-0": (["study", "--out", "{new}", "--sizes", "0"], "positive"),
    "study-unknown-quantizer": (["study", "--out", "{new}", "--quantizers", "lc,pq"], "choose from"),
    "study-steps-0": (["study", "--out", "{new}", "--steps", "0"], "positive"),
    "study-unknown-key": (["study", "--out", "{new}", "--set", "lrr=1"], "lrr"),
    # demo (a valid call would run it: only refusals are tried)
    # app: refused in one line before it serves anything
    "app-missing-tokenizer": (["app", "{missing}"], "not found"),
    "app-plain-tokenizer": (["app", "{plain}"], "cannot read tokenizer"),
    "app-garbage-tokenizer": (["app", "{garbage}"], "cannot read tokenizer"),
    "app-missing-generator": (["app", TOK, "--generator", "{missing}"], "not found"),
    "app-garbage-generator": (["app", TOK, "--generator", "{badrun}"], "cannot read generator"),
    "app-tokenizer-as-generator": (["app", TOK, "--generator", TOK], "not a generator run"),
    "app-garbage-codebook": (["app", TOK, "--codebook", "{garbage.safetensors}"], "not a codebook"),
    "app-missing-data": (["app", TOK, "--data", "{missing}"], "--data"),
    "demo-out-is-file": (["demo", "--quick", "--out", "{taken}"], "not a folder"),
    "demo-out-readonly": (["demo", "--quick", "--out", "{ro}/demo"], "read-only"),
    "demo-generate-out-is-file": (["demo", "--generate", "gpt", "--quick", "--out", "{taken}"], "not a folder"),
    "demo-unknown-generator": (["demo", "--generate", "vae", "--out", "{new}"], "choose generators"),
    # weights with NaN in them (a corrupt file that still parses)
    "eval-nan-weights": (["eval", "{nanckpt}", "--data", "{images}", "--out", "{new}"], "non-finite"),
    "export-nan-weights": (["export", "{nanckpt}", "--out", "{new}"], "non-finite"),
    # a device that does not exist
    "reconstruct-device-typo": (["reconstruct", TOK, "{images}/0/0.png", "--out", "{new}", "--device", "gpu0"],
                                "device"),
    "train-device-typo": (["train", "cpu-tiny-lc", "--data", "{images}", "--out", "{new}", "--set", "device=tpu"],
                          "device"),
    # earlier work is never replaced: a run in --out, a resume into another folder, a cache into the data
    "train-out-holds-run": (["train", "cpu-tiny-lc", "--data", "{images}", "--out", "{tokrun}"],
                            "already holds a training run"),
    "train-gen-out-holds-run": (["train-gen", "gpt-tiny", "--cache", "{cache}", "--out", "{run}"],
                                "already holds a training run"),
    "train-gen-resume-into-other-out": (["train-gen", "--resume", "{run}", "--out", "{new}"], "drop --out"),
    "train-gen-resume-and-overwrite": (["train-gen", "--resume", "{run}", "--overwrite"], "only one of them"),
    "cache-out-is-data": (["cache", "tokens", TOK, "--data", "{images}", "--out", "{images}"],
                          "is the data folder"),
    "cache-out-inside-data": (["cache", "latents", TOK, "--data", "{images}", "--out", "{images}/0/cache"],
                              "inside the data folder"),
    # NaN and infinity in any number, refused by the config checks before any work
    "train-lr-nan": (["train", "cpu-tiny-lc", "--data", "{images}", "--out", "{new}", "--set", "lr=nan"],
                     "lr must be a finite number"),
    "train-nested-inf": (["train", "cpu-tiny-lc", "--data", "{images}", "--out", "{new}", "--set",
                          "loss.disc_weight=inf"], "loss.disc_weight must be a finite number"),
    "train-betas-nan": (["train", "cpu-tiny-lc", "--data", "{images}", "--out", "{new}", "--set", "betas=nan,0.9"],
                        "betas must be a finite number"),
    "train-gen-lr-nan": (["train-gen", "gpt-tiny", "--cache", "{cache}", "--out", "{new}", "--set", "lr=nan"],
                         "lr must be a finite number"),
    "train-gen-model-inf": (["train-gen", "gpt-tiny", "--cache", "{cache}", "--out", "{new}", "--set",
                             "model.mlp_ratio=inf"], "model.mlp_ratio must be a finite number"),
    "train-gen-resume-lr-nan": (["train-gen", "--resume", "{run}", "--set", "lr=nan"], "finite"),
    "sample-cfg-scale-nan": (["sample", "{run}", "--out", "{new}", "--cfg-scale", "nan"], "cfg_scale must be a finite"),
    "sample-temperature-inf": (["sample", "{run}", "--out", "{new}", "--temperature", "inf"],
                               "temperature must be a finite"),
    "classify-lr-nan": (["classify", TOK, "--train", "{images}", "--val", "{images}", "--out", "{new}", "--set",
                         "lr=nan"], "finite"),
    # a file cut short: one line naming it
    "train-gen-resume-cut-config": (["train-gen", "--resume", "{cutrun}"], "cutrun/train_config.json is damaged"),
    "sample-cut-process": (["sample", "{cutpipe}", "--out", "{new}"], "process.json is damaged"),
    "train-gen-cut-manifest": (["train-gen", "gpt-tiny", "--cache", "{cutmanifest}", "--out", "{new}"],
                               "cutmanifest/manifest.json is damaged"),
    "train-gen-cut-shard": (["train-gen", "gpt-tiny", "--cache", "{cutshard}", "--out", "{new}"],
                            "tokens.npy is damaged"),
    # the wrong kind of path
    "train-gen-cache-is-file": (["train-gen", "gpt-tiny", "--cache", "{taken}", "--out", "{new}"], "not a folder"),
    "plot-out-under-a-file": (["plot", "{run}", "--out", "{taken}/curves.png"], "taken is a file, not a folder"),
    # classes are matched by name, before any work
    "classify-one-class": (["classify", TOK, "--train", "{oneclass}", "--val", "{oneclass}", "--out", "{new}"],
                           "at least 2 classes"),
    "classify-renamed-val-class": (["classify", TOK, "--train", "{images}", "--val", "{renamed}", "--out", "{new}"],
                                   "matched by name"),
    # info
    "info-missing": (["info", "{missing}"], "does not exist"),
    "info-plain-folder": (["info", "{plain}"], "not a folder vqgan-lc wrote"),
    "info-file": (["info", "{taken}"], "not a folder"),
    "info-cut-config": (["info", "{cutrun}"], "train_config.json is damaged"),
}
if not torch.cuda.is_available():  # asking for CUDA on a CPU-only build is a broken input too
    CASES.update({
        "eval-device-cuda": (["eval", TOK, "--data", "{images}", "--out", "{new}", "--device", "cuda"], "cuda"),
        "train-device-cuda": (["train", "cpu-tiny-lc", "--data", "{images}", "--out", "{new}", "--set",
                               "device=cuda"], "cuda"),
        "cache-device-cuda": (["cache", "tokens", TOK, "--data", "{images}", "--out", "{new}", "--device", "cuda"],
                              "cuda"),
        "sample-device-cuda": (["sample", "{run}", "--out", "{new}", "--device", "cuda"], "cuda"),
        "eval-gen-device-cuda": (["eval-gen", "{samples}", "--reference", "{images}", "--out", "{new}", "--device",
                                  "cuda"], "cuda"),
        "codebook-build-device-cuda": (["codebook", "build", "{images}", "--size", "4", "--out", "{new}.safetensors",
                                        "--device", "cuda"], "cuda"),
    })


def _fill(argv, paths, tmp_path, ro):
    names = {"new": str(tmp_path / "new"), "missing": str(tmp_path / "does-not-exist"), "ro": str(ro)}
    out = []
    for arg in argv:
        if arg.startswith("{") and "}" in arg:
            key, rest = arg[1:].split("}", 1)
            out.append((names[key] if key in names else str(paths / key)) + rest)
        else:
            out.append(arg)
    return out


def _is_progress_bar(line: str) -> bool:
    return "%|" in line and "[" in line  # tqdm's "desc:  50%|#####     | 2/4 [00:01<00:01, ...]"


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_input_fails_in_one_line(case, paths, tmp_path, capsys, request):
    argv, expected, *after_pass = CASES[case]
    ro = request.getfixturevalue("readonly") if any("{ro}" in a for a in argv) else None
    argv = _fill(argv, paths, tmp_path, ro)
    before = (paths / "taken").read_text()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refused a value
        code = exit_.code
    captured = capsys.readouterr()
    lines = captured.err.strip().split("\n")  # (tqdm separates a bar's updates with \r)
    assert code == 2, (argv, captured.err)
    assert lines and "Traceback" not in captured.err, captured.err
    *work, err = lines
    # only a pass over unreadable data may show its progress bar first; everything else fails at once
    assert (all(_is_progress_bar(line) for line in work) if after_pass else not work), captured.err
    assert err.startswith("vqgan-lc ") and ": error: " in err, err
    assert expected.lower() in err.lower(), (expected, err)
    assert (paths / "taken").read_text() == before  # an existing file given as --out is left alone
    new = tmp_path / "new"  # a refused command leaves no empty --out behind (nor a lone .lock in it)
    assert not new.is_dir() or [p.name for p in new.iterdir()] not in ([], [".lock"]), list(new.iterdir())


def test_every_command_is_covered():
    """A command added later gets broken inputs here too (`presets` takes no input)."""
    from vqgan_lc.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    codebook = next(a for a in sub.choices["codebook"]._actions if a.dest == "codebook_command")
    commands = (set(sub.choices) - {"presets", "codebook"}) | {f"codebook {name}" for name in codebook.choices}
    tried = {" ".join(argv[:2]) if argv[0] == "codebook" else argv[0] for argv, *_ in CASES.values()}
    assert tried == commands
