"""What the app shows, computed: a tokenizer, its codebook's exemplars, a dataset's usage, samples.

`AppState` loads everything once (and refuses, in one line, a tokenizer or generator it cannot
read); the server turns its methods' dicts into JSON. Images leave as PNG data URLs; token maps
leave as id grids that the page colours itself.
"""
from __future__ import annotations

import base64
import io
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

PATCH_DISPLAY = 64      # exemplar patches are upscaled (nearest) to this side for the page
THUMB_SIDE = 96
LIST_LIMIT = 120        # entries listed at once by the atlas


def png_data_url(image) -> str:
    """A PIL image or a (3, H, W) tensor in [-1, 1] as a PNG data URL."""
    from ..data import from_tensor

    if isinstance(image, torch.Tensor):
        image = from_tensor(image.clamp(-1, 1))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def find_codebook_file(tokenizer_dir: Path) -> Path | None:
    """The codebook file a tokenizer was trained with: its run's train_config.json `codebook`."""
    import json

    for config in (tokenizer_dir.parent / "train_config.json", tokenizer_dir / "train_config.json"):
        if not config.is_file():
            continue
        try:
            named = json.loads(config.read_text()).get("codebook")
        except (OSError, ValueError):
            continue
        if named:
            for candidate in (Path(named), tokenizer_dir.parent / named, tokenizer_dir.parent / Path(named).name):
                if candidate.is_file():
                    return candidate
    return None


@dataclass
class Usage:
    """Token counts of the evaluation set, filled in the background; `progress` in [0, 1]."""
    counts: np.ndarray | None = None
    done: int = 0
    total: int = 0
    state: str = "none"            # none | running | done | error
    error: str = ""
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class AppState:
    def __init__(self, tokenizer: str, *, codebook: str | None = None, data: str | None = None,
                 generator: str | None = None, device: str = "cpu", max_images: int = 2000):
        from ..tokenizer.model import VQModel

        self.device = device
        self.tokenizer_path = Path(tokenizer)
        if not self.tokenizer_path.exists():
            raise FileNotFoundError(f"tokenizer {tokenizer} not found; pass a folder written by `vqgan-lc train` "
                                    "(e.g. runs/demo/vqgan-lc/tokenizer after `make demo`)")
        try:
            self.model = VQModel.from_pretrained(tokenizer).to(device).eval()
        except Exception as err:  # any unreadable folder: one line, the app does not start
            raise ValueError(f"cannot read tokenizer {tokenizer}: {' '.join(str(err).split())}") from None
        self.codebook_size = int(self.model.codebook_size)
        self.resolution = int(self.model.config.autoencoder.resolution)
        self.compute = threading.Lock()  # one model call at a time: usage counting and requests share it
        self._load_codebook(codebook)
        self.generator = None
        if generator:
            self._load_generator(generator)
        self.dataset = None
        self.names: list[str] = []
        self.usage = Usage()
        if data:
            self._open_data(data, max_images)

    # ------------------------------------------------------------------------- loading
    def _load_codebook(self, codebook: str | None) -> None:
        from ..codebook.exemplars import exemplars_path, load_exemplars
        from ..codebook.io import load_codebook

        self.entry_class: np.ndarray | None = None
        self.class_names: list[str] = []
        self.exemplars = None
        self.codebook_path = Path(codebook) if codebook else find_codebook_file(self.tokenizer_path)
        if self.model.config.quantizer.kind != "lc":
            self.exemplar_note = (f"this is a {self.model.config.quantizer.kind!r} tokenizer: its codebook was learned, "
                                  "not clustered from image patches, so its entries have no exemplars")
            self.codebook_path = None
            return
        if self.codebook_path is None:
            self.exemplar_note = ("the codebook file this tokenizer was trained with was not found; start the app with "
                                  "--codebook FILE to see exemplars")
            return
        book = load_codebook(self.codebook_path)
        if book.codebook_size != self.codebook_size:
            raise ValueError(f"codebook {self.codebook_path} has {book.codebook_size} entries, the tokenizer {self.codebook_size}; "
                             "pass the codebook the tokenizer was trained with (--codebook)")
        sizes = book.metadata.get("entries_per_class")
        if book.metadata.get("mode") == "per-class" and isinstance(sizes, list):
            self.entry_class = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
            self.class_names = [str(n) for n in book.metadata.get("class_names") or range(len(sizes))]
        try:
            self.exemplars = load_exemplars(exemplars_path(self.codebook_path), book.vectors)
            self.exemplar_note = ""
        except (FileNotFoundError, ValueError) as err:
            self.exemplar_note = str(err)

    def _load_generator(self, generator: str) -> None:
        from .generator import generator_info

        if not Path(generator).is_dir():
            raise FileNotFoundError(f"generator {generator} not found; pass a run folder written by `vqgan-lc train-gen`")
        try:
            info = generator_info(generator, self.device)
        except Exception as err:
            raise ValueError(f"cannot read generator {generator}: {' '.join(str(err).split())}") from None
        if info["codebook_size"] != self.codebook_size:
            raise ValueError(f"generator {generator} samples tokens of {info['tokenizer']} ({info['codebook_size']} "
                             f"entries), not of {self.tokenizer_path} ({self.codebook_size}); start the app on that tokenizer")
        self.generator = info

    def _open_data(self, data: str, max_images: int) -> None:
        from ..data import build_dataset

        try:
            self.dataset = build_dataset(data, self.resolution, train=False)
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"--data {data}: {' '.join(str(err).split())}") from None
        records = getattr(self.dataset, "records", None)
        total = min(len(self.dataset), max_images)
        self.names = [os.path.relpath(records[i].path, data) if records is not None and os.path.isdir(data)
                      else f"{data} #{i}" for i in range(total)]
        self.data_source = data
        self.usage.total = total
        self.usage.state = "running"
        threading.Thread(target=self._count_usage, name="usage", daemon=True).start()

    def _count_usage(self) -> None:
        """Token counts over the first `usage.total` images (np.bincount per batch)."""
        started = time.perf_counter()
        counts = np.zeros(self.codebook_size, dtype=np.int64)
        try:
            batch = []
            for i in range(self.usage.total):
                item = self.dataset[i]
                if item is not None:
                    batch.append(item["image"])
                if len(batch) == 16 or (i == self.usage.total - 1 and batch):
                    ids = self._encode(torch.stack(batch))
                    counts += np.bincount(ids.ravel(), minlength=self.codebook_size)
                    batch = []
                self.usage.done = i + 1
            self.usage.counts = counts
            self.usage.state = "done"
        except Exception as err:  # shown in the page; the rest of the app keeps working
            log.exception("counting token usage failed")
            self.usage.state, self.usage.error = "error", " ".join(str(err).split())
        self.usage.seconds = round(time.perf_counter() - started, 1)

    @torch.no_grad()
    def _encode(self, images: torch.Tensor) -> np.ndarray:
        with self.compute:
            return self.model.encode(images.to(self.device)).indices.cpu().numpy()

    # ------------------------------------------------------------------------- what the page asks
    def info(self) -> dict:
        ex = self.exemplars
        return {
            "tokenizer": str(self.tokenizer_path), "codebook": str(self.codebook_path or ""),
            "codebook_size": self.codebook_size, "resolution": self.resolution, "grid": list(self.model.token_grid()),
            "quantizer": self.model.config.quantizer.kind,
            "per_class": self.entry_class is not None, "class_names": self.class_names,
            "exemplars": {"available": ex is not None, "note": self.exemplar_note,
                          "per_entry": ex.per_entry if ex is not None else 0},
            "data": {"source": getattr(self, "data_source", None), "count": len(self.names)},
            "generator": self.generator,
        }

    def data_list(self) -> list[dict]:
        return [{"index": i, "name": name} for i, name in enumerate(self.names)]

    def data_image(self, index: int) -> torch.Tensor:
        if self.dataset is None:
            raise ValueError("no evaluation set: start the app with --data DIR to pick its images")
        if not 0 <= index < len(self.names):
            raise ValueError(f"image {index} is not in the evaluation set (0..{len(self.names) - 1})")
        item = self.dataset[index]
        if item is None:
            raise ValueError(f"{self.names[index]} could not be read")
        return item["image"]

    def uploaded_image(self, payload: bytes) -> torch.Tensor:
        """An uploaded file, resized and centre-cropped to the tokenizer's resolution."""
        import tempfile

        from ..data import EvalTransform, ImageError, load_image

        if not payload:
            raise ValueError("the upload is empty; choose an image file")
        with tempfile.TemporaryDirectory(prefix="vqgan-lc-upload-") as folder:
            path = os.path.join(folder, "upload")
            with open(path, "wb") as f:
                f.write(payload)
            try:
                image = load_image(path)
            except ImageError as err:
                reason = str(err)[len(path) + 2:] if str(err).startswith(f"{path}: ") else str(err)
                reason = reason.replace(f" '{path}'", "").replace(path, "the upload")  # a temporary name means nothing
                raise ValueError(f"the uploaded file is not a readable image ({reason})") from None
        return EvalTransform(self.resolution)(image)

    @torch.no_grad()
    def tokenize(self, image: torch.Tensor) -> dict:
        """Original, reconstruction and token ids of one (3, H, W) image."""
        with self.compute:
            out = self.model(image[None].to(self.device))
        recon = out.reconstruction[0].clamp(-1, 1).cpu()
        ids = out.quantizer.indices[0].cpu().numpy()
        mse = float(((recon - image.clamp(-1, 1)) / 2).pow(2).mean())
        return {"original": png_data_url(image), "reconstruction": png_data_url(recon), "grid": list(ids.shape),
                "ids": ids.ravel().tolist(), "classes": self._classes_of(ids),
                "psnr": round(10 * np.log10(1 / max(mse, 1e-10)), 2), "distinct": int(np.unique(ids).size)}

    def _classes_of(self, ids: np.ndarray) -> list[int] | None:
        return None if self.entry_class is None else self.entry_class[ids.ravel()].tolist()

    def entry(self, entry: int) -> dict:
        if not 0 <= entry < self.codebook_size:
            raise ValueError(f"entry {entry} does not exist: the codebook has entries 0..{self.codebook_size - 1}")
        counts = self.usage.counts
        found = {"entry": entry, "class": None, "class_name": None, "usage": None, "exemplars": [],
                 "exemplar_note": self.exemplar_note}
        if self.entry_class is not None:
            c = int(self.entry_class[entry])
            found["class"], found["class_name"] = c, self.class_names[c] if c < len(self.class_names) else str(c)
        if counts is not None:
            total = int(counts.sum())
            found["usage"] = {"count": int(counts[entry]), "share": counts[entry] / max(total, 1),
                              "rank": int((counts > counts[entry]).sum()) + 1, "num_tokens": total,
                              "num_images": self.usage.total}
        if self.exemplars is not None:
            for j, ex in enumerate(self.exemplars.of_entry(entry)):
                names = self.exemplars.meta.get("class_names") or []
                label = ex["label"]
                found["exemplars"].append({
                    "url": f"/api/patch/{entry}/{j}.png", "source": ex["source"], "cell": ex["cell"],
                    "short": os.path.basename(ex["source"]) if self.exemplars.paths is not None else f"picture {ex['image']}",
                    "distance": round(ex["distance"], 4),
                    "label": names[label] if 0 <= label < len(names) else (None if label < 0 else label)})
            if not found["exemplars"]:
                found["exemplar_note"] = "no feature vector was assigned to this entry at build time"
        return found

    def patch_png(self, entry: int, j: int) -> bytes:
        from PIL import Image

        if self.exemplars is None:
            raise ValueError(self.exemplar_note or "this codebook has no exemplars")
        found = self.exemplars.of_entry(entry)
        if not 0 <= j < len(found):
            raise ValueError(f"entry {entry} has {len(found)} exemplars, not {j + 1}")
        try:
            patch = self.exemplars.patch(found[j]["image"], found[j]["cell"])
        except (OSError, ValueError) as err:
            raise ValueError(f"exemplar image {found[j]['source']} cannot be read: {' '.join(str(err).split())}") from None
        scale = max(1, PATCH_DISPLAY // max(patch.size))
        patch = patch.resize((patch.width * scale, patch.height * scale), Image.NEAREST)
        buffer = io.BytesIO()
        patch.save(buffer, format="PNG")
        return buffer.getvalue()

    def usage_summary(self) -> dict:
        u = self.usage
        found = {"state": u.state, "done": u.done, "total": u.total, "error": u.error, "seconds": u.seconds}
        if u.counts is not None:
            counts = u.counts
            used = int((counts > 0).sum())
            # bins: never used, then 1, 2-3, 4-7, ... tokens per entry
            top = int(counts.max()) if counts.size else 0
            edges = [0, 1] + [2**k for k in range(1, max(1, top.bit_length()) + 1)]
            bins = [{"label": "0", "count": int((counts == 0).sum())}]
            for lo, hi in zip(edges[1:], edges[2:]):
                bins.append({"label": f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}",
                             "count": int(((counts >= lo) & (counts < hi)).sum())})
            while len(bins) > 1 and bins[-1]["count"] == 0:
                bins.pop()
            found.update(num_tokens=int(counts.sum()), used=used, utilization=used / self.codebook_size, histogram=bins,
                         per_class=self._usage_per_class(counts))
        return found

    def _usage_per_class(self, counts: np.ndarray) -> list[dict] | None:
        if self.entry_class is None:
            return None
        classes = int(self.entry_class.max()) + 1  # one bincount each: 1,000 classes x 100,000 entries stay cheap
        entries = np.bincount(self.entry_class, minlength=classes)
        used = np.bincount(self.entry_class, weights=counts > 0, minlength=classes)
        tokens = np.bincount(self.entry_class, weights=counts, minlength=classes)
        return [{"class": c, "name": self.class_names[c] if c < len(self.class_names) else str(c),
                 "entries": int(entries[c]), "used": int(used[c]), "tokens": int(tokens[c])} for c in range(classes)]

    def entries(self, order: str, class_id: int | None = None, offset: int = 0, limit: int = LIST_LIMIT) -> dict:
        """Entries by usage: "most" used first, "never" used, or one class's entries by usage."""
        counts = self.usage.counts
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if order not in ("most", "never", "class"):
            raise ValueError(f"order must be most, never or class, not {order!r}")
        if counts is None:
            raise ValueError("usage is not counted yet" if self.usage.state == "running" else
                             "no evaluation set: start the app with --data DIR to browse entries by usage")
        ids = np.arange(self.codebook_size)
        if order == "class":
            if self.entry_class is None:
                raise ValueError("this codebook is not per-class: its entries belong to no class")
            if class_id is None or not 0 <= class_id <= int(self.entry_class.max()):
                raise ValueError(f"choose a class 0..{int(self.entry_class.max())}")
            ids = ids[self.entry_class == class_id]
        if order == "never":
            ids = ids[counts[ids] == 0]
        else:
            ids = ids[np.argsort(-counts[ids], kind="stable")]
        page = ids[offset:offset + limit]
        return {"total": int(ids.size), "offset": offset,
                "entries": [{"entry": int(e), "count": int(counts[e]),
                             "class": None if self.entry_class is None else int(self.entry_class[e]),
                             "patch": f"/api/patch/{int(e)}/0.png" if self.exemplars is not None and
                             self.exemplars.image[e, 0] >= 0 else None} for e in page]}

    def generate(self, class_id: int, cfg_scale: float, method: str | None, steps: int | None, seed: int,
                 count: int) -> dict:
        from .generator import sample_for_app

        if self.generator is None:
            raise ValueError("no generator: start the app with --generator RUN to sample")
        if not 1 <= count <= 16:
            raise ValueError(f"samples per request must be 1..16, got {count}")
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        with self.compute:
            images, ids = sample_for_app(self.generator["path"], class_id, cfg_scale, method, steps, seed, count,
                                         self.device)
        ids = ids.numpy()
        counts = self.usage.counts
        unseen = None
        if counts is not None:
            used = np.unique(ids)
            unseen = [int(e) for e in used if counts[e] == 0]
        return {"images": [png_data_url(im) for im in images], "grid": list(ids.shape[1:]),
                "ids": [row.ravel().tolist() for row in ids], "classes": [self._classes_of(row) for row in ids],
                "unseen": unseen, "distinct": int(np.unique(ids).size)}
