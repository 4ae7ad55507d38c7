"""Pipeline folders travel: a finished run is one, export writes one anywhere, the tokenizer's
fingerprint is checked before decoding, and sampling streams, shards, resumes and writes the ADM npz."""
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from vqgan_lc.cli import main
from vqgan_lc.generate.cache import CacheConfig, build_cache
from vqgan_lc.generate.pipeline import (PROCESS_NAME, GenerationPipeline, export_run, read_process,
                                        tokenizer_fingerprint)
from vqgan_lc.generate.sample import NPZ_NAME, PARTS_DIR, SampleConfig, sample_run
from vqgan_lc.generate.training import generator_config, train_generator

GPT = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "max_steps=2", "batch_size=4"]
DIT = ["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "max_steps=2", "batch_size=4"]
NAMES = ["cat", "dog", "fox"]


TOKENIZER = dict(resolution=16, codebook_size=32, codebook_dim=8)  # 4x4 tokens, 32 entries


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer):
    """A tiny tokenizer, 3 named classes of 4 images, token and latent caches, and finished
    gpt and dit runs (2 steps each) trained from inside another working directory."""
    root = tmp_path_factory.mktemp("portable")
    tiny_tokenizer(root / "tok", **TOKENIZER)
    rng = np.random.default_rng(0)
    for name in NAMES:
        (root / "data" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "data" / name / f"{i}.png")
    for kind in ("tokens", "latents"):
        build_cache(CacheConfig(tokenizer=str(root / "tok"), data=str(root / "data"), out=str(root / kind),
                                kind=kind, workers=0, progress=False))
    here = os.getcwd()
    os.chdir(root)
    try:  # relative paths, as a user types them
        train_generator(generator_config("gpt-tiny", "tokens", "gpt", GPT), progress=False)
        train_generator(generator_config("dit-tiny", "latents", "dit", DIT), progress=False)
    finally:
        os.chdir(here)
    return root


def _sample(run, out, **kw):
    settings = dict(per_class=2, seed=3, progress=False)
    settings.update(kw)
    return sample_run(SampleConfig(run=str(run), out=str(out), **settings))


def _fast(family):
    return {"method": "ddim", "steps": 3} if family == "dit" else {}


def _pixels(folder):
    return {str(p.relative_to(folder)): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))
            if p.name != "grid.png"}


@pytest.mark.parametrize("family", ["gpt", "dit"])
def test_a_finished_run_is_a_pipeline_folder_that_samples_the_same_after_moving(runs, tmp_path, family):
    run = runs / family
    process = read_process(run)
    assert process.family == family and process.class_names == tuple(NAMES) and process.grid == (4, 4)
    assert process.tokenizer == "tokenizer" and process.tokenizer_fingerprint == tokenizer_fingerprint(runs / "tok")
    before = _sample(run, tmp_path / "a", **_fast(family))
    # the pipeline alone, copied elsewhere: no run, no cache, no tokenizer at the recorded path
    shutil.copytree(run / "generator", tmp_path / "moved" / "generator")
    shutil.copytree(run / "tokenizer", tmp_path / "moved" / "tokenizer")
    shutil.copy(run / PROCESS_NAME, tmp_path / "moved" / PROCESS_NAME)
    after = _sample(tmp_path / "moved", tmp_path / "b", **_fast(family))
    assert before["utilization"] == after["utilization"]
    a, b = _pixels(tmp_path / "a"), _pixels(tmp_path / "b")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir()) == NAMES  # class names as folders
    assert before["class_names"] == {"0": "cat", "1": "dog", "2": "fox"}


def test_export_writes_a_pipeline_and_leaves_the_run_and_tokenizer_alone(runs, tmp_path, capsys):
    tok_bytes = (runs / "tok" / "config.json").read_bytes()
    assert main(["export", str(runs / "gpt"), "--out", str(tmp_path / "pipe")]) == 0
    assert "pipeline folder written" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "pipe").iterdir()} >= {"generator", "tokenizer", PROCESS_NAME}
    assert (runs / "tok" / "config.json").read_bytes() == tok_bytes
    pipeline = GenerationPipeline.from_pretrained(tmp_path / "pipe")
    assert pipeline.family.name == "gpt" and pipeline.process_config.num_classes == 3
    from vqgan_lc.pretrained import load_pretrained
    assert isinstance(load_pretrained(tmp_path / "pipe"), GenerationPipeline)


def test_a_run_from_before_pipelines_still_samples(runs, tmp_path):
    """Runs written by earlier versions have no process.json and no tokenizer copy: they load
    through their cache's header as before."""
    old = tmp_path / "old"
    shutil.copytree(runs / "gpt", old)
    shutil.rmtree(old / "tokenizer")
    (old / PROCESS_NAME).unlink()
    saved = json.loads((old / "train_config.json").read_text())
    for key in ("tokenizer", "tokenizer_fingerprint", "class_names", "image_size", "codebook_size"):
        saved.pop(key)
    (old / "train_config.json").write_text(json.dumps(saved))
    report = _sample(old, tmp_path / "s")
    assert report["num_samples"] == 6


def test_decoding_with_a_different_tokenizer_is_refused_before_any_work(runs, tmp_path, tiny_tokenizer):
    moved = tmp_path / "pipe"
    export_run(runs / "gpt", moved)
    tiny_tokenizer(moved / "tokenizer", seed=5, **TOKENIZER)  # same config, other weights
    with pytest.raises(ValueError, match="not the tokenizer"):
        _sample(moved, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_one_rank_and_two_gloo_ranks_draw_the_same_images(runs, tmp_path, run_ranks):
    one = _sample(runs / "dit", tmp_path / "one", batch_size=2, npz=True, method="ddpm", steps=3)
    run_ranks(_sample_on_rank, str(runs / "dit"), str(tmp_path / "two"))
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert one["utilization"] == two["utilization"]
    a, b = _pixels(tmp_path / "one"), _pixels(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) == 6 and all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(np.load(tmp_path / "one" / NPZ_NAME)["arr_0"], np.load(tmp_path / "two" / NPZ_NAME)["arr_0"])


def _sample_on_rank(rank, run, out):
    _sample(run, out, batch_size=2, npz=True, method="ddpm", steps=3, device="cpu")


def test_samples_do_not_depend_on_the_batch_they_are_drawn_in(runs, tmp_path):
    _sample(runs / "gpt", tmp_path / "b1", batch_size=1)
    _sample(runs / "gpt", tmp_path / "b4", batch_size=4)
    assert np.array_equal(np.load(tmp_path / "b1" / "tokens.npy"), np.load(tmp_path / "b4" / "tokens.npy"))


def test_an_interrupted_sampling_resumes_to_the_uninterrupted_result(runs, tmp_path, monkeypatch):
    full = _sample(runs / "dit", tmp_path / "full", batch_size=2, npz=True, method="ddpm", steps=3)
    import vqgan_lc.generate.pipeline as pipeline_module
    calls = {"n": 0}
    original = pipeline_module.GenerationPipeline.draw

    def draw_then_die(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed while drawing the second chunk
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_module.GenerationPipeline, "draw", draw_then_die)
    with pytest.raises(KeyboardInterrupt):
        _sample(runs / "dit", tmp_path / "cut", batch_size=2, npz=True, method="ddpm", steps=3)
    monkeypatch.setattr(pipeline_module.GenerationPipeline, "draw", original)
    assert len(list((tmp_path / "cut" / PARTS_DIR).glob("*.json"))) == 1  # one chunk finished
    resumed = _sample(runs / "dit", tmp_path / "cut", batch_size=2, npz=True, method="ddpm", steps=3)
    assert resumed["resumed"] and resumed["chunks_drawn_now"] == 2
    a, b = _pixels(tmp_path / "full"), _pixels(tmp_path / "cut")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(np.load(tmp_path / "full" / "tokens.npy"), np.load(tmp_path / "cut" / "tokens.npy"))
    assert full["utilization"] == resumed["utilization"] and not (tmp_path / "cut" / PARTS_DIR).exists()


def test_npz_is_the_adm_sample_batch(runs, tmp_path):
    _sample(runs / "gpt", tmp_path / "s", npz=True, png=False, batch_size=4)
    with zipfile.ZipFile(tmp_path / "s" / NPZ_NAME) as archive:
        assert sorted(archive.namelist()) == ["arr_0.npy", "arr_1.npy"]
    batch = np.load(tmp_path / "s" / NPZ_NAME)
    assert batch["arr_0"].dtype == np.uint8 and batch["arr_0"].shape == (6, 16, 16, 3)
    assert batch["arr_1"].tolist() == [0, 0, 1, 1, 2, 2]
    assert not list((tmp_path / "s").rglob("0000.png"))  # --no-png
    assert (tmp_path / "s" / "grid.png").is_file()


def test_a_folder_holding_another_sampling_is_refused_unless_overwrite(runs, tmp_path):
    _sample(runs / "gpt", tmp_path / "s")
    again = _sample(runs / "gpt", tmp_path / "s")  # the same sampling, finished: its report
    assert again["num_samples"] == 6
    with pytest.raises(ValueError, match="--overwrite"):
        _sample(runs / "gpt", tmp_path / "s", seed=4)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "old.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="other files"):
        _sample(runs / "gpt", tmp_path / "other")
    report = _sample(runs / "gpt", tmp_path / "other", overwrite=True)
    assert report["num_samples"] == 6 and not (tmp_path / "other" / "old.png").exists()


@pytest.mark.parametrize("family, settings, message", [
    ("gpt", dict(classes=(0, 0)), "listed twice"),
    ("gpt", dict(snap=False), "--no-snap only"),
    ("dit", dict(top_k=5), "token sampling settings"),
    ("dit", dict(method="heun"), "ddpm | ddim"),
])
def test_flags_that_would_do_nothing_are_refused(runs, tmp_path, family, settings, message):
    with pytest.raises(ValueError, match=message):
        _sample(runs / family, tmp_path / "s", **settings)


def test_the_effective_top_k_is_recorded(runs, tmp_path):
    report = _sample(runs / "gpt", tmp_path / "s")
    assert report["top_k"] == 3  # 10% of 32 entries


def test_a_run_resumes_from_any_working_directory(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(runs)
    config = generator_config("gpt-tiny", "tokens", str(tmp_path / "run"), GPT)  # a relative cache path
    train_generator(config, stop_at_step=1, progress=False)
    assert not (tmp_path / "run" / PROCESS_NAME).exists()  # not finished: not yet a pipeline
    monkeypatch.chdir(tmp_path)
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert os.path.isabs(saved["data"])
    from vqgan_lc.generate.training import read_generator_run
    result = train_generator(read_generator_run(tmp_path / "run"), resume=tmp_path / "run", progress=False)
    assert result.step == 2 and (tmp_path / "run" / PROCESS_NAME).is_file()


def test_info_describes_a_pipeline_folder_and_a_finished_run(runs, tmp_path, capsys):
    export_run(runs / "dit", tmp_path / "pipe")
    assert main(["info", str(tmp_path / "pipe")]) == 0
    out = capsys.readouterr().out
    assert "generator pipeline folder" in out and "0=cat, 1=dog, 2=fox" in out and "fingerprint" in out
    assert main(["info", str(runs / "dit")]) == 0
    assert "samples anywhere" in capsys.readouterr().out
