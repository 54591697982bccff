"""A CPU-sized stand-in for the Visual Decathlon: small procedural image-classification domains.

Four domains, each a different visual problem on the same image size, generated deterministically
from ``dataset.seed`` (no files, no downloads):

* ``shapes``: which filled shape (disc, square, triangle, ring), random colours, place and size;
* ``stripes``: the orientation of a sinusoidal grating (0, 45, 90, 135 degrees), random frequency,
  phase and colours (never mirrored: mirroring swaps 45 and 135);
* ``colours``: the hue of a blob (six hue bins) on a grey background;
* ``counts``: how many dots (one to four).

``decathlon_synthetic`` serves them exactly like ``decathlon`` serves the real data (one task per
domain, one domain per batch, per-domain normalisation). :func:`write_decathlon_folder` writes the
same generators out in the organisers' folder layout (PNG images + COCO-style JSON), so the real
loader can be exercised end to end without the real data.
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mtlkit.config import DatasetConfig
from mtlkit.decathlon.data import DOMAINS, DomainBatchSampling, MultiDomainDataset, channel_stats, normalise
from mtlkit.errors import ConfigError
from mtlkit.registry import DATASETS
from mtlkit.tasks import Task, classification_task

#: class names of every synthetic domain (the label is the position in the list)
SYNTHETIC_CLASSES = {
    "shapes": ["disc", "square", "triangle", "ring"],
    "stripes": ["0deg", "45deg", "90deg", "135deg"],
    "colours": ["red", "yellow", "green", "cyan", "blue", "magenta"],
    "counts": ["one", "two", "three", "four"],
}
SYNTHETIC_DOMAINS = tuple(SYNTHETIC_CLASSES)
#: domains whose label survives a left-right mirror
FLIPPABLE = frozenset({"shapes", "colours", "counts"})
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
SYNTHETIC_DEFAULTS = {"size": 32, "n_train": 128, "n_val": 64}


def _contrasting(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random background colour and a foreground at least ~0.35 away in every channel."""
    bg = rng.uniform(0.0, 1.0, 3)
    fg = (bg + 0.5 + rng.uniform(-0.15, 0.15, 3)) % 1.0
    return fg, bg


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return yy + 0.5, xx + 0.5


def _shape(label: int, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    s = min(h, w)
    r = rng.uniform(0.2, 0.32) * s
    cy, cx = rng.uniform(r + 1, h - r - 1), rng.uniform(r + 1, w - r - 1)
    yy, xx = _grid(h, w)
    dy, dx = yy - cy, xx - cx
    dist = np.hypot(dy, dx)
    if label == 0:
        mask = dist <= r
    elif label == 1:
        mask = np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    elif label == 2:
        mask = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    else:
        mask = (dist <= r) & (dist >= 0.55 * r)
    fg, bg = _contrasting(rng)
    return np.where(mask[..., None], fg, bg)


def _stripes(label: int, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    theta = np.deg2rad(45.0 * label + rng.uniform(-8.0, 8.0))
    freq = rng.uniform(3.0, 6.0) / min(h, w)
    yy, xx = _grid(h, w)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 2 * np.pi))
    fg, bg = _contrasting(rng)
    return wave[..., None] * fg + (1 - wave[..., None]) * bg


def _colour(label: int, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    hue = (label / 6.0 + rng.uniform(-0.03, 0.03)) % 1.0
    fg = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)))
    grey = rng.uniform(0.2, 0.8)
    s = min(h, w)
    r = rng.uniform(0.2, 0.35) * s
    cy, cx = rng.uniform(r + 1, h - r - 1), rng.uniform(r + 1, w - r - 1)
    yy, xx = _grid(h, w)
    if rng.uniform() < 0.5:
        mask = np.hypot(yy - cy, xx - cx) <= r
    else:
        mask = np.maximum(np.abs(yy - cy), np.abs(xx - cx)) <= 0.85 * r
    return np.where(mask[..., None], fg, np.full(3, grey))


def _count(label: int, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    s = min(h, w)
    r = rng.uniform(0.07, 0.1) * s
    centres: list[tuple[float, float]] = []
    while len(centres) < label + 1:
        c = (rng.uniform(r + 1, h - r - 1), rng.uniform(r + 1, w - r - 1))
        if all(np.hypot(c[0] - a, c[1] - b) > 2.5 * r for a, b in centres):
            centres.append(c)
    yy, xx = _grid(h, w)
    mask = np.zeros((h, w), dtype=bool)
    for cy, cx in centres:
        mask |= np.hypot(yy - cy, xx - cx) <= r
    fg, bg = _contrasting(rng)
    return np.where(mask[..., None], fg, bg)


RENDERERS: dict[str, Callable[[int, np.random.Generator, int, int], np.ndarray]] = {
    "shapes": _shape,
    "stripes": _stripes,
    "colours": _colour,
    "counts": _count,
}


def generate_domain(
    domain: str, split: str, n: int, height: int, width: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images (n, H, W, 3) and int64 labels of one synthetic domain split, balanced."""
    if domain not in RENDERERS:
        raise ConfigError(f"unknown synthetic domain {domain!r} (domains: {', '.join(SYNTHETIC_DOMAINS)})")
    rng = np.random.default_rng([seed, SYNTHETIC_DOMAINS.index(domain), SPLIT_IDS[split]])
    num_classes = len(SYNTHETIC_CLASSES[domain])
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    images = np.empty((n, height, width, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        img = RENDERERS[domain](int(label), rng, height, width)
        img = img + rng.normal(0.0, 0.03, img.shape)
        images[i] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return images, labels


class ArrayDomain(Dataset):
    """One in-memory domain split: uint8 images, normalised on access; label under the domain name."""

    def __init__(
        self, domain: str, images: np.ndarray, labels: np.ndarray, mean: Tensor, std: Tensor, flip: bool
    ) -> None:
        self.domain = domain
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(labels)
        self.mean, self.std, self.flip = mean, std, flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image = self.images[index].float() / 255.0
        if self.flip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        return {"image": normalise(image, self.mean, self.std), self.domain: self.labels[index].clone()}


@DATASETS.register("decathlon_synthetic")
class SyntheticDecathlonBuilder(DomainBatchSampling):
    """Four small procedural classification domains (shapes, stripes, colours, counts), CPU-sized."""

    splits = ("train", "val", "test")

    def __init__(self, cfg: DatasetConfig) -> None:
        super().__init__(cfg)
        if cfg.options:
            raise ConfigError(f"dataset.options.{next(iter(cfg.options))}: unknown option for dataset {cfg.name!r}")
        self.height = cfg.height or SYNTHETIC_DEFAULTS["size"]
        self.width = cfg.width or self.height
        self.counts = {
            "train": cfg.n_train or SYNTHETIC_DEFAULTS["n_train"],
            "val": cfg.n_val or SYNTHETIC_DEFAULTS["n_val"],
            "test": cfg.n_val or SYNTHETIC_DEFAULTS["n_val"],
        }
        self._cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def domains(self) -> list[str]:
        """``dataset.tasks`` (checked) or all four domains."""
        if self.cfg.tasks is None:
            return list(SYNTHETIC_DOMAINS)
        unknown = [d for d in self.cfg.tasks if d not in SYNTHETIC_DOMAINS]
        if unknown:
            raise ConfigError(
                f"dataset.tasks: {', '.join(unknown)} not a synthetic decathlon domain "
                f"(domains: {', '.join(SYNTHETIC_DOMAINS)})"
            )
        return list(self.cfg.tasks)

    def all_tasks(self) -> list[Task]:
        """One classification task per domain."""
        return [classification_task(d, len(SYNTHETIC_CLASSES[d])) for d in self.domains()]

    def arrays(self, domain: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The generated (and cached) uint8 images and labels of one domain split."""
        key = (domain, split)
        if key not in self._cache:
            n = self.counts[split]
            self._cache[key] = generate_domain(domain, split, n, self.height, self.width, self.cfg.seed)
        return self._cache[key]

    def dataset(self, split: str, train: bool) -> MultiDomainDataset:
        """All configured domains of ``split`` as one dataset (batch with :meth:`batch_sampler`)."""
        if split not in self.splits:
            raise ConfigError(f"split {split!r}: dataset 'decathlon_synthetic' has {', '.join(self.splits)}")
        parts = []
        for d in self.domains():
            train_images, _ = self.arrays(d, "train")
            mean, std = channel_stats(list(torch.from_numpy(train_images).permute(0, 3, 1, 2).float() / 255.0))
            images, labels = self.arrays(d, split)
            flip = train and self.cfg.augment and d in FLIPPABLE
            parts.append((d, ArrayDomain(d, images, labels, mean, std, flip)))
        return MultiDomainDataset(parts)


def write_decathlon_folder(
    root: str | Path,
    domains: dict[str, str] | None = None,
    counts: dict[str, int] | None = None,
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
) -> Path:
    """Write synthetic domains in the organisers' layout (PNG + COCO-style JSON); returns ``root``.

    ``domains`` maps an organiser domain name to the synthetic generator that fills it (default:
    aircraft <- shapes, dtd <- stripes, svhn <- counts). ``counts`` gives images per split (default
    train 6, val 4, test 2); the test split is written like the organisers ship it,
    ``<domain>_test_stripped.json`` without annotations. Category ids are global across domains.
    """
    from PIL import Image

    root = Path(root)
    domains = domains or {"aircraft": "shapes", "dtd": "stripes", "svhn": "counts"}
    counts = counts or {"train": 6, "val": 4, "test": 2}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    next_id = 1
    for name, generator in domains.items():
        if name not in DOMAINS:
            raise ConfigError(f"{name!r} is not a Visual Decathlon domain (domains: {', '.join(DOMAINS)})")
        offset = (DOMAINS.index(name) + 1) * 100_000
        classes = SYNTHETIC_CLASSES[generator]
        categories = [{"id": offset + c + 1, "name": n} for c, n in enumerate(classes)]
        for split, n in counts.items():
            images, labels = generate_domain(generator, split, n, size[0], size[1], seed)
            folder = root / "data" / name / split
            folder.mkdir(parents=True, exist_ok=True)
            entries, anns = [], []
            for img, label in zip(images, labels):
                file_name = f"data/{name}/{split}/{next_id:07d}.png"
                Image.fromarray(img).save(root / file_name)
                entries.append({"id": next_id, "file_name": file_name, "width": size[1], "height": size[0]})
                anns.append({"id": next_id, "image_id": next_id, "category_id": offset + int(label) + 1})
                next_id += 1
            doc: dict[str, object] = {"images": entries, "categories": categories}
            suffix = "test_stripped" if split == "test" else split
            if split != "test":
                doc["annotations"] = anns
            (root / "annotations" / f"{name}_{suffix}.json").write_text(json.dumps(doc))
    return root
