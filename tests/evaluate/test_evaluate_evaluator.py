import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vqgan_lc.evaluate.evaluator import EvalConfig, evaluate_tokenizer, run_evaluation, write_report
from vqgan_lc.evaluate.metrics import psnr

NUM_CODES = 32
FACTOR = 16  # 64 px images -> 4x4 tokens


class FakeTokenizer(nn.Module):
    """The tokenizer API the evaluator relies on; tokens are patch-mean brightness bins."""

    def __init__(self, noise: float = 0.0):
        super().__init__()
        self.codebook_size = NUM_CODES
        self.noise = noise
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, images):
        patch_means = nn.functional.avg_pool2d(images.mean(1, keepdim=True), FACTOR).squeeze(1)
        indices = codes_of(patch_means)
        recon = images * self.gain + self.noise * torch.sin(40 * images)  # deterministic per pixel
        return SimpleNamespace(reconstruction=recon, quantizer=SimpleNamespace(indices=indices))


def codes_of(patch_means):
    return ((patch_means + 1) / 2 * NUM_CODES).long().clamp(0, NUM_CODES - 1)


def _loader(n=6, batch=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    images = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    images = ((images + 1) * 127.5).round() / 127.5 - 1  # 8-bit values, like decoded image files
    return [{"image": images[i : i + batch]} for i in range(0, n, batch)], images


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No VGG16 / Inception weights anywhere: the offline substitutes must be chosen."""
    for var in ("VQGAN_LC_VGG16", "VQGAN_LC_INCEPTION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))


def test_identity_model_report(offline, tmp_path):
    loader, images = _loader()
    config = EvalConfig(image_size=64, dataset="synthetic")
    report = evaluate_tokenizer(FakeTokenizer(), loader, config, grid_path=tmp_path / "grid.png", progress=False)
    for key in ("codebook_size", "utilization", "perplexity", "normalized_entropy", "num_tokens", "psnr", "psnr_y",
                "ssim", "perceptual", "perceptual_name", "fd_lite0", "num_images", "protocol"):
        assert key in report
    assert "rfid" not in report
    assert report["num_images"] == 6 and report["codebook_size"] == NUM_CODES
    assert math.isinf(report["psnr"]) and math.isinf(report["psnr_y"])
    assert report["ssim"] == pytest.approx(1.0)
    assert report["perceptual_name"] == "perceptual-lite0" and report["perceptual"] == pytest.approx(0.0, abs=1e-6)
    assert report["fd_lite0"] == pytest.approx(0.0, abs=1e-3)
    # usage against a brute-force count over the whole set
    codes = codes_of(nn.functional.avg_pool2d(images.mean(1, keepdim=True), FACTOR)).flatten()
    assert report["num_tokens"] == codes.numel() == 6 * 16
    assert report["utilization"] == pytest.approx(len(set(codes.tolist())) / NUM_CODES)
    p = np.bincount(codes.numpy(), minlength=NUM_CODES) / codes.numel()
    assert report["perplexity"] == pytest.approx(math.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))), rel=1e-6)
    assert report["protocol"]["dataset"] == "synthetic"
    assert any("tokens per entry" in note or "per entry" in note for note in report["protocol"]["notes"])
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape[0] > 2 * 64 and grid.shape[1] > 6 * 64  # 6 originals above 6 reconstructions

    write_report(report, tmp_path / "out" / "report.json")
    text = (tmp_path / "out" / "report.json").read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert loaded["psnr"] == "inf" and float(loaded["psnr"]) == math.inf
    assert loaded["num_images"] == 6
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_noisy_model_metrics_and_max_images(offline, tmp_path):
    loader, images = _loader(n=6, batch=2)
    # a batch whose files were all unreadable, as collate_skip_corrupt returns it
    loader.insert(1, {"image": torch.empty(0, 3, 0, 0), "num_skipped": 2, "num_upscaled": 0})
    model = FakeTokenizer(noise=0.1).train()
    config = EvalConfig(image_size=64, max_images=5, perceptual="perceptual-lite0", fid="off")
    report = run_evaluation(model, loader, tmp_path, config, progress=False)
    assert model.training  # restored
    assert report["num_images"] == 5 and report["num_tokens"] == 5 * 16 and report["num_skipped"] == 2
    # PSNR is the mean of per-image values on clamped, 8-bit-rounded reconstructions
    recons = [FakeTokenizer(noise=0.1)(b["image"]).reconstruction for b in loader if len(b["image"])]
    recon = torch.cat(recons)[:5]
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    assert report["psnr"] == pytest.approx(psnr(images[:5], recon).mean().item(), rel=1e-5)
    assert 0 < report["ssim"] < 1 and report["perceptual"] > 0 and report["fd_lite0"] > 0
    assert json.loads((tmp_path / "report.json").read_text())["num_images"] == 5
    assert (tmp_path / "reconstructions.png").is_file()


def test_evaluator_input_errors(offline):
    loader, _ = _loader(n=2)
    with pytest.raises(ValueError, match=r"\(B,3,32,32\)"):
        evaluate_tokenizer(FakeTokenizer(), loader, EvalConfig(image_size=32), progress=False)
    with pytest.raises(RuntimeError, match="VQGAN_LC_INCEPTION"):
        evaluate_tokenizer(FakeTokenizer(), loader, EvalConfig(image_size=64, fid="inception"), progress=False)
    with pytest.raises(ValueError, match="dicts"):
        evaluate_tokenizer(FakeTokenizer(), [torch.zeros(2, 3, 64, 64)], EvalConfig(image_size=64), progress=False)
    with pytest.raises(ValueError, match="fid"):
        EvalConfig(fid="clean-fid").validate()
    with pytest.raises(ValueError, match="perceptual"):
        EvalConfig(perceptual="lpips").validate()
    with pytest.raises(ValueError, match="image_size"):  # a model without a resolution needs the size said
        evaluate_tokenizer(FakeTokenizer(), loader, EvalConfig(), progress=False)


@pytest.mark.slow
def test_rfid_is_reported_when_inception_weights_exist(offline, tmp_path, monkeypatch):
    from vqgan_lc.backbones.inception import FIDInceptionV3

    torch.manual_seed(0)
    file = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(FIDInceptionV3().state_dict(), file)
    monkeypatch.setenv("VQGAN_LC_INCEPTION", str(file))
    loader, _ = _loader(n=4)
    report = evaluate_tokenizer(FakeTokenizer(noise=0.2), loader, EvalConfig(image_size=64), progress=False)
    assert report["rfid"] > 0 and "Inception" in report["protocol"]["rfid"]


class DivergesAfter(FakeTokenizer):
    """Finite reconstructions for the first `good` calls, then NaN ones (a run that diverged)."""

    def __init__(self, good: int):
        super().__init__()
        self.good = good

    def forward(self, images):
        out = super().forward(images)
        self.good -= 1
        if self.good < 0:
            out.reconstruction = out.reconstruction * float("nan")
        return out


def test_nan_weights_raise_instead_of_a_report(offline, tmp_path):
    loader, _ = _loader(n=4)
    model = FakeTokenizer().train()
    with torch.no_grad():
        model.gain.fill_(float("nan"))
    config = EvalConfig(image_size=64, perceptual="perceptual-lite0", fid="off")
    with pytest.raises(ValueError, match="produced non-finite reconstructions") as err:
        run_evaluation(model, loader, tmp_path, config, progress=False)
    assert "\n" not in str(err.value) and "corrupt or diverged" in str(err.value)
    assert not (tmp_path / "report.json").exists() and model.training  # no report; mode restored
    # a later batch going non-finite is caught too: every batch is checked
    with pytest.raises(ValueError, match="non-finite reconstructions .* after 2 good images"):
        evaluate_tokenizer(DivergesAfter(good=1), _loader(n=6)[0], config, progress=False)


def test_tiny_tokenizer_with_nan_decoder_weights_raises(offline):
    from vqgan_lc.quantize import QuantizerConfig
    from vqgan_lc.tokenizer import AutoencoderConfig, TokenizerConfig, VQModel

    torch.manual_seed(0)
    ae = AutoencoderConfig(resolution=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                           z_channels=16, norm_groups=8)
    model = VQModel(TokenizerConfig(ae, QuantizerConfig(kind="lc", codebook_size=64, dim=4, codebook_dim=12)))
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.fill_(float("nan"))
    loader, _ = _loader(n=2, size=32)
    with pytest.raises(ValueError, match="produced non-finite reconstructions"):
        evaluate_tokenizer(model, loader, EvalConfig(image_size=32, perceptual="perceptual-lite0", fid="off"),
                           progress=False)


def test_token_usage_reads_the_window_curve_at_exact_token_counts():
    from vqgan_lc.evaluate.evaluator import token_usage
    from vqgan_lc.quantize.usage import code_counts, usage_stats

    class Encoder(FakeTokenizer):
        def encode(self, images):
            return SimpleNamespace(indices=codes_of(nn.functional.avg_pool2d(images.mean(1, keepdim=True),
                                                                                 FACTOR).squeeze(1)))

    model, (loader, _) = Encoder(), _loader(n=6, batch=4)
    every = torch.cat([model.encode(b["image"]).indices.flatten() for b in loader])  # 6 x 16 tokens
    # marks inside a batch, on a batch boundary (64 tokens) and past the window (never reached)
    stats = token_usage(model, loader, marks=(40, 5, 64, 500))
    assert [p["num_tokens"] for p in stats["curve"]] == [5, 40, 64]
    for point in stats["curve"]:
        expected = usage_stats(code_counts(every[:point["num_tokens"]], NUM_CODES))
        assert point["num_used"] == expected["num_used"] and point["perplexity"] == pytest.approx(expected["perplexity"])
    assert stats["num_used"] == usage_stats(code_counts(every, NUM_CODES))["num_used"]
    assert "curve" not in token_usage(model, loader)
