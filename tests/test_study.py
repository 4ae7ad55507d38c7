"""`vqgan-lc study` on a tiny case: plans, resume, every ablation flag, classification, the CLI."""
import json

import pytest
import torch

from vqgan_lc import study as study_module
from vqgan_lc.cli import main
from vqgan_lc.study import StudyConfig, plan, run_study, tokenizer_train_config, uniform_ceiling
from vqgan_lc.tokenizer.model import VQModel

# A few seconds per combination: 32 px, f4 (8x8 tokens), 2 steps, no perceptual loss in training.
TINY = ["autoencoder.resolution=32", "autoencoder.ch=8", "autoencoder.ch_mult=1,2,2", "autoencoder.z_channels=8",
        "autoencoder.norm_groups=4", "autoencoder.attn_resolutions=", "loss.perceptual=none", "steps=2",
        "batch_size=4", "train_crops=8", "codebook_crops=8", "codebook_crop_size=64", "kmeans_iters=2",
        "eval_crops=2", "usage_crops=4", "usage_tokens_per_entry=8", "fd_image_size=32", "low_dim=4", "dims=2,4", "classifier.width=16",
        "classifier.depth=1", "classifier.heads=2", "classify_epochs=1", "classify_per_class=3",
        "classify_batch_size=8", "classify_seeds=2"]


def tiny(out, **fields) -> StudyConfig:
    config = StudyConfig(out_dir=str(out), sizes=(64,), progress=False).override(TINY)
    for name, value in fields.items():
        setattr(config, name, value)
    return config.validate()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """LC and VQGAN at 64 entries, with token-map classification on the mnist digits."""
    out = tmp_path_factory.mktemp("study") / "s"
    report = run_study(tiny(out, quantizers=("lc", "vq"), classify=("mnist",)))
    return out, report


def test_report_tables_plots_and_classification(finished):
    out, report = finished
    names = [r["name"] for r in report["combinations"]]
    assert names == ["lc-64", "vq-64"]
    for r in report["combinations"]:
        assert 0.0 < r["utilization"] <= 1.0 and r["num_tokens"] == 8 * 64  # 8 tokens per entry: 8 crops x 8x8
        assert r["uniform_ceiling"] == pytest.approx(uniform_ceiling(512, 64))
        # the same window read at 4 and 8 tokens per entry; the longer one is the headline
        assert [p["tokens_per_entry"] for p in r["window_curve"]] == [4, 8]
        assert r["window_curve"][0]["uniform_ceiling"] == pytest.approx(uniform_ceiling(256, 64))
        assert r["window_curve"][0]["num_used"] <= r["window_curve"][1]["num_used"] == r["num_used"]
        assert r["psnr"] > 0 and r["fd_lite0"] >= 0
        assert (out / "runs" / r["name"] / "tokenizer" / "model.safetensors").is_file()
    lc, vq = report["combinations"]
    assert (lc["kind"], lc["dim"], vq["kind"], vq["dim"]) == ("lc", 4, "vq", 8)  # VQ keeps z_channels
    scores = report["classification"]["mnist"]
    assert set(scores) == {"lc-64", "vq-64"}
    for s in scores.values():  # two seeds per tokenizer: mean and interval of their top-1
        assert s["num_classes"] == 10 and s["num_val"] == 10 and s["seeds"] == [0, 1]
        assert s["top1"]["n"] == 2 and s["top1"]["mean"] == pytest.approx(sum(s["per_seed_top1"]) / 2)
        assert 0 <= s["top1"]["mean"] <= 1 and s["top1"]["ci95"] >= 0
    # the second seed reuses the first one's token caches
    assert (out / "classify" / "mnist" / "lc-64" / "seed-1" / "cache-train").is_symlink()
    assert (out / "utilization.png").stat().st_size > 1000 and (out / "reconstruction.png").stat().st_size > 1000
    assert (out / "window.png").stat().st_size > 1000
    text = (out / "report.md").read_text()
    assert "| VQGAN-LC |" in text and "| VQGAN |" in text and "classification top-1" in text
    assert "against the window's length" in text and "| model | N | 4 | 8 |" in text
    assert json.loads((out / "report.json").read_text())["combinations_trained"] == 2


def test_a_rerun_skips_finished_combinations_and_refuses_other_settings(finished, monkeypatch):
    out, report = finished

    def no_training(*args, **kwargs):
        raise AssertionError("a finished combination was trained again")

    monkeypatch.setattr("vqgan_lc.tokenizer.training.train_tokenizer", no_training)
    again = run_study(tiny(out, quantizers=("lc", "vq")))
    assert again["combinations_trained"] == 0
    assert [r["psnr"] for r in again["combinations"]] == [r["psnr"] for r in report["combinations"]]
    with pytest.raises(ValueError, match="steps"):
        run_study(tiny(out, quantizers=("lc",), steps=3))


def test_a_result_saved_before_a_setting_existed_is_read_with_its_default(finished, monkeypatch):
    """A finished combination whose saved spec lacks a setting added since (the gradient
    estimator) was made with that setting's default: it is reused, not refused."""
    out, report = finished
    marker = out / "runs" / "vq-64" / "result.json"
    kept = marker.read_text()
    done = json.loads(kept)
    del done["spec"]["combination"]["gradient"], done["spec"]["train"]["model"]["quantizer"]["gradient"]
    marker.write_text(json.dumps(done))
    monkeypatch.setattr("vqgan_lc.tokenizer.training.train_tokenizer", None)  # any training would fail
    try:
        assert run_study(tiny(out, quantizers=("vq",)))["combinations_trained"] == 0
        done["spec"]["train"]["lr"] = 0.5  # a recorded setting that differs is still refused
        marker.write_text(json.dumps(done))
        with pytest.raises(ValueError, match="train.lr differ"):
            run_study(tiny(out, quantizers=("vq",)))
    finally:
        marker.write_text(kept)


def test_an_interrupted_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from vqgan_lc.tokenizer import training

    config = tiny(tmp_path / "s", quantizers=("fc",), steps=4)
    original = training.train_tokenizer
    monkeypatch.setattr(training, "train_tokenizer", lambda c, **kw: original(c, stop_at_step=2, **kw))
    with pytest.raises(RuntimeError, match="stopped at step 2 of 4; rerun"):
        study_module.run_combination(config, plan(config)[0], study_module._Features(config))
    assert not (tmp_path / "s" / "runs" / "fc-64" / "result.json").exists()  # never scored half-trained
    seen = {}

    def record(c, **kw):
        seen["resume"] = kw["resume"]
        return original(c, **kw)

    monkeypatch.setattr(training, "train_tokenizer", record)
    result = run_study(config)["combinations"][0]
    assert seen["resume"] is not None and result["resumed"] is True


@pytest.mark.parametrize("ablation, series", [
    ("init", ["gaussian", "random-select", "kmeans"]),
    ("projector", ["static", "frozen", "trainable"]),
    ("dim", ["d2", "d4"]),
])
def test_each_ablation_plans_the_intended_tokenizers(ablation, series, tmp_path):
    config = tiny(tmp_path, ablation=ablation)
    combos = plan(config)
    assert [c.series for c in combos] == series
    # the variant equal to the main sweep's VQGAN-LC shares its folder: trained once for all tables
    assert sum(c.name == "lc-64" for c in combos) == 1
    codebook = torch.randn(64, 112)
    for combo in combos:
        model = VQModel(tokenizer_train_config(config, combo, tmp_path, None).model, codebook)
        q = model.quantizer
        assert model.codebook_size == 64 and q.dim == combo.dim
        if combo.series == "static":
            assert isinstance(q.projector, torch.nn.Identity) and q.dim == 112 and not q.codebook.requires_grad
        if combo.series == "trainable":
            assert isinstance(q.codebook, torch.nn.Parameter) and q.codebook.requires_grad
        if combo.series in ("frozen", "kmeans", "d4", "gaussian", "random-select"):
            assert isinstance(q.projector, torch.nn.Linear) and "codebook" in dict(q.named_buffers())
    modes = {"gaussian", "random-select", "global"} if ablation == "init" else {"global"}
    assert {c.codebook for c in combos} == modes
    if ablation == "dim":
        assert [c.dim for c in combos] == [2, 4]


def test_every_quantizer_trains_at_the_same_quantizer_lr_scale(tmp_path):
    """The study's projector / codebook rate multiplier reaches every combination alike (a fair
    comparison), and a changed multiplier is a changed setting for a finished combination."""
    config = tiny(tmp_path, quantizers=("lc", "vq", "fc", "ema"), quantizer_lr_scale=7.0)
    assert {tokenizer_train_config(config, c, tmp_path, None).quantizer_lr_scale for c in plan(config)} == {7.0}
    other = tiny(tmp_path, quantizer_lr_scale=1.0)
    combo = plan(config)[0]
    assert (study_module.combination_spec(config, combo)["train"]["quantizer_lr_scale"]
            != study_module.combination_spec(other, combo)["train"]["quantizer_lr_scale"])


def test_the_gradient_ablation_pairs_each_quantizer_with_its_rotation_trick_twin(tmp_path):
    config = tiny(tmp_path, ablation="gradient", quantizers=("lc", "vq", "simvq"))
    combos = plan(config)
    assert [c.name for c in combos] == ["lc-64", "lc-rotation-64", "vq-64", "vq-rotation-64", "simvq-64",
                                        "simvq-rotation-64"]
    assert [c.series for c in combos][1::2] == ["lc-rotation", "vq-rotation", "simvq-rotation"]
    assert all(c.label.endswith(", rotation trick") for c in combos[1::2])
    # the straight-through variants are the main sweep's combinations themselves (shared folders)
    assert combos[::2] == plan(tiny(tmp_path, quantizers=("lc", "vq", "simvq")))
    for plain, rotated in zip(combos[::2], combos[1::2]):
        a, b = (tokenizer_train_config(config, c, tmp_path, None).model.quantizer for c in (plain, rotated))
        assert (a.gradient, b.gradient) == ("straight-through", "rotation")
        assert {**a.to_dict(), "gradient": None} == {**b.to_dict(), "gradient": None}  # nothing else differs


@pytest.mark.parametrize("ablation", ["init", "projector", "dim"])
def test_each_ablation_flag_runs_on_a_tiny_case(ablation, finished, capsys):
    out, _ = finished  # shares lc-64 with the main sweep: only the other variants train
    assert main(["study", "--out", str(out), "--sizes", "64", "--ablation", ablation, "--set", *TINY,
                 "progress=false"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["ablation"] == ablation
    assert [r["series"] for r in report["combinations"]] == [c.series for c in plan(tiny(out, ablation=ablation))]
    assert report["combinations_trained"] == len(report["combinations"]) - 1  # lc-64 was reused
    assert f"{ablation} ablation" in capsys.readouterr().out
    if ablation == "init":
        assert (out / "codebooks" / "gaussian-64.safetensors").is_file()


def test_the_gradient_ablation_flag_trains_only_the_rotation_trick_variants(finished):
    out, _ = finished
    assert main(["study", "--out", str(out), "--sizes", "64", "--ablation", "gradient", "--quantizers", "lc,vq",
                 "--set", *TINY, "progress=false"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["combinations"]] == ["lc-64", "lc-rotation-64", "vq-64", "vq-rotation-64"]
    assert report["combinations_trained"] == 2  # lc-64 and vq-64 reused from the main sweep
    saved = json.loads((out / "runs" / "vq-rotation-64" / "tokenizer" / "config.json").read_text())
    assert saved["quantizer"]["gradient"] == "rotation"
    assert "VQGAN-LC, rotation trick" in (out / "report.md").read_text()


def test_bad_settings_fail_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["study", "--out", str(tmp_path), "--quantizers", "lc,xx"])
    assert exit_.value.code == 2 and "choose from lc,vq,fc,ema,ema-restart,l2,simvq" in capsys.readouterr().err
    assert main(["study", "--out", str(tmp_path), "--set", "codebook_vectors_per_entry=0"]) == 2
    assert "codebook_vectors_per_entry" in capsys.readouterr().err


def test_kmeans_vectors_and_usage_window_grow_with_the_largest_size():
    config = StudyConfig(sizes=(1024, 65536, 262144)).validate()
    # small sizes keep the 2,048 crops' 131,072 vectors; 65,536 gets 10 per entry; 262,144 too
    assert [config.codebook_vectors(s) for s in config.sizes] == [131072, 655360, 2621440]
    assert config.feature_crops() == 2621440 // 64
    # at least 32 tokens per entry: 4,096 crops up to 8,192 entries, then 32 x N / 64 crops
    assert [config.usage_window(s) for s in config.sizes] == [4096, 32768, 131072]
    # the window curve: 4, 8, 16 and 32 tokens per entry, all inside the window
    assert config.usage_marks(65536) == (262144, 524288, 1048576, 2097152)
    assert config.usage_marks(65536)[-1] == config.usage_window(65536) * config.tokens_per_crop
    assert StudyConfig(usage_tokens_per_entry=10).validate().usage_marks(1024) == (4096, 8192)
    assert StudyConfig(sizes=(1024,)).validate().feature_crops() == 2048


def test_the_fields_baselines_are_planned_with_their_sources_settings(tmp_path):
    from vqgan_lc.quantize import L2NormQuantizer, RestartEMAQuantizer, SimVQQuantizer

    config = tiny(tmp_path, quantizers=("ema", "ema-restart", "l2", "simvq"))
    combos = plan(config)
    assert [(c.name, c.dim) for c in combos] == [("ema-64", 8), ("ema-restart-64", 8), ("l2-64", 4), ("simvq-64", 4)]
    classes = [None, RestartEMAQuantizer, L2NormQuantizer, SimVQQuantizer]
    for combo, cls in zip(combos, classes):
        q = tokenizer_train_config(config, combo, tmp_path, None).model.quantizer
        weights = (0.25, 1.0) if combo.kind in ("l2", "simvq") else (1.0, 0.33)
        assert (q.alpha, q.beta) == weights
        if cls is not None:
            assert isinstance(VQModel(tokenizer_train_config(config, combo, tmp_path, None).model).quantizer, cls)


def test_mean_interval():
    from vqgan_lc.study import mean_interval

    assert mean_interval([0.5]) == {"mean": 0.5, "std": 0.0, "ci95": 0.0, "n": 1}
    r = mean_interval([0.8, 0.9, 1.0])
    assert r["mean"] == pytest.approx(0.9) and r["std"] == pytest.approx(0.1)
    assert r["ci95"] == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)  # t(0.975, 2 df)


def test_the_study_flag_names_every_quantizer_kind():
    from vqgan_lc.cli.study import register  # noqa: F401  (the parser's list of kinds is read lazily)
    from vqgan_lc.quantize.config import KINDS
    from vqgan_lc.cli import build_parser
    import argparse
    parser = build_parser()
    study = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["study"]
    flag = next(a for a in study._actions if a.dest == "quantizers")
    assert ",".join(KINDS) in flag.help and flag.type(",".join(KINDS)) == KINDS


def test_replicate_seeds_train_their_own_codebooks_and_the_tables_give_mean_and_interval(tmp_path):
    out = tmp_path / "s"
    config = tiny(out, quantizers=("lc",), seeds=2, classify=("mnist",))
    assert [(c.name, c.seed) for c in plan(config)] == [("lc-64", 0), ("lc-64-seed1", 1)]
    report = run_study(config)
    # every replicate's tokenizer is classified; the table's interval is over the replicates' means
    scores = report["classification"]["mnist"]
    assert set(scores) == {"lc-64", "lc-64-seed1"}
    [pooled] = report["classification_summary"]["mnist"]
    means = [scores[n]["top1"]["mean"] for n in ("lc-64", "lc-64-seed1")]
    assert (pooled["tokenizers"], pooled["classifiers"]) == (2, 4) and pooled["top1"]["n"] == 2
    assert pooled["top1"]["mean"] == pytest.approx(sum(means) / 2)
    assert pooled["top1"]["ci95"] == pytest.approx(study_module.mean_interval(means)["ci95"])
    assert "2 tokenizer replicates, each the mean of 2 classifier seeds" in (out / "report.md").read_text()
    first, second = report["combinations"]
    assert (first["seed"], second["seed"]) == (0, 1)
    # each replicate has its own k-means codebook (its own crops and seed) and its own initialisation
    books = sorted(p.name for p in (out / "codebooks").glob("*.safetensors"))
    assert books == ["global-64-seed1.safetensors", "global-64.safetensors"]
    a = VQModel.from_pretrained(out / "runs" / "lc-64" / "tokenizer").quantizer.codebook
    b = VQModel.from_pretrained(out / "runs" / "lc-64-seed1" / "tokenizer").quantizer.codebook
    assert not torch.equal(a, b)
    assert tokenizer_train_config(config, plan(config)[1], tmp_path, None).seed == 1
    [cell] = report["summary"]
    utilization = [first["utilization"], second["utilization"]]
    assert cell["utilization"] == pytest.approx(sum(utilization) / 2)
    assert cell["spread"]["utilization"]["n"] == 2 and cell["seeds"] == [0, 1]
    text = (out / "report.md").read_text()
    assert f"{100 * cell['utilization']:.1f} +- {100 * cell['spread']['utilization']['ci95']:.1f}" in text
    assert "over 2 seeds" in text and "Seeds 0-1" in report["protocol"]
    # a replicate made as a study of its own (seed=1, folder lc-64) can be linked in under its replicate name
    (out / "runs" / "lc-64-seed1").rename(tmp_path / "lc-64")
    (out / "runs" / "lc-64-seed1").symlink_to(tmp_path / "lc-64", target_is_directory=True)
    marker = tmp_path / "lc-64" / "result.json"
    result = json.loads(marker.read_text())
    result["spec"]["combination"]["name"] = "lc-64"  # what `--set seed=1` alone names it
    marker.write_text(json.dumps(result))
    again = run_study(config)
    assert again["combinations_trained"] == 0 and [r["name"] for r in again["combinations"]] == ["lc-64", "lc-64-seed1"]
