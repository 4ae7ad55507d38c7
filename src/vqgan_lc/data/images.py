"""Finding images on disk and decoding them to 8-bit RGB.

Everything downstream (transforms, datasets, the codebook feature extractor) assumes
`load_image` returns a fully decoded 8-bit RGB `PIL.Image`, so every odd file format is
normalised here, once: EXIF rotation, alpha, palettes, CMYK, 16-bit and float data.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)

# Modes carrying an alpha channel; they are composited on white so that transparent
# regions do not turn into arbitrary (often black) colours.
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageError(ValueError):
    """A file that is missing, not an image, corrupt, or a listing that cannot be used."""


@dataclass(frozen=True, slots=True)  # slots: millions of records stay small
class ImageRecord:
    path: str  # absolute or as given
    label: int | None  # class index, or None for unlabelled data
    class_name: str | None


def is_image_path(path: str | os.PathLike) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def _dir_key(path: str) -> tuple[int, int] | str:
    """What identifies a real folder, whatever path (symlinks included) reaches it."""
    st = os.stat(path)
    # Some file systems report no inode number; the resolved path identifies the folder there.
    return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)


def _walk_images(folder: str, visited: set | None = None) -> list[str]:
    """All image files below `folder`, sorted by relative path (hidden entries skipped).

    Symlinked folders are followed, but each real folder is read once (`visited` holds the
    `_dir_key` of the folders read so far): a link back up the tree (`loop -> .`) would
    otherwise list the same images again at every depth until the path grows too long.
    """
    visited = set() if visited is None else visited
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        key = _dir_key(root)
        if key in visited:
            dirs[:] = []  # reached again through a symlink: listed already, and descending could loop
            continue
        visited.add(key)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            os.path.join(root, f) for f in files if not f.startswith(".") and is_image_path(f)
        )
    return sorted(found, key=lambda p: os.path.relpath(p, folder))


def _list_folder(folder: str) -> list[ImageRecord]:
    entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
    direct = [os.path.join(folder, e) for e in entries
              if is_image_path(e) and os.path.isfile(os.path.join(folder, e))]
    # A sub-folder is a class only if it holds images, so stray empty or
    # non-image folders (e.g. "logs") do not shift the label indices.
    classes = []
    # Shared by all class walks and seeded with the top folder, so that a symlink back to it
    # (or to another class) does not list the same files again under a second label.
    visited = {_dir_key(folder)}
    for name in entries:
        sub = os.path.join(folder, name)
        if os.path.isdir(sub):
            images = _walk_images(sub, visited)
            if images:
                classes.append((name, images))
    if direct and classes:
        raise ImageError(
            f"{folder}: mixes images at the top level ({len(direct)}) with class sub-folders "
            f"({len(classes)}); use one layout or a .txt file list"
        )
    if direct:
        return [ImageRecord(path=p, label=None, class_name=None) for p in direct]
    return [
        ImageRecord(path=p, label=label, class_name=name)
        for label, (name, images) in enumerate(classes)
        for p in images
    ]


def _parse_list_line(line: str) -> tuple[str, int | None]:
    """`<path>`, `<path>\\t<label>` or `<path> <label>` (a path may contain spaces)."""
    if "\t" in line:
        path, label = line.rsplit("\t", 1)
        return path.strip(), int(label.strip())
    parts = line.rsplit(None, 1)
    if len(parts) == 2:
        try:
            return parts[0].strip(), int(parts[1])
        except ValueError:
            pass  # the last word is part of the path, e.g. "my photo.jpg"
    return line, None


def _list_file(list_path: str) -> list[ImageRecord]:
    base = os.path.dirname(os.path.abspath(list_path))
    records = []
    with open(list_path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                path, label = _parse_list_line(line)
            except ValueError:
                raise ImageError(
                    f"{list_path}:{number}: label after the tab is not an integer: {line!r}"
                ) from None
            if label is not None and label < 0:
                raise ImageError(f"{list_path}:{number}: negative label {label}")
            path = os.path.expanduser(path)
            if not os.path.isabs(path):
                path = os.path.join(base, path)
            if not os.path.isfile(path):
                raise ImageError(f"{list_path}:{number}: listed file does not exist: {path}")
            records.append(ImageRecord(path=path, label=label,
                                       class_name=None if label is None else str(label)))
    labelled = {r.label is not None for r in records}
    if len(labelled) > 1:
        raise ImageError(f"{list_path}: some lines have a label and some do not; label all or none")
    return records


def list_images(source: str | os.PathLike) -> list[ImageRecord]:
    """Records for a folder (class sub-folders or flat) or a .txt file list.

    Folders are listed in sorted order and class labels follow the sorted sub-folder
    names; a file list keeps the order of its lines.
    """
    source = os.fspath(source)
    if not os.path.exists(source):
        raise ImageError(f"{source}: no such file or folder")
    if os.path.isdir(source):
        records = _list_folder(source)
    elif source.lower().endswith(".txt"):
        records = _list_file(source)
    else:
        raise ImageError(f"{source}: expected a folder of images or a .txt file list")
    if not records:
        raise ImageError(
            f"{source}: no images found (extensions: {' '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return records


def class_names(records: list[ImageRecord]) -> list[str]:
    """Class names ordered by label (for folders: sorted); empty for unlabelled data."""
    by_label: dict[int, str] = {}
    for r in records:
        if r.label is not None and r.label not in by_label:
            by_label[r.label] = r.class_name if r.class_name is not None else str(r.label)
    return [by_label[k] for k in sorted(by_label)]


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    # Scale the full 16-bit range to 8 bits (65535 -> 255) instead of clipping at 255,
    # which would turn almost every pixel white.
    values = np.asarray(img, dtype=np.float64)
    eight = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(eight, mode="L").convert("RGB")


def _float_to_rgb(img: Image.Image) -> Image.Image:
    values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    # Float images are stored either in [0, 1] or in [0, 255]; a maximum above 1 says which.
    scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0
    eight = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(eight, mode="L").convert("RGB")


def _on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        # "I" holds 16-bit data in practice (PNG/TIFF); values are read on the same scale.
        return _sixteen_bit_to_rgb(img)
    if mode == "F":
        return _float_to_rgb(img)
    if mode in _ALPHA_MODES or "transparency" in img.info:
        return _on_white(img)
    if mode == "RGB":
        return img.copy()
    return img.convert("RGB")  # "1", "L", "P", "CMYK", "YCbCr", ...


def _draft_jpeg(img: Image.Image, min_short_side: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the short side stays >= the target:
    a large photo that will be shrunk anyway decodes several times faster."""
    if img.format != "JPEG" or min(img.size) <= 0:
        return
    scale = min_short_side / min(img.size)
    if scale < 0.5:
        wanted = (max(1, math.ceil(img.width * scale)), max(1, math.ceil(img.height * scale)))
        img.draft(None, wanted)


def load_image(path: str | os.PathLike, min_short_side: int | None = None) -> Image.Image:
    """Decode `path` fully to an upright 8-bit RGB image; any failure raises ImageError.

    `min_short_side`: a caller that will shrink the image to this short side may let large
    JPEGs decode at reduced scale; the result's short side is still >= this value.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            if min_short_side is not None:
                _draft_jpeg(img, min_short_side)
            img.load()  # decode now so truncated files fail here, not later
            upright = ImageOps.exif_transpose(img)
            rgb = _to_rgb(upright)
            rgb.load()
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, KeyError, IndexError,
            Image.DecompressionBombError, MemoryError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ImageError(f"{path}: cannot decode image ({type(e).__name__}: {reason})") from None
    if rgb.mode != "RGB":
        raise ImageError(f"{path}: unsupported image mode {rgb.mode!r}")
    return rgb
