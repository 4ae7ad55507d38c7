"""One weights lookup for every pretrained network, and opt-in, hash-checked downloads.

Downloads are served from `file://` URLs (the URL table is monkeypatched): no test touches the
network, and a test that must not download at all replaces `urlopen` with one that fails."""
import hashlib
import os
import urllib.request

import pytest
import torch

from vqgan_lc import files
from vqgan_lc.backbones import inception
from vqgan_lc.backbones.perceptual import LPIPS_ENV, lpips_linear_path, lpips_vgg_available
from vqgan_lc.backbones.vgg import VGG16_ENV, VGG16_FILENAME, VGG16Features, load_vgg16_features, vgg16_weights_path
from vqgan_lc.files import (
    DOWNLOAD_ENV,
    LPIPS_VGG_CACHE_NAME,
    WeightsNotFoundError,
    WeightsSource,
    fetch_weights,
    find_weights,
    require_weights,
)


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """An empty torch hub cache and none of the weight variables or the download switch set."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for name in (VGG16_ENV, LPIPS_ENV, inception.INCEPTION_ENV, DOWNLOAD_ENV):
        monkeypatch.delenv(name, raising=False)
    return files.torch_hub_checkpoints()


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("nothing may be fetched without the download switch")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _serve(tmp_path, monkeypatch, filename: str, payload: bytes, digest: str | None = None):
    """Publish `payload` at a file:// URL as the download source of `filename`."""
    source = tmp_path / "server" / filename
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(payload)
    sha = digest if digest is not None else hashlib.sha256(payload).hexdigest()
    monkeypatch.setitem(files.DOWNLOADS, filename, WeightsSource(source.as_uri(), sha, len(payload)))
    return source


# --- lookup ----------------------------------------------------------------------------------

def test_lookup_order_search_folders_packages_then_hub_cache(clean_env, tmp_path, monkeypatch):
    folder, pkg = tmp_path / "folder", tmp_path / "site" / "fakeweights"
    folder.mkdir()
    (pkg / "w").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    clean_env.mkdir(parents=True)
    (clean_env / "net.pth").write_bytes(b"hub")
    where = dict(search=(folder,), packages=(("fakeweights", "w/net.pth"), ("not_installed_pkg", "x.pth")))
    assert find_weights("net.pth", **where) == clean_env / "net.pth"
    (pkg / "w" / "net.pth").write_bytes(b"package")
    assert find_weights("net.pth", **where) == pkg / "w" / "net.pth"
    (folder / "net.pth").write_bytes(b"folder")
    assert find_weights("net.pth", **where) == folder / "net.pth"
    assert find_weights("net.pth", hub_cache=False) is None


def test_explicit_path_and_env_are_the_only_place_looked_at(clean_env, tmp_path, monkeypatch):
    clean_env.mkdir(parents=True)
    (clean_env / "net.pth").write_bytes(b"hub")
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"mine")
    assert find_weights("net.pth", path=mine, env="NET_ENV") == mine
    assert find_weights("net.pth", path=tmp_path / "missing.pth") is None
    monkeypatch.setenv("NET_ENV", str(tmp_path / "missing.pth"))
    # a variable the user set is never silently bypassed for the cached copy
    assert find_weights("net.pth", env="NET_ENV") is None
    with pytest.raises(WeightsNotFoundError, match=r"not found at .*missing.pth \(from \$NET_ENV\)"):
        require_weights("net.pth", "net weights", env="NET_ENV")
    with pytest.raises(FileNotFoundError, match="net weights not found at .*nope"):
        require_weights("net.pth", "net weights", path=tmp_path / "nope")


def test_folder_valued_weights(tmp_path):
    model_dir = tmp_path / "hf-model"
    model_dir.mkdir()
    assert find_weights(None, path=model_dir) is None  # a file is expected by default
    assert find_weights(None, path=model_dir, folders=True) == model_dir


def test_missing_weights_error_is_one_line_and_catchable_both_ways(clean_env):
    with pytest.raises(RuntimeError) as err:  # what the per-network lookups raised before
        vgg16_weights_path()
    assert isinstance(err.value, FileNotFoundError)
    message = str(err.value)
    assert "\n" not in message
    for part in ("VGG16 weights not found", VGG16_FILENAME, str(clean_env), "$VQGAN_LC_VGG16",
                 "vgg_weights=PATH", "--download", "VQGAN_LC_DOWNLOAD=1"):
        assert part in message, part
    # a file without a download source is not offered --download
    with pytest.raises(WeightsNotFoundError, match=r"^thing weights not found: put x.bin in .*, or pass a path$"):
        require_weights("x.bin", "thing weights")


# --- downloads -------------------------------------------------------------------------------

def test_without_the_switch_nothing_is_fetched(clean_env, tmp_path, monkeypatch):
    _serve(tmp_path, monkeypatch, VGG16_FILENAME, b"weights")
    _no_network(monkeypatch)
    with pytest.raises(RuntimeError, match=r"VGG16 weights not found: put torchvision's vgg16-397923af.pth in"):
        vgg16_weights_path()
    with pytest.raises(RuntimeError, match=r"FID Inception weights not found: .*\$VQGAN_LC_INCEPTION"):
        inception.load_fid_inception()
    monkeypatch.setenv(DOWNLOAD_ENV, "0")
    assert not inception.available() and not lpips_vgg_available(lpips_weights=None)
    assert not clean_env.exists() or not any(clean_env.iterdir())


def test_download_with_the_right_digest_lands_in_the_hub_cache(clean_env, tmp_path, monkeypatch):
    torch.manual_seed(0)
    vgg = VGG16Features()
    payload_file = tmp_path / "vgg.pth"
    torch.save(vgg.state_dict(), payload_file)
    _serve(tmp_path, monkeypatch, VGG16_FILENAME, payload_file.read_bytes())
    monkeypatch.setenv(DOWNLOAD_ENV, "1")
    loaded = load_vgg16_features()  # fetched on first use, through the environment switch
    assert (clean_env / VGG16_FILENAME).read_bytes() == payload_file.read_bytes()
    assert torch.equal(loaded.features[0].weight, vgg.features[0].weight)
    assert sorted(os.listdir(clean_env)) == [VGG16_FILENAME]  # no temporary file left beside it
    # the second lookup finds the cached copy and does not download again
    _no_network(monkeypatch)
    assert vgg16_weights_path() == clean_env / VGG16_FILENAME


def test_download_argument_enables_it_without_the_environment(clean_env, tmp_path, monkeypatch):
    _serve(tmp_path, monkeypatch, inception.INCEPTION_FILENAME, b"inception bytes")
    assert inception.available(download=True) and not inception.available()
    assert require_weights(inception.INCEPTION_FILENAME, "FID Inception weights", env=inception.INCEPTION_ENV,
                           download=True) == clean_env / inception.INCEPTION_FILENAME


def test_a_wrong_digest_is_refused_and_leaves_no_file(clean_env, tmp_path, monkeypatch):
    _serve(tmp_path, monkeypatch, VGG16_FILENAME, b"tampered weights", digest="397923af" + "0" * 56)
    with pytest.raises(ValueError, match=r"sha256 .* expected 397923af00000000.*nothing was kept") as err:
        vgg16_weights_path(download=True)
    assert "\n" not in str(err.value)
    assert list(clean_env.iterdir()) == []  # neither the file nor its temporary sibling
    with pytest.raises(RuntimeError, match="not found"):  # and the next offline lookup still fails
        vgg16_weights_path()


def test_a_known_prefix_is_checked_when_the_full_digest_is_not_recorded(clean_env, tmp_path, monkeypatch):
    payload = b"prefix-only entry"
    digest = hashlib.sha256(payload).hexdigest()
    _serve(tmp_path, monkeypatch, "net-x.pth", payload, digest=digest[:8])
    assert fetch_weights("net-x.pth") == clean_env / "net-x.pth"
    _serve(tmp_path, monkeypatch, "net-y.pth", payload, digest="ffffffff")
    with pytest.raises(ValueError, match="nothing was kept"):
        fetch_weights("net-y.pth")
    with pytest.raises(ValueError, match="no download source"):
        fetch_weights("unknown.pth")


def test_an_unreachable_source_is_one_line_and_leaves_nothing(clean_env, tmp_path, monkeypatch):
    monkeypatch.setitem(files.DOWNLOADS, VGG16_FILENAME,
                        WeightsSource((tmp_path / "no-server" / VGG16_FILENAME).as_uri(), "397923af"))
    with pytest.raises(OSError, match=r"could not download vgg16-397923af.pth from file://.*by hand") as err:
        vgg16_weights_path(download=True)
    assert "\n" not in str(err.value)
    assert not any(clean_env.iterdir())


def test_lpips_linear_layers_download_under_their_own_cache_name(clean_env, tmp_path, monkeypatch):
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    payload = tmp_path / "lins.pth"
    torch.save(lins, payload)
    _serve(tmp_path, monkeypatch, LPIPS_VGG_CACHE_NAME, payload.read_bytes())
    monkeypatch.setattr(files, "package_file", lambda package, relative: None)  # as if no lpips/torchmetrics
    real_urlopen = urllib.request.urlopen
    _no_network(monkeypatch)
    with pytest.raises(RuntimeError, match=r"pip install torchmetrics \(its wheel ships the file\), set \$VQGAN_LC_LPIPS"):
        lpips_linear_path()
    monkeypatch.setattr(urllib.request, "urlopen", real_urlopen)
    assert lpips_linear_path(download=True) == clean_env / LPIPS_VGG_CACHE_NAME
    assert lpips_vgg_available(download=True) and not lpips_vgg_available(download=False)


def test_the_shipped_table_pins_the_official_file_names_to_their_digests():
    for name, source in files.DOWNLOADS.items():
        assert len(source.sha256) == 64 and int(source.sha256, 16) >= 0
        assert source.url.startswith("https://")
    # torchvision and pytorch-fid put the digest's first 8 hex digits in the file name
    assert files.DOWNLOADS[VGG16_FILENAME].sha256.startswith("397923af")
    assert files.DOWNLOADS[inception.INCEPTION_FILENAME].sha256.startswith("6726825d")


# --- the switch on the command line and for CLIP -------------------------------------------

@pytest.mark.parametrize("argv", [
    ["eval", "ckpt", "--out", "o", "--data", "d", "--download"],
    ["eval-gen", "s", "--reference", "r", "--out", "o", "--download"],
    ["train", "recipe", "--download"],
    ["codebook", "build", "data", "--size", "8", "--out", "c.safetensors", "--backbone", "clip-vit-l14", "--download"],
])
def test_cli_download_flag_sets_the_switch_for_the_process(monkeypatch, argv):
    from vqgan_lc.cli import build_parser

    monkeypatch.setenv(DOWNLOAD_ENV, "0")
    args = build_parser().parse_args(argv)
    assert args.download is True and os.environ[DOWNLOAD_ENV] == "1"
    monkeypatch.setenv(DOWNLOAD_ENV, "0")
    args = build_parser().parse_args(argv[:-1])
    assert args.download is False and os.environ[DOWNLOAD_ENV] == "0"


def test_clip_asks_the_hub_only_with_the_switch(monkeypatch):
    transformers = pytest.importorskip("transformers")
    from vqgan_lc.backbones.clip import build_clip_vit

    calls = []

    def from_pretrained(name, **kwargs):
        calls.append((name, kwargs.get("local_files_only")))
        raise OSError("not in the cache")

    monkeypatch.setattr(transformers.CLIPVisionModelWithProjection, "from_pretrained", from_pretrained)
    monkeypatch.delenv("VQGAN_LC_CLIP_VIT_L14", raising=False)
    monkeypatch.delenv(DOWNLOAD_ENV, raising=False)
    with pytest.raises(RuntimeError, match=r"weights not found: .*--download") as err:
        build_clip_vit("clip-vit-l14")
    assert "\n" not in str(err.value)
    monkeypatch.setenv(DOWNLOAD_ENV, "1")
    with pytest.raises(RuntimeError, match="could not fetch openai/clip-vit-large-patch14 from the Hugging Face hub"):
        build_clip_vit("clip-vit-l14")
    monkeypatch.delenv(DOWNLOAD_ENV)
    with pytest.raises(RuntimeError, match="could not fetch"):  # the argument alone enables it too
        build_clip_vit("clip-vit-l14", download=True)
    assert [only for _, only in calls] == [True, False, False]
    assert {name for name, _ in calls} == {"openai/clip-vit-large-patch14"}
