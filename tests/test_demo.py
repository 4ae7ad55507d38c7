"""`vqgan-lc demo` in its reduced mode: every artefact a user is promised, loadable by `eval`."""
import json

from vqgan_lc.cli import main
from vqgan_lc.demo import DemoConfig, run_demo

FIELDS = ["codebook_size", "utilization", "perplexity", "psnr", "psnr_y", "ssim", "perceptual", "perceptual_name",
          "fd_lite0", "num_images", "utilization_train", "num_tokens_train", "top1_share"]


def test_quick_demo_writes_report_models_grids_and_plot(tmp_path):
    cfg = DemoConfig.quick()
    cfg.out_dir = str(tmp_path / "demo")
    run_demo(cfg)
    out = tmp_path / "demo"
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {"vqgan-lc", "vqgan"}
    for name, entry in report["models"].items():
        for key in FIELDS:
            assert key in entry, (name, key)
        assert entry["codebook_size"] == cfg.codebook_size  # same size for LC and the baseline
        assert entry["num_tokens"] >= cfg.tokens_per_entry * cfg.codebook_size
        assert (out / name / "eval" / "reconstructions.png").is_file()
        assert report["usage_curves"][name]
        assert entry["num_tokens_train"] == entry["num_tokens"]  # both windows hold the same number of tokens
    lc = report["models"]["vqgan-lc"]
    # the codebook's own reach over the same crops, beside the LC tokenizer's utilization
    assert 0 < lc["ceiling"] <= 1 and 0 < lc["ceiling_train"] <= 1
    assert report["ceilings"]["eval"]["num_tokens"] == lc["num_tokens"]
    assert report["models"]["vqgan"]["ceiling"] is None and report["models"]["vqgan"]["ceiling_train"] is None
    assert report["codebook"]["backbone"] == "efficientnet-lite0"
    assert (out / "utilization.png").stat().st_size > 1000
    assert (out / "comparison.png").is_file()
    assert "| vqgan-lc |" in (out / "report.md").read_text()
    # each trained tokenizer is saved where `vqgan-lc eval` can load it
    assert main(["eval", str(out / "vqgan-lc" / "tokenizer"), "--data", "demo:eval:4", "--out", str(tmp_path / "ev"),
                 "--fd-image-size", "64", "--perceptual", "perceptual-lite0"]) == 0
    assert json.loads((tmp_path / "ev" / "report.json").read_text())["codebook_size"] == cfg.codebook_size
