"""metrics.jsonl (one JSON line per logged step, consistent across resumes) and `vqgan-lc plot`."""
import json

import pytest
from PIL import Image

from vqgan_lc.cli import main
from vqgan_lc.tokenizer.config import get_preset
from vqgan_lc.tokenizer.losses import LossConfig
from vqgan_lc.tokenizer.training import TokenizerTrainConfig, train_tokenizer
from vqgan_lc.train.loop import METRICS_NAME, MetricsLog, read_metric_lines
from vqgan_lc.train.plot import curve_keys, plot_metrics, read_metrics

# The trainer tests' tiny tokenizer: 32 px crops, f4, 64 codes.
TINY = ["autoencoder.resolution=32", "autoencoder.ch=8", "autoencoder.ch_mult=1,2,2", "autoencoder.num_res_blocks=1",
        "autoencoder.z_channels=8", "autoencoder.norm_groups=4", "quantizer.codebook_size=64", "quantizer.codebook_dim=16"]
TIMING = ("items_per_s", "wall_time")


def tiny_config(out, **kw) -> TokenizerTrainConfig:
    base = dict(model=get_preset("vqgan-lc-tiny").override(TINY), data="demo:train:48", batch_size=4, lr=1e-3,
                max_steps=6, warmup_epochs=0.5, out_dir=str(out), save_every=3, image_every=100, usage_every=2,
                log_every=1, loss=LossConfig(disc_start=3, perceptual="none"), device="cpu")
    base.update(kw)
    return TokenizerTrainConfig(**base)


def _lines(run):
    return [json.loads(line) for line in (run / METRICS_NAME).read_text().splitlines()]


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_one_line_per_logged_step_with_losses_lr_usage_and_speed(tmp_path):
    result = train_tokenizer(tiny_config(tmp_path / "run"), progress=False)
    lines = _lines(tmp_path / "run")
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    for record, logged in zip(lines, result.history):
        assert record["total"] == pytest.approx(logged["total"]) and record["lr"] == pytest.approx(logged["lr"])
        assert record["items_per_s"] > 0 and record["wall_time"] > 1e9
    # the tokenizer's utilization windows (usage_every=2) appear on the steps that closed one
    assert [r["step"] for r in lines if "usage/utilization" in r] == [2, 4, 6]
    assert [r["usage/utilization"] for r in lines if "usage/utilization" in r] == \
        pytest.approx([c["utilization"] for c in result.usage_curve])
    assert "grad_norm/generator" not in lines[0] or lines[0]["grad_norm/generator"] >= 0


def test_sparse_logging_keeps_log_steps_and_window_steps(tmp_path):
    train_tokenizer(tiny_config(tmp_path / "run", max_steps=5, log_every=4, usage_every=3, save_every=5),
                    progress=False)
    lines = _lines(tmp_path / "run")
    # log_every=4: steps 1, 4 and the last (5); step 3 closed a usage window; 5 closes the last
    assert [r["step"] for r in lines] == [1, 3, 4, 5]
    assert "total" in lines[1] and "usage/utilization" in lines[1] and "usage/utilization" not in lines[2]


def test_resume_drops_lines_logged_after_the_checkpoint(tmp_path):
    train_tokenizer(tiny_config(tmp_path / "full"), progress=False)
    # Stopped at a usage-window boundary (usage_every=2): the tokenizer family does not checkpoint
    # a half-counted window, so only there are its utilization values comparable after a resume.
    train_tokenizer(tiny_config(tmp_path / "split"), stop_at_step=4, progress=False)
    assert [r["step"] for r in _lines(tmp_path / "split")] == [1, 2, 3, 4]
    # a crash after the step-4 checkpoint: a later logged step and a torn line that resuming must drop
    with open(tmp_path / "split" / METRICS_NAME, "a") as f:
        f.write(json.dumps({"step": 5, "total": 456.0}) + "\n" + '{"step": 6, "tot')
    train_tokenizer(tiny_config(tmp_path / "split"), resume=tmp_path / "split", progress=False)
    full, split = _lines(tmp_path / "full"), _lines(tmp_path / "split")
    assert [r["step"] for r in split] == [1, 2, 3, 4, 5, 6]
    assert _without_timing(split) == _without_timing(full)  # same losses, lr and windows as one run
    # a fresh (not resumed) run in the same folder starts the file over
    train_tokenizer(tiny_config(tmp_path / "split", max_steps=2, save_every=2), progress=False)
    assert [r["step"] for r in _lines(tmp_path / "split")] == [1, 2]


def test_metrics_log_keeps_only_earlier_steps_and_writes_strict_json(tmp_path):
    path = tmp_path / METRICS_NAME
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\nnot json\n{"step": 3, "loss": 1.0}\n')
    log = MetricsLog(path, keep_through=2)
    log.write({"step": 3, "loss": float("nan"), "lr": 0.1})
    log.close()
    assert read_metric_lines(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5},
                                       {"step": 3, "loss": None, "lr": 0.1}]
    assert "NaN" not in path.read_text()


def test_plot_writes_a_png_of_the_chosen_curves(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / METRICS_NAME, "w") as f:
        for step in range(1, 21):
            record = {"step": step, "loss": 1.0 / step, "lr": 1e-4, "grad_norm/generator": 0.5, "items_per_s": 10.0,
                      "wall_time": 1.7e9 + step}
            if step % 5 == 0:
                record["usage/utilization"] = step / 20
            f.write(json.dumps(record) + "\n")
    records = read_metrics(run)
    assert curve_keys(records) == ["loss", "lr", "grad_norm/generator", "items_per_s", "usage/utilization"]
    assert curve_keys(records, ["grad_norm", "lr"]) == ["grad_norm/generator", "lr"]
    with pytest.raises(ValueError, match="no logged value 'total'.*loss, lr"):
        curve_keys(records, ["total"])

    out = plot_metrics(run)
    assert out == run / "metrics.png"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 200
        colours = len(set(image.convert("RGB").getdata()))
    assert colours > 10  # something was drawn, not a blank canvas

    assert main(["plot", str(run), "--keys", "loss,lr", "--out", str(tmp_path / "two.png")]) == 0
    assert "two.png" in capsys.readouterr().out
    with Image.open(tmp_path / "two.png") as two, Image.open(out) as five:
        assert two.size[0] < five.size[0]  # two panels side by side, not five in a 3-column grid
    assert main(["plot", str(run), "--keys", "total"]) == 2
    assert "no logged value 'total'" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "missing not found" in capsys.readouterr().err


def test_a_checkpoint_from_before_latent_scale_still_resumes(tmp_path):
    import torch

    from vqgan_lc.train.state import STATE_NAME

    train_tokenizer(tiny_config(tmp_path / "run"), stop_at_step=2, progress=False)
    path = tmp_path / "run" / STATE_NAME
    state = torch.load(path, weights_only=False)
    del state["model_config"]["latent_scale"]  # as written before the field existed
    torch.save(state, path)
    assert train_tokenizer(tiny_config(tmp_path / "run", max_steps=3), resume=tmp_path / "run",
                           progress=False).step == 3
    state = torch.load(path, weights_only=False)
    state["model_config"]["quantizer"]["codebook_size"] = 65  # a different model is still refused
    torch.save(state, path)
    with pytest.raises(ValueError, match="different tokenizer configuration"):
        train_tokenizer(tiny_config(tmp_path / "run", max_steps=4), resume=tmp_path / "run", progress=False)


def _write_metrics(run, steps=3):
    run.mkdir(parents=True)
    (run / METRICS_NAME).write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, steps + 1)))


def test_plot_reads_a_folder_holding_one_run_such_as_a_classify_out(tmp_path, capsys):
    out = tmp_path / "classify-out"  # `vqgan-lc classify --out` keeps its run in OUT/run
    _write_metrics(out / "run")
    (out / "report.json").write_text("{}")
    assert read_metrics(out)[-1]["step"] == 3
    assert main(["plot", str(out)]) == 0
    assert (out / "run" / "metrics.png").is_file()
    _write_metrics(out / "other")
    assert main(["plot", str(out)]) == 2  # two runs: say which to choose
    assert "holds several runs (other, run)" in capsys.readouterr().err


def test_plot_out_under_an_existing_file_names_the_file(tmp_path, capsys):
    _write_metrics(tmp_path / "run")
    (tmp_path / "notes").write_text("keep me")
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "notes" / "curves.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{tmp_path / 'notes'} is a file, not a folder" in err and "\n" not in err
    assert (tmp_path / "notes").read_text() == "keep me"
