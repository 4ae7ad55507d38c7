import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vqgan_lc.files import atomic_torch_save
from vqgan_lc.tokenizer.config import get_preset
from vqgan_lc.tokenizer.losses import LossConfig
from vqgan_lc.tokenizer.model import VQModel
from vqgan_lc.tokenizer.training import TokenizerTrainConfig, get_recipe, train_tokenizer as train
from vqgan_lc.train.schedule import lr_at
from vqgan_lc.train.state import STATE_NAME, load_train_state

# A very small tokenizer: 32 px crops, f4, 64 codes.
TINY = ["autoencoder.resolution=32", "autoencoder.ch=8", "autoencoder.ch_mult=1,2,2", "autoencoder.num_res_blocks=1",
        "autoencoder.z_channels=8", "autoencoder.norm_groups=4", "quantizer.codebook_size=64", "quantizer.codebook_dim=16"]


def tiny_config(out, model_overrides=TINY, **kw) -> TokenizerTrainConfig:
    base = dict(model=get_preset("vqgan-lc-tiny").override(model_overrides), data="demo:train:48", batch_size=4,
                lr=1e-3, max_steps=6, warmup_epochs=0.5, out_dir=str(out), save_every=3, image_every=3,
                usage_every=2, log_every=1, loss=LossConfig(disc_start=3, perceptual="none"), device="cpu")
    base.update(kw)
    return TokenizerTrainConfig(**base)


def _losses(result):
    return [h["total"] for h in result.history]


def test_resume_continues_exactly(tmp_path):
    full = train(tiny_config(tmp_path / "full"), progress=False)
    first = train(tiny_config(tmp_path / "split"), stop_at_step=3, progress=False)
    assert first.step == 3 and (tmp_path / "split" / STATE_NAME).is_file()
    second = train(tiny_config(tmp_path / "split"), resume=tmp_path / "split", progress=False)
    assert second.step == 6
    # the GAN starts at step 3, so the resumed half exercises the discriminator state too
    assert _losses(first) + _losses(second) == _losses(full)
    for (k, a), (_, b) in zip(full.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_outputs_checkpoint_grid_tensorboard_and_usage(tmp_path):
    result = train(tiny_config(tmp_path / "run"), progress=False)
    run = tmp_path / "run"
    assert (run / "tokenizer" / "model.safetensors").is_file()
    assert list((run / "samples").glob("*.png"))
    assert list((run / "tensorboard").glob("events.*"))
    assert [c["step"] for c in result.usage_curve] == [2, 4, 6]
    assert all(0 < c["utilization"] <= 1 for c in result.usage_curve)
    loaded = VQModel.from_pretrained(run / "tokenizer")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).reconstruction, result.model(x).reconstruction)
    assert json.loads((run / "train_config.json").read_text())["max_steps"] == 6


def test_corrupt_images_are_skipped_and_listed(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(folder / f"ok{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "empty.jpg").write_bytes(b"")
    result = train(tiny_config(tmp_path / "run", data=str(folder), max_steps=4, batch_size=5), progress=False)
    assert result.step == 4
    listed = (tmp_path / "run" / "skipped_rank0.txt").read_text()
    assert "broken.png" in listed and "empty.jpg" in listed


def test_interrupted_save_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / STATE_NAME
    atomic_torch_save({"step": 1}, path)

    class Boom(Exception):
        pass

    def crash(*args, **kwargs):
        raise Boom()

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(Boom):
        atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert load_train_state(path)["step"] == 1


def test_nan_guard_stops_with_clear_message(tmp_path, monkeypatch):
    from vqgan_lc.tokenizer import losses

    original = losses.TokenizerLoss.generator_loss

    def poisoned(self, *args, step, **kwargs):
        loss, logs = original(self, *args, step=step, **kwargs)
        return (loss * float("nan") if step == 4 else loss), logs

    monkeypatch.setattr(losses.TokenizerLoss, "generator_loss", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 4"):
        train(tiny_config(tmp_path / "nan"), progress=False)
    assert load_train_state(tmp_path / "nan")["step"] == 3  # the last good checkpoint is kept


def test_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(tiny_config(tmp_path / "x"), resume=tmp_path / "nothing", progress=False)
    train(tiny_config(tmp_path / "a", max_steps=1), progress=False)
    other = tiny_config(tmp_path / "b", model_overrides=TINY[:-2] + ["quantizer.codebook_size=32",
                                                                    "quantizer.codebook_dim=16"])
    with pytest.raises(ValueError, match="different tokenizer configuration"):
        train(other, resume=tmp_path / "a", progress=False)


def test_schedule_warmup_then_cosine():
    lrs = [lr_at(s, base_lr=1.0, warmup_steps=4, total_steps=12) for s in range(12)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == pytest.approx(1.0) and lrs[8] == pytest.approx(0.5) and lrs[11] < 0.05
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_recipes_and_overrides():
    paper = get_recipe("paper-f16-100k")
    assert paper.batch_size * paper.recipe_gpus == 256 and paper.betas == (0.5, 0.9)
    assert paper.loss.disc_start == 50_000 and paper.warmup_epochs == 5
    cfg = TokenizerTrainConfig().override(["lr=3e-4", "loss.disc_start=100", "betas=0.9,0.99", "max_steps=none",
                                            "model.quantizer.codebook_size=4096"])
    assert cfg.lr == 3e-4 and cfg.loss.disc_start == 100 and cfg.betas == (0.9, 0.99) and cfg.max_steps is None
    assert cfg.model.quantizer.codebook_size == 4096
    with pytest.raises(ValueError, match="unknown field 'lrr'"):
        TokenizerTrainConfig().override(["lrr=1"])
    # overrides are validated before any work: a bad mode fails at once, not when the GAN starts
    with pytest.raises(ValueError, match="disc_loss"):
        TokenizerTrainConfig().override(["loss.disc_loss=wasserstein"]).validate()
    with pytest.raises(ValueError, match="betas"):
        TokenizerTrainConfig().override(["betas=0.5"])
    with pytest.raises(ValueError, match="max_steps"):
        TokenizerTrainConfig().override(["max_steps=-3"]).validate()
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("nope")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = tiny_config(out, max_steps=3, save_every=3, usage_every=3)
    result = train(cfg, progress=False)
    torch.save({"state": result.model.state_dict(), "usage": result.usage_curve}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_process_gloo_ddp_keeps_ranks_identical(tmp_path):
    ctx = mp.get_context("spawn")
    port = _free_port()
    (tmp_path / "ddp").mkdir()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, str(tmp_path / "ddp"))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=False) for r in range(2))
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    assert r0["usage"] == r1["usage"]  # all-reduced utilization is the same on both ranks
    assert (tmp_path / "ddp" / "tokenizer" / "model.safetensors").is_file()


def test_a_batch_with_no_readable_image_skips_its_step(tmp_path):
    """8 files, 1 readable, batches of 4: every epoch has one batch with nothing to train on.
    That step is skipped and counted; the run goes on and trains on the other batch."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(folder / "ok.png")
    for i in range(7):
        (folder / f"broken{i}.png").write_bytes(b"\x89PNG not really")
    result = train(tiny_config(tmp_path / "run", data=str(folder), max_steps=4, batch_size=4, num_workers=0,
                               save_every=4), progress=False)
    assert result.step == 4 and result.skipped_steps == 2
    trained = [h["step"] for h in result.history if "total" in h]
    assert len(trained) == 2 and len(result.history) == 4
    assert (tmp_path / "run" / "tokenizer" / "model.safetensors").is_file()
    assert len((tmp_path / "run" / "skipped_rank0.txt").read_text().splitlines()) == 14  # 7 files x 2 epochs


def test_a_run_with_no_readable_image_fails_instead_of_training_nothing(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(8):
        (folder / f"broken{i}.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="no item of epoch 0 could be read"):
        train(tiny_config(tmp_path / "run", data=str(folder), max_steps=6, batch_size=4, num_workers=0),
              progress=False)
    with pytest.raises(ValueError, match="no step of this run had a readable item"):  # shorter than an epoch
        train(tiny_config(tmp_path / "run2", data=str(folder), max_steps=1, batch_size=4, num_workers=0),
              progress=False)


def test_a_short_run_logs_its_first_and_last_step_with_the_default_log_every(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vqgan_lc.train.config import TrainConfig

    assert TrainConfig().log_every > 5  # the default would log nothing in 5 steps without this rule
    train(tiny_config(tmp_path / "run", max_steps=5, log_every=TrainConfig().log_every, num_workers=0,
                      save_every=5, image_every=5, usage_every=5), progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/total")] == [1, 5]


def test_quantizer_lr_scale_multiplies_the_schedule_for_the_projector_only(tmp_path):
    """The LC projector gets `quantizer_lr_scale` x the scheduled rate at every step (warm-up and
    cosine alike), the rest of the tokenizer the schedule itself; 1.0 keeps one group."""
    scaled = train(tiny_config(tmp_path / "scaled", quantizer_lr_scale=10.0, max_steps=4), progress=False)
    groups = load_train_state(tmp_path / "scaled")["optimizers"]["tokenizer"]["param_groups"]
    assert len(groups) == 2
    projector = [p for p in scaled.model.quantizer.parameters() if p.requires_grad]
    assert len(groups[1]["params"]) == len(projector) == 2  # weight and bias
    assert groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"]) and groups[0]["lr"] > 0
    train(tiny_config(tmp_path / "plain", max_steps=4), progress=False)
    assert len(load_train_state(tmp_path / "plain")["optimizers"]["tokenizer"]["param_groups"]) == 1
    with pytest.raises(ValueError, match="quantizer_lr_scale must be > 0"):
        tiny_config(tmp_path / "bad", quantizer_lr_scale=0.0).validate()


# --- the resume policy: declared on the config classes, enforced by the loop for every caller ----------

def test_a_python_resume_with_a_changed_setting_is_refused_naming_it(tmp_path):
    first = train(tiny_config(tmp_path / "run", max_steps=2, save_every=2), progress=False)
    assert first.step == 2
    with pytest.raises(ValueError, match=r"\(lr differ\(s\) from the saved run\)") as refused:
        train(tiny_config(tmp_path / "run", max_steps=3, lr=5e-4), resume=tmp_path / "run", progress=False)
    assert "\n" not in str(refused.value) and "max_steps" in str(refused.value)  # it names what may change
    assert load_train_state(tmp_path / "run")["step"] == 2  # nothing trained, nothing written
    with pytest.raises(ValueError, match="loss.disc_start"):  # nested fields are named by their dotted key
        train(tiny_config(tmp_path / "run", max_steps=3, loss=LossConfig(disc_start=1, perceptual="none")),
              resume=tmp_path / "run", progress=False)
    # a field the class declares free (run length, bookkeeping) may change
    again = train(tiny_config(tmp_path / "run", max_steps=3, log_every=5, save_every=7), resume=tmp_path / "run",
                  progress=False)
    assert again.step == 3


def test_the_fields_a_resume_may_change_are_declared_on_the_config_classes():
    from vqgan_lc.classify.training import ClassifierTrainConfig
    from vqgan_lc.generate.training import GeneratorTrainConfig
    from vqgan_lc.train.config import TrainConfig

    assert {"max_steps", "epochs", "out_dir", "device"} <= set(TrainConfig.resume_fields())
    assert "lr" not in TrainConfig.resume_fields() and "seed" not in TrainConfig.resume_fields()
    # the tokenizer adds its own bookkeeping and the codebook path (its entries are in the checkpoint)
    assert {"usage_every", "codebook"} <= set(TokenizerTrainConfig.resume_fields())
    assert "usage_every" not in GeneratorTrainConfig.resume_fields()
    assert ClassifierTrainConfig.resume_fields() == TrainConfig.resume_fields()
    saved = tiny_config("a").to_dict()
    assert tiny_config("b", max_steps=9, codebook=None).resume_conflicts(saved) == []
    assert tiny_config("b", lr=0.5, seed=3).resume_conflicts(saved) == ["lr", "seed"]


# --- the EMA: warmed up, reported, and never silently the initial weights --------------------------

def test_ema_warm_up_moves_a_short_run_off_its_initial_weights(tmp_path, caplog):
    from vqgan_lc.train.loop import ema_decay_at, ema_initial_share

    assert ema_decay_at(0.9999, 0) == pytest.approx(0.1) and ema_decay_at(0.9999, 90) == pytest.approx(91 / 100)
    assert ema_decay_at(0.9, 10 ** 6) == 0.9  # the configured decay caps the warm-up
    assert ema_initial_share(0.9999, 1) == pytest.approx(0.1) and ema_initial_share(0.9999, 60) < 1e-6

    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in train(tiny_config(tmp_path / "init", max_steps=1), stop_at_step=0,
                                               progress=False).model.state_dict().items()}
    result = train(tiny_config(tmp_path / "ema", max_steps=5, ema_decay=0.9999), progress=False)
    raw = load_train_state(tmp_path / "ema")["model"]
    moved = [k for k, v in initial.items() if v.is_floating_point() and not torch.equal(v, raw[k])]
    assert moved
    for key in moved:  # the EMA went most of the way from the initial to the trained weights
        ema_step = (result.model.state_dict()[key] - initial[key]).norm()
        raw_step = (raw[key] - initial[key]).norm()
        assert ema_step > 0.5 * raw_step, key
    assert result.weights_line().startswith("tokenizer = EMA weights (decay 0.9999 over 5 steps")

    with caplog.at_level("WARNING", logger="vqgan_lc.train"):
        train(tiny_config(tmp_path / "one", max_steps=1, ema_decay=0.9999), progress=False)
    assert "the EMA has seen only 1 steps" in caplog.text and "initial" in caplog.text


# --- Ctrl-C: a checkpoint of the step that finished, and an exact resume from it ----------------------

def _interrupt_at(monkeypatch, at_step):
    """Send this process SIGINT while step `at_step` (counted from 1) runs, as a terminal's Ctrl-C would."""
    import signal

    from vqgan_lc.tokenizer.training import TokenizerTask

    original = TokenizerTask.train_step

    def train_step(self, ctx, batches):
        if ctx.step + 1 == at_step:  # ctx.step counts the steps finished before this one
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, ctx, batches)

    monkeypatch.setattr(TokenizerTask, "train_step", train_step)


def test_ctrl_c_saves_the_finished_step_and_resumes_exactly(tmp_path, monkeypatch):
    from vqgan_lc.train.loop import TrainingInterrupted

    full = train(tiny_config(tmp_path / "full", save_every=100), progress=False)
    _interrupt_at(monkeypatch, 4)
    with pytest.raises(TrainingInterrupted, match="holds step 4 of 6") as stopped:
        train(tiny_config(tmp_path / "split", save_every=100), progress=False)
    assert isinstance(stopped.value, KeyboardInterrupt)  # what callers that catch Ctrl-C expect
    assert load_train_state(tmp_path / "split")["step"] == 4  # no periodic save: the interrupt wrote it
    assert not list((tmp_path / "split").glob(".*.tmp"))  # written atomically: no temporary file left
    monkeypatch.undo()
    second = train(tiny_config(tmp_path / "split", save_every=100), resume=tmp_path / "split", progress=False)
    assert second.step == 6 and _losses(second) == _losses(full)[4:]
    for (k, a), (_, b) in zip(full.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), k
    import signal
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_ctrl_c_on_the_command_line_names_the_step_of_the_checkpoint(tmp_path, monkeypatch, capsys):
    from vqgan_lc.cli import main

    _interrupt_at(monkeypatch, 2)
    run = tmp_path / "run"
    args = ["train", "cpu-tiny-lc", "--data", "demo:train:16", "--out", str(run), "--set", *[f"model.{o}" for o in TINY],
            "batch_size=4", "loss.perceptual=none", "device=cpu", "max_steps=4", "save_every=100", "num_workers=0"]
    assert main(args) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"the checkpoint in {run} holds step 2 of 4" in err and f"--resume {run}" in err
    assert load_train_state(run)["step"] == 2
