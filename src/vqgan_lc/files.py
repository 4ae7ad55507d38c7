"""Files written atomically, and pretrained weight files found the same way for every network.

Atomic: every file goes to a temporary sibling, is flushed to disk (fsync), and replaces
the target with `os.replace`, which POSIX makes atomic: a reader, or a run resumed after a
crash, sees the old file or the new one, never half of one. The temporary file is removed
when writing fails (disk full, interrupt), so nothing half-written is left behind.
"""
from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

logger = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and moved onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600 files: give the result the mode any other new file would get
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException as err:
        tmp_path.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)  # a failed write() names no file: name the one being written
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call `write(file)` on a temporary file opened with `mode`, then move it onto `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> None:
    text = json.dumps(data, indent=indent, allow_nan=False, default=str)
    atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike, what: str, fix: str) -> Any:
    """A JSON file's content; a damaged one (cut short by a full disk or a copy, edited by hand)
    is one line naming the file, what it held and `fix` (what to do), not the parser's message."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is damaged ({err.msg} at line {err.lineno}, column {err.colno}): {what} cannot be "
                         f"read; {fix}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is damaged (not text): {what} cannot be read; {fix}") from None


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    # Unbuffered: a write the disk refuses outright reaches the caller as the OSError it is (the
    # zip writer hands over whole records, so this costs no speed: 280 MB in 0.48 s vs 0.63 s).
    # A short write (the disk filled up within a record) torch reports only as "[enforce fail
    # ...] unexpected pos"; that is turned into the OSError it stands for, naming the file.
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb", buffering=0) as f:
                torch.save(obj, f)
        except RuntimeError as err:
            if "unexpected pos" not in str(err):
                raise
            disk = os.statvfs(tmp.parent)
            free = (disk.f_bfree if os.geteuid() == 0 else disk.f_bavail) * disk.f_frsize
            code = errno.ENOSPC if free < 1 << 20 else errno.EIO
            raise OSError(code, f"{os.strerror(code)} (short write)", str(path)) from None


def atomic_save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def atomic_save_npy(path: str | os.PathLike, array) -> None:
    import numpy as np

    atomic_write(path, lambda f: np.save(f, array))


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create `path` if needed and make sure files can be written there, before any work starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} exists and is not a folder; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"cannot write to {what} {path}: {err.strerror or err}; choose another --out") from None
    return path


# The project's cache root: codebook features (`codebook build`) and reference classifiers
# (`eval-gen`) are kept below it unless a command is given its own folder.
CACHE_ENV = "VQGAN_LC_CACHE"
DEFAULT_CACHE = os.path.join("~", ".cache", "vqgan-lc")


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """`override` when given, else $VQGAN_LC_CACHE, else ~/.cache/vqgan-lc (user-expanded)."""
    return Path(os.path.expanduser(override or os.environ.get(CACHE_ENV, DEFAULT_CACHE)))


def refuse_output_inside(out: str | os.PathLike, source: str | os.PathLike, what: str = "output folder",
                         source_what: str = "input folder") -> None:
    """Refuse an output folder that is an input folder or lies inside it: a command never writes
    into its inputs (a cache written into the dataset it encodes would become part of it)."""
    if not os.path.isdir(source):
        return
    target, inputs = Path(out).resolve(), Path(source).resolve()
    if target == inputs or inputs in target.parents:
        where = "is" if target == inputs else "is inside"
        raise ValueError(f"{what} {out} {where} the {source_what} {source}; choose an --out outside it "
                         "(outputs are never written into the inputs)")


# --- pretrained weight files ------------------------------------------------------------------
#
# Every pretrained network (VGG16 for LPIPS, the LPIPS linear layers, the FID Inception, CLIP
# ViT and CLIP RN50) finds its weights through `find_weights` / `require_weights`, so the order
# of places, the meaning of the environment variables and the wording of the "not found" line
# are the same for all of them. Nothing is downloaded unless asked for (`--download`,
# VQGAN_LC_DOWNLOAD=1 or download=True): the default path stays offline.

DOWNLOAD_ENV = "VQGAN_LC_DOWNLOAD"
DOWNLOAD_HINT = f"run with --download (or {DOWNLOAD_ENV}=1)"
LPIPS_VGG_CACHE_NAME = "lpips-v0.1-vgg-a78928a0.pth"  # LPIPS's `vgg.pth` under a name that cannot clash in the cache


class WeightsNotFoundError(FileNotFoundError, RuntimeError):
    """A pretrained weights file is not on disk (and was not downloaded).

    A FileNotFoundError because that is what it is; also a RuntimeError because the five
    lookups raised that before they shared this helper, and callers catch it."""


@dataclass(frozen=True)
class WeightsSource:
    url: str
    sha256: str  # the full hex digest, or a prefix of it where only the prefix is known
    size: int | None = None  # bytes, for the progress bar (a short read fails the digest check)


# Weight files `--download` may fetch, by their file name in torch.hub's checkpoint folder.
# torchvision and pytorch-fid name their files after the first 8 hex digits of the sha256
# (397923af, 6726825d), so those prefixes are known from the names alone. The full digests below
# agree with several independent public records of the official files (and, for LPIPS's
# vgg.pth, with the copy torchmetrics 1.9 ships). `fetch_weights` accepts a prefix as well: an
# entry added with only a prefix is checked on it, and its full digest should be filled in from
# the official file when that is first downloaded.
DOWNLOADS: dict[str, WeightsSource] = {
    "vgg16-397923af.pth": WeightsSource(
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0", 553_433_881),
    "pt_inception-2015-12-05-6726825d.pth": WeightsSource(
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2", 95_628_359),
    LPIPS_VGG_CACHE_NAME: WeightsSource(
        "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/vgg.pth",
        "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868", 7_289),
}


def torch_hub_checkpoints() -> Path:
    """torch.hub's checkpoint cache (where torchvision and pytorch-fid put downloaded weights)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def downloads_enabled(download: bool | None = None) -> bool:
    """`download` when given, else whether $VQGAN_LC_DOWNLOAD is set to a true value."""
    if download is not None:
        return bool(download)
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def package_file(package: str, relative: str) -> Path | None:
    """`relative` inside an installed package, found without importing the package (importing
    lpips pulls in torchvision, which breaks beside the CPU torch wheel). None if absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))).joinpath(*relative.split("/"))
    return candidate if candidate.is_file() else None


def find_weights(filename: str | None, *, path: str | os.PathLike | None = None, env: str | None = None,
                 search: tuple[str | os.PathLike, ...] = (), packages: tuple[tuple[str, str], ...] = (),
                 hub_cache: bool = True, folders: bool = False) -> Path | None:
    """Locate pretrained weights; None if absent.

    `path`, else $`env` when set, is the only place looked at (a setting the user made is never
    silently bypassed). Otherwise, in order: `filename` in each folder of `search`, each
    (package, relative path) of `packages` inside an installed package, and `filename` in
    torch.hub's checkpoint cache (`hub_cache`). `folders=True` also accepts a folder (a Hugging
    Face model directory) where a file is expected."""
    exists = Path.exists if folders else Path.is_file
    explicit = path or (os.environ.get(env) if env else None)
    if explicit:
        return Path(explicit) if exists(Path(explicit)) else None
    candidates = [Path(folder) / filename for folder in search] if filename else []
    candidates += [found for found in (package_file(p, r) for p, r in packages) if found is not None]
    if hub_cache and filename:
        candidates.append(torch_hub_checkpoints() / filename)
    return next((c for c in candidates if exists(c)), None)


def _either(ways: list[str]) -> str:
    return ways[0] if len(ways) == 1 else ", ".join(ways[:-1]) + f", or {ways[-1]}"


def require_weights(filename: str | None, what: str, *, path: str | os.PathLike | None = None, env: str | None = None,
                    search: tuple[str | os.PathLike, ...] = (), packages: tuple[tuple[str, str], ...] = (),
                    hub_cache: bool = True, folders: bool = False, option: str | None = "a path",
                    place: str | None = None, download: bool | None = None) -> Path:
    """`find_weights`; else the file fetched into torch.hub's cache when downloads are enabled
    and `filename` is in `DOWNLOADS`; else one line saying how to supply it (`place` overrides
    the default "put FILE in the hub cache" advice, `option` names the argument that takes a path)."""
    found = find_weights(filename, path=path, env=env, search=search, packages=packages, hub_cache=hub_cache,
                         folders=folders)
    if found is not None:
        return found
    if path:
        raise WeightsNotFoundError(f"{what} not found at {path}")
    if env and os.environ.get(env):
        raise WeightsNotFoundError(f"{what} not found at {os.environ[env]} (from ${env}); fix or unset ${env}")
    downloadable = filename in DOWNLOADS
    if downloadable and downloads_enabled(download):
        return fetch_weights(filename)
    ways = [place or (f"put {filename} in {torch_hub_checkpoints()}" if hub_cache and filename else "")]
    ways += [f"set ${env}" if env else "", f"pass {option}" if option else "", DOWNLOAD_HINT if downloadable else ""]
    raise WeightsNotFoundError(f"{what} not found: {_either([w for w in ways if w])}")


def _sha256_matches(digest: str, expected: str) -> bool:
    expected = expected.strip().lower()
    return len(expected) >= 8 and digest.startswith(expected)


def fetch_weights(filename: str, *, folder: str | os.PathLike | None = None) -> Path:
    """Download `DOWNLOADS[filename]` into `folder` (torch.hub's checkpoint cache by default).

    The bytes go to a temporary file beside the target while their sha256 is computed; only a
    file whose digest matches is moved into place (atomically), so a wrong or truncated
    download leaves nothing behind and the next lookup does not mistake it for the real file."""
    import hashlib
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    if filename not in DOWNLOADS:
        raise ValueError(f"no download source for {filename}; known: {', '.join(sorted(DOWNLOADS))}")
    source = DOWNLOADS[filename]
    target = Path(folder) if folder is not None else torch_hub_checkpoints()
    target = target / filename
    logger.info("downloading %s -> %s", source.url, target)
    digest = hashlib.sha256()
    received = 0
    try:
        with atomic_path(target) as tmp, urllib.request.urlopen(source.url, timeout=60) as response, \
                open(tmp, "wb") as out, tqdm(total=source.size, unit="B", unit_scale=True, desc=filename,
                                             disable=None, leave=False) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            out.flush()
            if not _sha256_matches(digest.hexdigest(), source.sha256):
                raise ValueError(f"download of {filename} from {source.url} has sha256 {digest.hexdigest()[:16]}..., "
                                 f"expected {source.sha256[:16]}... ({received} bytes); nothing was kept, try again "
                                 f"or place the official file in {target.parent}")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err.strerror or err
        raise OSError(f"could not download {filename} from {source.url} ({reason}); place the file in "
                      f"{target.parent} by hand") from None
    return target



class DirectoryLock:
    """An exclusive lock on a run folder, held while a process writes into it.

    A second process that tries to write the same run gets one line naming the holder instead
    of interleaving its files with the first one's. The lock is the kernel's (flock), so it is
    released when the holder exits, even after kill -9.
    """

    NAME = ".lock"

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / self.NAME
        self._file = None

    def acquire(self) -> "DirectoryLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RuntimeError(f"{self.path.parent} is in use by another process ({holder}); wait for it to finish "
                               "or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
