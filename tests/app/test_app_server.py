"""The app's JSON API on a tiny tokenizer, codebook and GPT (no browser): what each view shows."""
import io
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from vqgan_lc.app import AppState, serve
from vqgan_lc.cli import main
from vqgan_lc.codebook.exemplars import exemplars_path
from vqgan_lc.data import EvalTransform, build_dataset, load_image, to_tensor
from vqgan_lc.tokenizer.model import VQModel


@pytest.fixture(scope="module")
def app(tiny_world):
    state = AppState(str(tiny_world["tokenizer"]), data=str(tiny_world["data"]), generator=str(tiny_world["generator"]))
    server = serve(state, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    deadline = time.time() + 60
    while state.usage.state == "running" and time.time() < deadline:
        time.sleep(0.05)
    yield server
    server.shutdown()
    server.server_close()


def request(server, path, body=None):
    """(status, parsed JSON or raw bytes)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(server.url + path.lstrip("/"), data=body,
                                                           method="POST" if body is not None else "GET")) as r:
            raw, status, kind = r.read(), r.status, r.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        raw, status, kind = err.read(), err.code, err.headers["Content-Type"]
    return status, json.loads(raw) if kind == "application/json" else raw


def run_job(server, path, body=b""):
    status, started = request(server, path, body)
    assert status == 200, started
    for _ in range(600):
        _, job = request(server, f"/api/job/{started['job']}")
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_page_and_info_say_what_is_loaded(app, tiny_world):
    status, page = request(app, "/")
    assert status == 200 and b'id="tokenmap"' in page and b"/static/app.js" in page
    _, info = request(app, "/api/info")
    assert info["codebook_size"] == 8 and info["grid"] == [8, 8] and info["per_class"]
    assert info["codebook"] == str(tiny_world["codebook"])  # found through the run's train_config.json
    assert info["exemplars"] == {"available": True, "note": "", "per_entry": 3}
    assert info["generator"]["family"] == "gpt" and info["data"]["count"] == 8
    assert app.server_address[0] == "127.0.0.1"


def test_usage_counts_every_token_of_the_evaluation_set(app, tiny_world):
    model = VQModel.from_pretrained(tiny_world["tokenizer"])
    images = torch.stack([item["image"] for item in build_dataset(str(tiny_world["data"]), 32, train=False)])
    with torch.no_grad():
        expected = np.bincount(model.encode(images).indices.numpy().ravel(), minlength=8)
    _, usage = request(app, "/api/usage")
    assert usage["state"] == "done" and usage["num_tokens"] == 8 * 64 == expected.sum()
    assert usage["used"] == int((expected > 0).sum())
    assert sum(b["count"] for b in usage["histogram"]) == 8 and usage["histogram"][0]["count"] == (expected == 0).sum()
    _, entry = request(app, "/api/entry/5")
    assert entry["usage"]["count"] == expected[5] and entry["class"] == 1  # per-class: entries 4..7 are class1's
    _, most = request(app, "/api/entries?order=most")
    assert [e["count"] for e in most["entries"]] == sorted(expected.tolist(), reverse=True)
    _, rest = request(app, "/api/entries?order=most&offset=3")  # the page's "more" button
    assert rest["total"] == 8 and rest["entries"] == most["entries"][3:]
    _, never = request(app, "/api/entries?order=never")
    assert {e["entry"] for e in never["entries"]} == set(np.flatnonzero(expected == 0).tolist())
    _, of_class = request(app, "/api/entries?order=class&class=0")
    assert {e["entry"] for e in of_class["entries"]} == {0, 1, 2, 3}


def test_tokenize_an_upload_and_a_picked_image(app, tiny_world):
    path = tiny_world["data"] / "class1" / "2.png"
    job = run_job(app, "/api/tokenize", path.read_bytes())
    assert job["state"] == "done", job
    result = job["result"]
    model = VQModel.from_pretrained(tiny_world["tokenizer"])
    with torch.no_grad():
        ids = model.encode(EvalTransform(32)(load_image(path))[None]).indices[0]
    assert result["grid"] == [8, 8] and result["ids"] == ids.ravel().tolist()
    assert result["classes"] == [int(i >= 4) for i in result["ids"]]
    assert result["original"].startswith("data:image/png;base64,") and result["reconstruction"] != result["original"]
    picked = run_job(app, "/api/tokenize?data=6")["result"]  # sorted listing: class1/2.png is the 7th image
    assert picked["ids"] == result["ids"]


def test_an_entry_shows_its_exemplar_patches(app, tiny_world):
    _, entry = request(app, "/api/entry/4")
    assert len(entry["exemplars"]) >= 1 and entry["class_name"] == "class1"
    first = entry["exemplars"][0]
    assert first["label"] == "class1" and first["source"].endswith(".png")
    status, png = request(app, first["url"])
    assert status == 200 and png[:4] == b"\x89PNG"
    patch = Image.open(io.BytesIO(png))
    row, col = divmod(first["cell"], 2)  # pool 2 over 32 px: 16 px cells, shown 4x larger
    expected = EvalTransform(32)(load_image(first["source"]))[:, 16 * row:16 * row + 16, 16 * col:16 * col + 16]
    assert patch.size == (64, 64)
    assert torch.equal(to_tensor(patch.resize((16, 16), Image.NEAREST)), expected)


def test_generate_returns_samples_token_maps_and_unseen_entries(app):
    job = run_job(app, "/api/generate", json.dumps({"class_id": 1, "cfg_scale": 2, "seed": 3, "count": 2}).encode())
    assert job["state"] == "done", job
    result = job["result"]
    assert len(result["images"]) == 2 and len(result["ids"][0]) == 64 and result["grid"] == [8, 8]
    _, usage = request(app, "/api/entries?order=never")
    never = {e["entry"] for e in usage["entries"]}
    used = {i for row in result["ids"] for i in row}
    assert set(result["unseen"]) == used & never
    again = run_job(app, "/api/generate", json.dumps({"class_id": 1, "cfg_scale": 2, "seed": 3, "count": 2}).encode())
    assert again["result"]["ids"] == result["ids"]  # the seed decides the samples


@pytest.mark.parametrize("path, body, message", [
    ("/api/entry/99", None, "entry 99 does not exist: the codebook has entries 0..7"),
    ("/api/entry/abc", None, "entry id must be a whole number, got 'abc'"),
    ("/api/entries?order=class&class=5", None, "choose a class 0..1"),
    ("/api/patch/2/9.png", None, "exemplars, not 10"),
    ("/api/nothing", None, "no page /api/nothing"),
])
def test_errors_are_one_readable_line(app, path, body, message):
    status, reply = request(app, path, body)
    assert status in (400, 404) and message in reply["error"] and "\n" not in reply["error"]


def test_job_errors_are_one_line_and_bugs_show_no_traceback(app, monkeypatch):
    job = run_job(app, "/api/tokenize", b"not an image at all")
    assert job["state"] == "error" and job["error"].startswith("the uploaded file is not a readable image")
    assert "\n" not in job["error"]
    job = run_job(app, "/api/generate", json.dumps({"class_id": 7}).encode())
    assert job["error"] == "class 7 does not exist: the generator knows classes 0..1"
    status, reply = request(app, "/api/generate", json.dumps({"cfg_scale": "lots"}).encode())
    assert status == 400 and reply["error"] == "cfg scale must be a number, got 'lots'"

    def broken(image):
        raise KeyError("internal detail")

    monkeypatch.setattr(app.state, "tokenize", broken)
    job = run_job(app, "/api/tokenize?data=0")
    assert job["error"] == "internal error (KeyError); the server's log has the details"


def test_the_app_refuses_to_start_in_one_line(tiny_world, tmp_path, capsys):
    assert main(["app", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip().startswith(f"vqgan-lc app: error: tokenizer {tmp_path / 'missing'} not found")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert main(["app", str(tmp_path / "broken")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vqgan-lc app: error: cannot read tokenizer {tmp_path / 'broken'}") and "\n" not in err
    assert main(["app", str(tiny_world["tokenizer"]), "--generator", str(tmp_path / "nogen")]) == 2
    assert capsys.readouterr().err.strip() == (f"vqgan-lc app: error: generator {tmp_path / 'nogen'} not found; pass a "
                                               "run folder written by `vqgan-lc train-gen`")
    assert main(["app", str(tiny_world["tokenizer"]), "--generator", str(tiny_world["root"] / "data")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqgan-lc app: error: cannot read generator") and "\n" not in err


def test_a_codebook_without_exemplars_still_works_and_says_so(tiny_world, tmp_path):
    import shutil

    codebook = tmp_path / "plain.safetensors"
    shutil.copy(tiny_world["codebook"], codebook)
    assert not exemplars_path(codebook).exists()
    state = AppState(str(tiny_world["tokenizer"]), codebook=str(codebook))
    info = state.info()
    assert not info["exemplars"]["available"] and "no exemplar file" in info["exemplars"]["note"]
    entry = state.entry(2)
    assert entry["exemplars"] == [] and "codebook build" in entry["exemplar_note"] and entry["usage"] is None
    with pytest.raises(ValueError, match="no exemplar file"):
        state.patch_png(2, 0)
