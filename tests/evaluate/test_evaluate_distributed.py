"""`vqgan-lc eval` under torchrun: each rank evaluates a slice, the merged report equals one process."""
import json

from vqgan_lc.evaluate.evaluator import EvalConfig, evaluate_checkpoint

KEYS = ("num_images", "num_tokens", "num_used", "utilization", "perplexity", "psnr", "psnr_y", "ssim", "perceptual",
        "fd_lite0")


def _config() -> EvalConfig:
    return EvalConfig(image_size=32, batch_size=4, perceptual="perceptual-lite0", fid="off", fd_image_size=32,
                      grid_images=4, dataset="demo:eval:12")


def _worker(rank, checkpoint, out):
    report = evaluate_checkpoint(checkpoint, "demo:eval:12", out, _config(), device="cpu", progress=False)
    assert (report is None) == (rank != 0)  # only the main process returns (and writes) the report


def test_two_process_eval_equals_one_process(tmp_path, run_ranks, tiny_tokenizer):
    tiny_tokenizer(tmp_path / "tok", codebook_size=64)
    single = evaluate_checkpoint(str(tmp_path / "tok"), "demo:eval:12", tmp_path / "one", _config(), device="cpu",
                                 progress=False)
    run_ranks(_worker, str(tmp_path / "tok"), str(tmp_path / "two"))
    merged = json.loads((tmp_path / "two" / "report.json").read_text())
    assert merged["num_images"] == single["num_images"] == 12
    for key in KEYS:
        assert abs(float(merged[key]) - float(single[key])) <= 1e-6 * max(1.0, abs(float(single[key]))), key
