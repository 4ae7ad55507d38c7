"""Tokenizer evaluation: usage, PSNR / SSIM, perceptual distance, FD-lite0 / rFID, report and grids."""
from vqgan_lc.evaluate.evaluator import EvalConfig, evaluate_tokenizer, run_evaluation, write_report
from vqgan_lc.evaluate.frechet import InceptionFeatures, Lite0Features, RunningMoments, frechet_distance
from vqgan_lc.data.grid import save_comparison_grid, save_grid
from vqgan_lc.evaluate.metrics import psnr, psnr_y, ssim

__all__ = [
    "EvalConfig", "evaluate_tokenizer", "run_evaluation", "write_report",
    "InceptionFeatures", "Lite0Features", "RunningMoments", "frechet_distance",
    "save_comparison_grid", "save_grid", "psnr", "psnr_y", "ssim",
]
