import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from tiny_inception import TinyInception
from vqgan_lc.data import build_dataset
from vqgan_lc.evaluate import classifier as classifier_module
from vqgan_lc.evaluate.classifier import classifier_key, load_or_train_classifier, predict
from vqgan_lc.evaluate.generation import GenEvalConfig, evaluate_samples

CLASSES = ("apple", "sky", "zebra")  # solid red, solid blue, grey vertical stripes: easy to tell apart
PER_CLASS = 30
SIZE = 32


def _picture(kind: str, rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((SIZE, SIZE, 3))
    if kind == "apple":
        img[:] = (200, 40, 40)
    elif kind == "sky":
        img[:] = (60, 120, 220)
    elif kind == "zebra":
        half = int(rng.integers(2, 4))
        img[:] = ((np.arange(SIZE) // half) % 2)[None, :, None] * 200 + 20
    else:  # "checker": a set unlike any reference class, for the Frechet distance
        half = int(rng.integers(2, 5))
        grid = (np.arange(SIZE) // half) % 2
        img[:] = (grid[:, None] ^ grid[None, :])[..., None] * np.array([230, 200, 20]) + 10
    img += rng.normal(0, 12, img.shape)  # every image differs, so the feature covariances are not zero
    return img.clip(0, 255).astype(np.uint8)


def _write(folder, kind: str, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(_picture(kind, rng)).save(folder / f"{i:04d}.png")


def _copy_class(reference, name: str, dest, n: int) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted((reference / name).iterdir())[:n]:
        shutil.copy(src, dest / src.name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    for c, name in enumerate(CLASSES):
        _write(root / name, name, PER_CLASS, seed=c)
    return root


@pytest.fixture(scope="module")
def trained(reference, tmp_path_factory):
    """The classifier trained once for the module, and the cache folder that holds it."""
    cache = tmp_path_factory.mktemp("cache")
    model, info = load_or_train_classifier(reference, cache_dir=cache, progress=False)
    return model, info, cache


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """One BLAS thread, like torch's (conftest): the 1280-d eigendecompositions behind FD-lite0 take
    under a second alone but many times longer when OpenBLAS threads contend for busy cores."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No FID Inception weights anywhere: fid='auto' must skip FID."""
    monkeypatch.delenv("VQGAN_LC_INCEPTION", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))


def _config(samples, reference, out, cache, **kw) -> GenEvalConfig:
    settings = {"fd_image_size": 32, "batch_size": 64, "workers": 0, "device": "cpu", "progress": False, **kw}
    return GenEvalConfig(samples=str(samples), reference=str(reference), out=str(out), cache_dir=str(cache), **settings)


def _fail_training(*args, **kwargs):
    raise AssertionError("the classifier was retrained")


def test_classifier_accurate_and_cached(trained, reference, monkeypatch):
    model, info, cache = trained
    assert info["cached"] is False
    assert info["accuracy"] >= 0.9
    assert info["num_images"] == len(CLASSES) * PER_CLASS and info["num_holdout"] == len(CLASSES) * 3
    assert info["class_names"] == list(CLASSES)
    assert (cache / "classifiers" / f"{info['key']}.safetensors").is_file()
    assert json.loads((cache / "classifiers" / f"{info['key']}.json").read_text())["key"] == info["key"]

    monkeypatch.setattr(classifier_module, "train_consistency_classifier", _fail_training)
    again, info2 = load_or_train_classifier(reference, cache_dir=cache, progress=False)
    assert info2["cached"] is True and info2["key"] == info["key"] and info2["accuracy"] == info["accuracy"]
    batch = next(iter(torch.utils.data.DataLoader(build_dataset(reference, 48, train=False), batch_size=90)))
    # other input sizes are resized; the cached model predicts exactly what the trained one does
    assert torch.equal(predict(again, batch["image"]), predict(model, batch["image"]))
    assert (predict(again, batch["image"]) == batch["label"]).float().mean() >= 0.9


def test_corrupt_cache_is_retrained(trained, reference, tmp_path, monkeypatch):
    _, info, cache = trained
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    (copy / "classifiers" / f"{info['key']}.safetensors").write_bytes(b"not a safetensors file")

    class Retrained(Exception):
        pass

    def retrain(*args, **kwargs):
        raise Retrained

    monkeypatch.setattr(classifier_module, "train_consistency_classifier", retrain)
    with pytest.raises(Retrained):
        load_or_train_classifier(reference, cache_dir=copy, progress=False)


def test_cache_key_follows_images_and_settings(reference, tmp_path):
    ref = tmp_path / "ref"
    shutil.copytree(reference, ref)
    key = classifier_key(ref)
    assert classifier_key(ref) == key
    assert classifier_key(ref, size=16) != key and classifier_key(ref, epochs=3) != key
    target = ref / "sky" / "0003.png"
    Image.fromarray(_picture("apple", np.random.default_rng(9))).save(target)  # rewritten in place
    stat = os.stat(target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # coarse file-system clocks
    assert classifier_key(ref) != key


def test_class_consistency_right_and_swapped(trained, reference, tmp_path, monkeypatch):
    _, info, cache = trained
    monkeypatch.setattr(classifier_module, "train_consistency_classifier", _fail_training)  # the module's cached classifier
    right, swapped = tmp_path / "right", tmp_path / "swapped"
    for c, name in enumerate(CLASSES):
        _copy_class(reference, name, right / str(c), 6)
        _copy_class(reference, CLASSES[(c + 1) % len(CLASSES)], swapped / str(c), 6)
    report = evaluate_samples(_config(right, reference, tmp_path / "out_right", cache))
    assert report["class_consistency"] >= 0.95
    # keyed by the reference's class names, their generator ids beside them
    assert set(report["class_consistency_per_class"]) == set(CLASSES)
    assert report["class_ids"] == {"apple": 0, "sky": 1, "zebra": 2}
    assert min(report["class_consistency_per_class"].values()) >= 0.8
    assert report["classifier_accuracy"] == info["accuracy"]
    assert report["num_samples"] == 18 and report["num_reference"] == len(CLASSES) * PER_CLASS
    bad = evaluate_samples(_config(swapped, reference, tmp_path / "out_swapped", cache))
    assert bad["class_consistency"] <= 0.05


def test_fd_lite0_self_and_other_set(trained, reference, tmp_path, monkeypatch):
    _, _, cache = trained
    monkeypatch.setattr(classifier_module, "train_consistency_classifier", _fail_training)
    # the reference against itself: class folders matched by name, FD ~ 0
    same = evaluate_samples(_config(reference, reference, tmp_path / "same", cache))
    other_set = tmp_path / "other"
    _write(other_set, "checker", 30, seed=100)  # flat folder: unconditional samples
    other = evaluate_samples(_config(other_set, reference, tmp_path / "other_out", cache))
    assert abs(same["fd_lite0"]) < 1e-3 * other["fd_lite0"]
    assert other["fd_lite0"] > 1.0
    assert same["class_consistency"] >= 0.95
    assert other["class_consistency"] is None and other["protocol"]["class_consistency"].startswith("not measured")
    # no Inception weights (fid='auto'), no tokens.npy, no sampler report: said in the protocol
    for key in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert same[key] is None and same["protocol"][key].startswith("not computed"), key
    assert same["utilization"] is None and same["protocol"]["utilization"].startswith("not measured")
    assert same["guidance_scale"] is None




def test_fid_when_inception_weights_are_present(trained, reference, tmp_path, monkeypatch):
    from vqgan_lc.backbones import inception
    from vqgan_lc.evaluate import generation

    _, _, cache = trained
    monkeypatch.setattr(classifier_module, "train_consistency_classifier", _fail_training)
    monkeypatch.setattr(inception, "available", lambda path=None: True)
    monkeypatch.setattr(generation, "InceptionFeatures", TinyInception)
    other_set = tmp_path / "other"
    _write(other_set, "checker", 20, seed=7)
    same = evaluate_samples(_config(reference, reference, tmp_path / "same", cache, fid="inception"))
    other = evaluate_samples(_config(other_set, reference, tmp_path / "other_out", cache))  # fid="auto"
    assert abs(same["fid"]) < 1e-6 and other["fid"] > 0.1
    assert abs(same["sfid"]) < 1e-6 and other["sfid"] > 0.1
    assert same["precision"] == same["recall"] == 1.0
    assert other["precision"] < 0.5 and other["recall"] < 0.5  # checkers lie far from the reference classes
    assert same["inception_score"] > 1.0 and len(same["inception_score_splits"]) == 1  # 90 samples: one split
    assert "sqrtm" in other["protocol"]["fid"] and "mixed_6/conv" in other["protocol"]["sfid"]
    off = evaluate_samples(_config(other_set, reference, tmp_path / "off", cache, fid="off"))
    assert off["fid"] is None and off["protocol"]["fid"] == "not computed: fid='off'"


def test_utilization_and_report_fields(trained, reference, tmp_path, monkeypatch):
    _, _, cache = trained
    monkeypatch.setattr(classifier_module, "train_consistency_classifier", _fail_training)
    samples = tmp_path / "samples"
    for c, name in enumerate(CLASSES):
        _copy_class(reference, name, samples / str(c), 4)
    tokens = np.random.default_rng(0).integers(0, 50, size=(12, 16)).astype(np.int32)  # entries 50..63 never used
    np.save(samples / "tokens.npy", tokens)
    (samples / "report.json").write_text(json.dumps({"codebook_size": 64, "guidance_scale": 4.0}))
    out = tmp_path / "out"
    report = evaluate_samples(_config(samples, reference, out, cache))

    used = len(set(tokens.ravel().tolist()))
    assert report["num_used"] == used and report["utilization"] == used / 64
    assert report["num_tokens"] == tokens.size and report["tokens_per_entry"] == tokens.size / 64
    assert report["guidance_scale"] == 4.0
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("fd_lite0", "utilization", "num_used", "num_tokens", "tokens_per_entry", "class_consistency",
                "class_consistency_per_class", "classifier_accuracy", "num_samples", "num_reference",
                "guidance_scale", "protocol"):
        assert key in on_disk, key
    assert on_disk["utilization"] == report["utilization"]
    protocol = on_disk["protocol"]
    for key in ("samples", "reference", "windows", "preprocessing", "fd_lite0", "fid", "utilization",
                "class_consistency", "classifier", "notes"):
        assert key in protocol, key
    assert "NOT comparable with FID" in protocol["fd_lite0"]
    assert "12 samples vs 90 reference" in protocol["windows"]
    assert any("feature dimensions" in note for note in protocol["notes"])  # 12 samples << 1280 dims


def test_one_line_errors(trained, reference, tmp_path):
    _, _, cache = trained
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_samples(_config(tmp_path / "missing", reference, tmp_path / "out", cache))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty"):
        evaluate_samples(_config(tmp_path / "empty", reference, tmp_path / "out", cache))
    with pytest.raises(FileNotFoundError, match="FID Inception weights") as err:
        evaluate_samples(_config(reference, reference, tmp_path / "out", cache, fid="inception"))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="multiple of 32"):
        evaluate_samples(_config(reference, reference, tmp_path / "out", cache, fd_image_size=48))
    samples = tmp_path / "samples"
    _copy_class(reference, "apple", samples / "7", 3)  # class id 7 of a 3-class reference set
    with pytest.raises(ValueError, match="class id 7"):
        evaluate_samples(_config(samples, reference, tmp_path / "out", cache))


def test_npz_samples_with_labels_get_class_consistency(trained, reference, tmp_path, monkeypatch):
    """An ADM sample batch (arr_0 images, arr_1 class ids) is scored like the sampler's folder."""
    _, _, cache = trained
    monkeypatch.setattr(classifier_module, "train_consistency_classifier", _fail_training)
    images, labels = [], []
    for c, name in enumerate(CLASSES):
        for src in sorted((reference / name).iterdir())[:5]:
            images.append(np.asarray(Image.open(src).convert("RGB")))
            labels.append(c)
    np.savez(tmp_path / "samples.npz", np.stack(images), np.asarray(labels))
    right = evaluate_samples(_config(tmp_path / "samples.npz", reference, tmp_path / "right", cache))
    np.savez(tmp_path / "swapped.npz", np.stack(images), (np.asarray(labels) + 1) % 3)
    swapped = evaluate_samples(_config(tmp_path / "swapped.npz", reference, tmp_path / "swapped", cache))
    assert right["class_consistency"] >= 0.95 and swapped["class_consistency"] <= 0.05
    assert right["num_samples"] == 15 and right["utilization"] is None
    assert "ADM sample batch" in right["protocol"]["samples"]
