"""eval-gen with ADM .npz batches and statistics files, eval-gen stats (resumable), and 2 gloo ranks.

A tiny stand-in for the Inception network (colour statistics as pool / spatial / logit
features) keeps these tests fast and offline; the real network's outputs are tested on random
weights in tests/backbones/test_backbones_inception.py.
"""
import json

import numpy as np
import pytest
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits

from tiny_inception import TinyInception
from vqgan_lc.backbones import inception
from vqgan_lc.cli import main
from vqgan_lc.evaluate import generation
from vqgan_lc.evaluate.generation import GenEvalConfig, StatsConfig, compute_reference_stats, evaluate_samples

SIZE = 32
METRICS = ("inception_score", "fid", "sfid", "precision", "recall", "fd_lite0")




def _use_tiny_inception() -> None:
    inception.available = lambda path=None, **kw: True
    generation.InceptionFeatures = TinyInception


@pytest.fixture(autouse=True)
def tiny_inception(monkeypatch):
    monkeypatch.setattr(inception, "available", lambda path=None, **kw: True)
    monkeypatch.setattr(generation, "InceptionFeatures", TinyInception)
    with threadpool_limits(limits=1):
        yield


def _images(n: int, seed: int, tint) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.asarray(tint, dtype=np.float64)[None, None, None, :]
    noise = rng.normal(0, 40, size=(n, SIZE, SIZE, 3)) + rng.normal(0, 30, size=(n, 1, 1, 3))
    return (base + noise).clip(0, 255).astype(np.uint8)


@pytest.fixture
def batches(tmp_path):
    samples = _images(37, 1, (150, 90, 60))
    reference = _images(45, 2, (120, 110, 80))
    np.savez(tmp_path / "samples.npz", samples, np.arange(37) % 3)  # the ADM layout: arr_0, arr_1
    np.savez(tmp_path / "reference.npz", reference)
    return tmp_path / "samples.npz", tmp_path / "reference.npz", samples, reference


def _config(samples, reference, out, **kw) -> GenEvalConfig:
    settings = {"fd_image_size": SIZE, "batch_size": 8, "workers": 0, "device": "cpu", "progress": False, **kw}
    return GenEvalConfig(samples=str(samples), reference=str(reference), out=str(out), **settings)


def _stats_config(source, out, **kw) -> StatsConfig:
    settings = {"fd_image_size": SIZE, "batch_size": 8, "workers": 0, "device": "cpu", "progress": False, **kw}
    return StatsConfig(source=str(source), out=str(out), **settings)


def _tiny(images: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        feats = TinyInception().features(torch.from_numpy(images).permute(0, 3, 1, 2))
    return {k: v.double().numpy() for k, v in feats.items()}


def _fd(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))


def test_npz_batches_give_the_suite_numbers(batches, tmp_path):
    samples_npz, reference_npz, samples, reference = batches
    report = evaluate_samples(_config(samples_npz, reference_npz, tmp_path / "out"))
    fake, real = _tiny(samples), _tiny(reference)
    assert report["fid"] == pytest.approx(_fd(fake["pool"], real["pool"]), rel=1e-6)
    assert report["sfid"] == pytest.approx(_fd(fake["spatial"], real["spatial"]), rel=1e-6)
    p = torch.softmax(torch.from_numpy(fake["logits"]), 1).numpy()
    kl = (p * (np.log(p) - np.log(p.mean(0, keepdims=True)))).sum(1).mean()
    assert report["inception_score"] == pytest.approx(np.exp(kl), rel=1e-6)  # 37 samples: one split
    assert 0 <= report["precision"] <= 1 and 0 <= report["recall"] <= 1
    assert report["num_samples"] == 37 and report["num_reference"] == 45
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    for key in METRICS:
        assert on_disk[key] == report[key] and isinstance(on_disk["protocol"][key], str), key
    assert "ADM sample batch" in on_disk["protocol"]["samples"] and "TF 1.x bilinear" in on_disk["protocol"]["fid"]
    # arr_1 labels are class ids, but class consistency needs a reference image folder
    assert report["class_consistency"] is None and "reference image folder" in on_disk["protocol"]["class_consistency"]
    table = generation.adm_table(report).splitlines()
    assert [line.split(":")[0] for line in table] == ["Inception Score", "FID", "sFID", "Precision", "Recall"]


def test_stats_file_round_trip_and_no_overwrite(batches, tmp_path):
    samples_npz, reference_npz, _, _ = batches
    ref = tmp_path / "ref.npz"
    info = compute_reference_stats(_stats_config(reference_npz, ref))
    assert info["num_images"] == 45 and info["pool_images"] == 45
    with np.load(ref) as data:
        assert {"mu", "sigma", "mu_s", "sigma_s", "pool", "mu_lite0", "sigma_lite0", "info"} <= set(data.files)
        assert data["pool"].dtype == np.float32 and data["sigma_s"].shape == (27, 27)
    assert not (tmp_path / "ref.npz.partial").exists()
    direct = evaluate_samples(_config(samples_npz, reference_npz, tmp_path / "direct"))
    from_stats = evaluate_samples(_config(samples_npz, ref, tmp_path / "stats"))
    for key in METRICS:
        assert from_stats[key] == pytest.approx(direct[key], rel=1e-9, abs=1e-12), key
    assert "read from ref.npz" in from_stats["protocol"]["fid"]
    with pytest.raises(ValueError, match="already exists"):
        compute_reference_stats(_stats_config(reference_npz, ref))


def test_stats_resume_equals_an_uninterrupted_run(batches, tmp_path):
    _, reference_npz, _, _ = batches
    whole = tmp_path / "whole.npz"
    compute_reference_stats(_stats_config(reference_npz, whole))
    resumed = tmp_path / "resumed.npz"
    assert compute_reference_stats(_stats_config(reference_npz, resumed, max_images=16)) is None  # stopped early
    assert not resumed.exists() and (tmp_path / "resumed.npz.partial" / "rank0.pt").is_file()
    with pytest.raises(ValueError, match="other settings"):
        compute_reference_stats(_stats_config(reference_npz, resumed, batch_size=4))
    assert compute_reference_stats(_stats_config(reference_npz, resumed))["num_images"] == 45
    with np.load(whole) as a, np.load(resumed) as b:
        for key in ("mu", "sigma", "mu_s", "sigma_s", "pool", "mu_lite0", "sigma_lite0"):
            assert np.array_equal(a[key], b[key]), key


def test_adm_reference_batch_keys(batches, tmp_path):
    """A reference batch as the suite ships it: mu/sigma/mu_s/sigma_s of a large set plus arr_0 images."""
    samples_npz, _, samples, reference = batches
    big = _tiny(_images(200, 5, (125, 105, 85)))
    adm = tmp_path / "VIRTUAL_ref.npz"
    np.savez(adm, arr_0=reference, mu=big["pool"].mean(0), sigma=np.cov(big["pool"], rowvar=False),
             mu_s=big["spatial"].mean(0), sigma_s=np.cov(big["spatial"], rowvar=False))
    report = evaluate_samples(_config(samples_npz, adm, tmp_path / "out"))
    fake = _tiny(samples)
    assert report["fid"] == pytest.approx(_fd(fake["pool"], big["pool"]), rel=1e-6)  # mu/sigma, not arr_0
    assert report["sfid"] == pytest.approx(_fd(fake["spatial"], big["spatial"]), rel=1e-6)
    direct = evaluate_samples(_config(samples_npz, tmp_path / "reference.npz", tmp_path / "direct"))
    assert (report["precision"], report["recall"]) == (direct["precision"], direct["recall"])  # from arr_0's images
    assert report["fd_lite0"] == pytest.approx(direct["fd_lite0"], rel=1e-9)


def test_without_inception_weights(batches, tmp_path, monkeypatch):
    samples_npz, reference_npz, _, _ = batches
    monkeypatch.setattr(inception, "available", lambda path=None, **kw: False)
    monkeypatch.delenv("VQGAN_LC_INCEPTION", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    report = evaluate_samples(_config(samples_npz, reference_npz, tmp_path / "out"))
    assert all(report[key] is None for key in METRICS[:-1]) and report["fd_lite0"] > 0
    with pytest.raises(FileNotFoundError, match="--download") as err:
        evaluate_samples(_config(samples_npz, reference_npz, tmp_path / "out", fid="inception"))
    assert inception.INCEPTION_FILENAME in str(err.value) and "\n" not in str(err.value)
    info = compute_reference_stats(_stats_config(reference_npz, tmp_path / "lite.npz"))
    assert info["inception"] is False
    with np.load(tmp_path / "lite.npz") as data:
        assert "mu" not in data.files and "mu_lite0" in data.files


def _rank_worker(rank: int, samples: str, reference: str, out: str) -> None:
    _use_tiny_inception()
    torch.set_num_threads(1)
    evaluate_samples(_config(samples, reference, out))
    compute_reference_stats(_stats_config(reference, out + ".npz"))


@pytest.mark.slow  # two spawned interpreters: about 20 s alone, over a minute on a busy machine
def test_two_gloo_ranks_equal_one_process(batches, tmp_path, run_ranks):
    samples_npz, reference_npz, _, _ = batches
    single = evaluate_samples(_config(samples_npz, reference_npz, tmp_path / "single"))
    compute_reference_stats(_stats_config(reference_npz, tmp_path / "single.npz"))
    run_ranks(_rank_worker, str(samples_npz), str(reference_npz), str(tmp_path / "ranks"), world=2)
    sharded = json.loads((tmp_path / "ranks" / "report.json").read_text())
    for key in METRICS:
        # the ranks add the same float64 terms in another order: equal to rounding; FD-lite0 (1280-d
        # covariances of 37 images, nearly singular) amplifies that rounding the most
        assert sharded[key] == pytest.approx(single[key], rel=1e-6 if key == "fd_lite0" else 1e-9, abs=1e-12), key
    assert sharded["inception_score_splits"] == pytest.approx(single["inception_score_splits"], rel=1e-12)
    assert sharded["num_samples"] == 37 and sharded["protocol"]["distributed"].startswith("2 processes")
    with np.load(tmp_path / "single.npz") as a, np.load(tmp_path / "ranks.npz") as b:
        for key in ("mu", "sigma", "mu_s", "sigma_s", "pool", "mu_lite0", "sigma_lite0"):
            assert np.allclose(a[key], b[key], rtol=1e-10, atol=1e-12), key


def test_cli_stats_then_eval_gen(batches, tmp_path, capsys, monkeypatch):
    samples_npz, reference_npz, _, _ = batches
    ref = tmp_path / "ref.npz"
    common = ["--fd-image-size", str(SIZE), "--workers", "0", "--device", "cpu"]
    assert main(["eval-gen", "stats", str(reference_npz), "--out", str(ref), *common]) == 0
    assert ref.is_file()
    assert main(["eval-gen", str(samples_npz), "--reference", str(ref), "--out", str(tmp_path / "out"), *common]) == 0
    printed = capsys.readouterr().out
    assert printed.index("Inception Score") < printed.index("FID:") < printed.index("sFID") < printed.index("Precision")
    seen = {}
    monkeypatch.setattr(generation, "evaluate_samples", lambda config: seen.setdefault("config", config) and None)
    main(["eval-gen", str(samples_npz), "--reference", str(ref), "--out", str(tmp_path / "o2")])
    assert seen["config"].batch_size == GenEvalConfig().batch_size  # the CLI's default is the config's
    assert main(["eval-gen", str(samples_npz), "--out", str(tmp_path / "o3")]) != 0
    assert "needs --reference" in capsys.readouterr().err


def test_sampler_folder_with_its_npz_batch(batches, tmp_path):
    """`vqgan-lc sample --npz --no-png` leaves samples.npz (written streamed, zip64), tokens.npy and
    report.json: eval-gen reads the batch and still measures utilization from the folder."""
    from vqgan_lc.generate.sample import _write_npz

    _, reference_npz, samples, _ = batches
    folder = tmp_path / "sampled"
    folder.mkdir()
    parts = []
    for k, chunk in enumerate(np.array_split(samples, 3)):
        parts.append(tmp_path / f"{k}.images.npy")
        np.save(parts[-1], chunk)
    _write_npz(folder / "samples.npz", parts, np.arange(37) % 3)
    np.save(folder / "tokens.npy", np.random.default_rng(0).integers(0, 20, size=(37, 4)).astype(np.int32))
    (folder / "report.json").write_text(json.dumps({"codebook_size": 32, "guidance_scale": 2.0}))
    report = evaluate_samples(_config(folder, reference_npz, tmp_path / "out"))
    direct = evaluate_samples(_config(batches[0], reference_npz, tmp_path / "direct"))
    assert report["fid"] == direct["fid"] and report["inception_score"] == direct["inception_score"]
    assert report["num_tokens"] == 37 * 4 and report["guidance_scale"] == 2.0
    assert "samples.npz" in report["protocol"]["samples"]
