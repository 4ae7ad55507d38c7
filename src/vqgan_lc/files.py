"""Files written atomically, and pretrained weight files found the same way for every network.

Atomic: every file goes to a temporary sibling, is flushed to disk (fsync), and replaces
the target with `os.replace`, which POSIX makes atomic: a reader, or a run resumed after a
crash, sees the old file or the new one, never half of one. The temporary file is removed
when writing fails (disk full, interrupt), so nothing half-written is left behind.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


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
    except BaseException:
        tmp_path.unlink(missing_ok=True)
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


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


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


# --- pretrained weight files ------------------------------------------------------------------

def torch_hub_checkpoints() -> Path:
    """torch.hub's checkpoint cache (where torchvision and pytorch-fid put downloaded weights)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(filename: str, *, path: str | os.PathLike | None = None, env: str | None = None,
                 search: tuple[str | os.PathLike, ...] = ()) -> Path | None:
    """Locate a weights file: `path` when given (the only place then looked at), else $`env`, else
    `filename` inside each folder of `search` and then torch.hub's checkpoint cache. None if absent."""
    if path:
        return Path(path) if Path(path).is_file() else None
    candidates: list[Path] = []
    if env and os.environ.get(env):
        candidates.append(Path(os.environ[env]))
    candidates += [Path(folder) / filename for folder in search]
    candidates.append(torch_hub_checkpoints() / filename)
    return next((c for c in candidates if c.is_file()), None)


def require_weights(filename: str, what: str, *, path: str | os.PathLike | None = None, env: str | None = None,
                    search: tuple[str | os.PathLike, ...] = (), option: str = "a path") -> Path:
    """`find_weights`, or one line saying where the file was looked for and how to supply it."""
    found = find_weights(filename, path=path, env=env, search=search)
    if found is not None:
        return found
    if path:
        raise FileNotFoundError(f"{what} not found at {path}")
    env_hint = f", set ${env}" if env else ""
    raise FileNotFoundError(f"{what} not found: put {filename} in {torch_hub_checkpoints()}{env_hint}, "
                            f"or pass {option}")


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
