"""Visual Decathlon data as the organisers distribute it, and one-domain-per-batch sampling.

Layout (the ``decathlon-1.0`` folder: devkit annotations plus the extracted image archives)::

    ROOT/annotations/<domain>_train.json     COCO-style: images [{id, file_name, width, height}],
    ROOT/annotations/<domain>_val.json         annotations [{id, image_id, category_id}],
    ROOT/annotations/<domain>_test.json        categories [{id, name}]  (the organisers ship the
                                               test split as <domain>_test_stripped.json, without
                                               labels: evaluate on val, or submit predictions)
    ROOT/data/<domain>/{train,val,test}/...    images; ``file_name`` is relative to ROOT
                                               ("data/<domain>/train/0000001.jpg")

Category ids are global across domains in the real files; each domain's classes are its
categories sorted by id, numbered from 0 (the train file's categories define them).

Images (shorter side 72 in the distributed data) are resized to cover ``dataset.height x
dataset.width`` (default 72x72), centre-cropped (random crop + horizontal flip when training with
``dataset.augment``, no flip for gtsrb, omniglot and svhn), and normalised with per-domain channel
statistics estimated from up to ``dataset.options.stats_images`` training images. A sample is
``{"image": float (3, H, W), "<domain>": int64 class}``.

A batch must hold one domain (the model computes only that domain's branch): builders here expose
``batch_sampler(dataset, batch_size, shuffle, seed, epoch)``. Training batches are shuffled within
each domain and interleaved round-robin (domain 1, 2, ..., K, 1, 2, ...; a domain drops out when it
has no batch left), evaluation batches go domain after domain in order.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.distributed as tdist
from torch import Tensor
from torch.utils.data import Dataset

from mtlkit.config import DatasetConfig
from mtlkit.data.base import DatasetBuilder
from mtlkit.data.consistency import require_files
from mtlkit.errors import ConfigError, DataError
from mtlkit.registry import DATASETS
from mtlkit.tasks import Task, classification_task

if TYPE_CHECKING:
    from PIL.Image import Image

#: the ten domains, named as the organisers name their files (Rebuffi et al.'s table order)
DOMAINS = (
    "imagenet12",
    "aircraft",
    "cifar100",
    "daimlerpedcls",
    "dtd",
    "gtsrb",
    "vgg-flowers",
    "omniglot",
    "svhn",
    "ucf101",
)
#: classes per domain in the official release (the loader counts categories; used when there is no root)
DOMAIN_CLASSES = {
    "imagenet12": 1000,
    "aircraft": 100,
    "cifar100": 100,
    "daimlerpedcls": 2,
    "dtd": 47,
    "gtsrb": 43,
    "vgg-flowers": 102,
    "omniglot": 1623,
    "svhn": 10,
    "ucf101": 101,
}
#: domains where left/right matters (signs, characters, digits): never flipped
NO_FLIP = frozenset({"gtsrb", "omniglot", "svhn"})
DEFAULT_SIZE = 72
DEFAULT_STATS_IMAGES = 256


# --------------------------------------------------------------------------- batching


class DomainPart(Protocol):
    """One domain's samples: a map-style dataset with a length."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Tensor]: ...


class MultiDomainDataset(Dataset):
    """The concatenation of per-domain datasets; index ranges tell which domain a sample is from."""

    def __init__(self, parts: Sequence[tuple[str, DomainPart]]) -> None:
        if not parts:
            raise ValueError("a multi-domain dataset needs at least one domain")
        self.domains = [name for name, _ in parts]
        self.parts = [ds for _, ds in parts]
        self.offsets = [0]
        for ds in self.parts:
            self.offsets.append(self.offsets[-1] + len(ds))

    def __len__(self) -> int:
        return self.offsets[-1]

    def domain_range(self, k: int) -> range:
        """Global indices of domain ``k``'s samples."""
        return range(self.offsets[k], self.offsets[k + 1])

    def locate(self, index: int) -> tuple[int, int]:
        """(domain number, index within that domain) of a global index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        k = bisect.bisect_right(self.offsets, index) - 1
        return k, index - self.offsets[k]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        k, j = self.locate(index)
        return self.parts[k][j]


def domain_batches(
    dataset: MultiDomainDataset, batch_size: int, shuffle: bool, seed: int, epoch: int, group: int = 1
) -> list[list[int]]:
    """Batches of global indices, each from one domain: round-robin when shuffling, else in order.

    Shuffled order depends only on (seed, epoch, domain), so a resumed run sees the same batches.
    ``group`` > 1 (the number of processes) makes each round-robin turn ``group`` consecutive
    batches of one domain, each domain's batch count cut to a multiple of ``group``: when rank r
    takes batches r, r + group, ..., all ranks train the same domain at every step.
    """
    if batch_size < 1:
        raise ConfigError(f"train.batch_size must be >= 1 (got {batch_size})")
    per_domain: list[list[list[int]]] = []
    for k in range(len(dataset.domains)):
        idx = np.asarray(dataset.domain_range(k), dtype=np.int64)
        if shuffle:
            rng = np.random.default_rng([seed, epoch, k])
            idx = idx[rng.permutation(len(idx))]
        batches = [idx[i : i + batch_size].tolist() for i in range(0, len(idx), batch_size)]
        if shuffle and group > 1:
            batches = batches[: len(batches) - len(batches) % group]
        per_domain.append(batches)
    if not shuffle:
        return [b for batches in per_domain for b in batches]
    step = group if group > 1 else 1
    out = []
    for r in range(0, max((len(b) for b in per_domain), default=0), step):
        for batches in per_domain:
            out.extend(batches[r : r + step])
    return out


class DomainBatchSampling(DatasetBuilder):
    """Base of builders whose batches must each hold one domain (the trainer checks for it)."""

    def batch_sampler(
        self, dataset: MultiDomainDataset, batch_size: int, shuffle: bool, seed: int, epoch: int
    ) -> list[list[int]]:
        """Per-epoch list of one-domain index batches for ``DataLoader(batch_sampler=...)``.

        Under torch.distributed, training turns come in groups of one batch per process (see
        :func:`domain_batches`), so the trainer's every-``world_size``-th sharding gives all
        processes the same domain at each step.
        """
        if not isinstance(dataset, MultiDomainDataset):
            raise TypeError(f"batch_sampler needs the builder's MultiDomainDataset, got {type(dataset).__name__}")
        world = tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1
        return domain_batches(dataset, batch_size, shuffle, seed, epoch, group=world)


# --------------------------------------------------------------------------- images


def normalise(image: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(x - mean) / std per channel of a (3, H, W) image in [0, 1]."""
    return (image - mean[:, None, None]) / std[:, None, None]


def channel_stats(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std over a list of (3, H, W) images (std floored at 1e-3)."""
    stacked = torch.stack([im.reshape(3, -1) for im in images], dim=1).reshape(3, -1).double()
    return stacked.mean(dim=1).float(), stacked.std(dim=1).clamp(min=1e-3).float()


def load_rgb(path: Path) -> Image:
    """An image file as an RGB PIL image; missing or undecodable files are a DataError naming it."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file missing") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: unreadable image ({reason})") from None


def resize_crop(img: Image, height: int, width: int, random_crop: bool, flip: bool) -> Image:
    """Scale ``img`` to cover height x width (aspect kept), crop (centre or random), maybe mirror."""
    from PIL import Image as PILImage

    w, h = img.size
    scale = max(height / h, width / w)
    nw, nh = max(width, int(round(w * scale))), max(height, int(round(h * scale)))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), PILImage.Resampling.BILINEAR)
    if random_crop:
        left = int(torch.randint(0, nw - width + 1, (1,)))
        top = int(torch.randint(0, nh - height + 1, (1,)))
    else:
        left, top = (nw - width) // 2, (nh - height) // 2
    img = img.crop((left, top, left + width, top + height))
    if flip:
        img = img.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)
    return img


def to_tensor(img: Image) -> Tensor:
    """A PIL RGB image as a float32 (3, H, W) tensor in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


# --------------------------------------------------------------------------- annotations


@dataclass
class Annotations:
    """One domain split: image paths (relative to ROOT) with labels, and the category ids."""

    path: Path
    files: list[str]
    category_ids: list[int]
    labels: np.ndarray | None  # None when the file carries no annotations (stripped test split)


def _require_list(data: dict, key: str, path: Path) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise DataError(f"{path}: '{key}' is missing or not a list")
    return value


def _field(entry: object, key: str, kind: type | tuple[type, ...], path: Path, where: str) -> Any:
    if not isinstance(entry, dict) or key not in entry or not isinstance(entry[key], kind):
        raise DataError(f"{path}: {where} has no valid '{key}'")
    return entry[key]


def read_annotations(path: Path) -> Annotations:
    """Parse one COCO-style decathlon annotation file; every problem is a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: annotation file missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON (line {err.lineno} column {err.colno}: {err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable annotation file ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object with images/annotations/categories")
    images = _require_list(data, "images", path)
    categories = _require_list(data, "categories", path)
    cat_ids = [_field(c, "id", int, path, f"categories[{i}]") for i, c in enumerate(categories)]
    if len(set(cat_ids)) != len(cat_ids):
        raise DataError(f"{path}: duplicate category ids")
    ids, files = [], []
    for i, im in enumerate(images):
        ids.append(_field(im, "id", int, path, f"images[{i}]"))
        files.append(_field(im, "file_name", str, path, f"images[{i}]"))
    if "annotations" not in data:
        return Annotations(path, files, sorted(cat_ids), None)
    anns = _require_list(data, "annotations", path)
    position = {image_id: i for i, image_id in enumerate(ids)}
    if len(position) != len(ids):
        raise DataError(f"{path}: duplicate image ids")
    cat_set = set(cat_ids)
    raw = np.full(len(ids), -1, dtype=np.int64)
    seen = np.zeros(len(ids), dtype=bool)
    for i, a in enumerate(anns):
        image_id = _field(a, "image_id", int, path, f"annotations[{i}]")
        cat = _field(a, "category_id", int, path, f"annotations[{i}]")
        if image_id not in position:
            raise DataError(f"{path}: annotations[{i}] refers to unknown image id {image_id}")
        if cat not in cat_set:
            raise DataError(f"{path}: annotations[{i}] refers to unknown category id {cat}")
        j = position[image_id]
        if seen[j]:
            raise DataError(f"{path}: image id {image_id} has more than one annotation")
        seen[j], raw[j] = True, cat
    if not seen.all():
        missing = ids[int(np.flatnonzero(~seen)[0])]
        raise DataError(f"{path}: image id {missing} has no annotation ({int((~seen).sum())} unlabelled)")
    return Annotations(path, files, sorted(cat_ids), raw)


# --------------------------------------------------------------------------- real decathlon


class DomainImages(Dataset):
    """One domain split of image files: decode, resize/crop, normalise; label under the domain's name."""

    def __init__(
        self,
        domain: str,
        paths: list[Path],
        labels: np.ndarray,
        size: tuple[int, int],
        mean: Tensor,
        std: Tensor,
        augment: bool,
    ) -> None:
        self.domain, self.paths, self.labels = domain, paths, labels
        self.size, self.mean, self.std = size, mean, std
        self.augment = augment
        self.flip = augment and domain not in NO_FLIP

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int, augment: bool = False) -> Tensor:
        """The (3, H, W) image in [0, 1], before normalisation."""
        img = load_rgb(self.paths[index])
        flip = augment and self.flip and bool(torch.rand(()) < 0.5)
        img = resize_crop(img, self.size[0], self.size[1], random_crop=augment, flip=flip)
        return to_tensor(img)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image = normalise(self.load(index, self.augment), self.mean, self.std)
        return {"image": image, self.domain: torch.tensor(int(self.labels[index]), dtype=torch.int64)}


@DATASETS.register("decathlon")
class DecathlonBuilder(DomainBatchSampling):
    """The Visual Decathlon (10 classification domains) from the organisers' folder (dataset.root)."""

    splits = ("train", "val", "test")
    options = ("stats_images",)

    def __init__(self, cfg: DatasetConfig) -> None:
        super().__init__(cfg)
        for key in cfg.options:
            if key not in self.options:
                raise ConfigError(
                    f"dataset.options.{key}: unknown option for dataset {cfg.name!r} (known: {', '.join(self.options)})"
                )
        n_stats = cfg.options.get("stats_images", DEFAULT_STATS_IMAGES)
        if not isinstance(n_stats, int) or isinstance(n_stats, bool) or n_stats < 1:
            raise ConfigError(f"dataset.options.stats_images: expected an integer >= 1 (got {n_stats!r})")
        self.stats_images = n_stats
        self.root = None if cfg.root is None else Path(cfg.root).expanduser()
        self.size = (cfg.height or DEFAULT_SIZE, cfg.width or cfg.height or DEFAULT_SIZE)
        self._annotations: dict[tuple[str, str], Annotations] = {}
        self._stats: dict[str, tuple[Tensor, Tensor]] = {}

    def domains(self) -> list[str]:
        """The domains this config uses: ``dataset.tasks`` (checked against the ten) or all ten."""
        if self.cfg.tasks is None:
            return list(DOMAINS)
        unknown = [d for d in self.cfg.tasks if d not in DOMAINS]
        if unknown:
            raise ConfigError(
                f"dataset.tasks: {', '.join(unknown)} not a Visual Decathlon domain (domains: {', '.join(DOMAINS)})"
            )
        return list(self.cfg.tasks)

    def folder(self) -> Path:
        """``dataset.root``; unset is a ConfigError saying what it should be."""
        if self.root is None:
            raise ConfigError(
                "dataset.root: set it to the Visual Decathlon folder (decathlon-1.0, with annotations/ and data/)"
            )
        return self.root

    def _check_domain(self, domain: str) -> None:
        root = self.folder()
        if not root.is_dir():
            raise DataError(f"{root}: Visual Decathlon folder not found (dataset.root)")
        folder = root / "data" / domain
        if not folder.is_dir():
            raise DataError(
                f"{folder}: domain folder missing (extract the organisers' {domain}.tar there, "
                "or list the domains you have in dataset.tasks)"
            )

    def annotation_file(self, domain: str, split: str) -> Path:
        """``annotations/<domain>_<split>.json``; for test, the stripped file when no labelled one exists."""
        path = self.folder() / "annotations" / f"{domain}_{split}.json"
        if split == "test" and not path.is_file():
            stripped = self.folder() / "annotations" / f"{domain}_test_stripped.json"
            if stripped.is_file():
                return stripped
        return path

    def annotations(self, domain: str, split: str) -> Annotations:
        """Parsed (and cached) annotations of one domain split."""
        key = (domain, split)
        if key not in self._annotations:
            self._check_domain(domain)
            self._annotations[key] = read_annotations(self.annotation_file(domain, split))
        return self._annotations[key]

    def all_tasks(self) -> list[Task]:
        """One classification task per domain, sized by the train file's categories.

        Without ``dataset.root`` (e.g. ``mtlkit params``), the official release's class counts.
        """
        if self.root is None:
            return [classification_task(d, DOMAIN_CLASSES[d]) for d in self.domains()]
        return [classification_task(d, len(self.annotations(d, "train").category_ids)) for d in self.domains()]

    def _labelled(self, domain: str, split: str) -> tuple[list[Path], np.ndarray]:
        ann = self.annotations(domain, split)
        if ann.labels is None:
            raise DataError(
                f"{ann.path}: no annotations (the organisers withhold test labels); evaluate on val "
                "or submit predictions to the challenge server"
            )
        classes = self.annotations(domain, "train").category_ids
        index = {c: i for i, c in enumerate(classes)}
        labels = np.empty(len(ann.labels), dtype=np.int64)
        for i, c in enumerate(ann.labels.tolist()):
            if c not in index:
                raise DataError(f"{ann.path}: category id {c} is not among the train split's categories")
            labels[i] = index[c]
        paths = [self._image_path(f) for f in ann.files]
        require_files(paths, ann.path)
        cap = {"train": self.cfg.n_train, "val": self.cfg.n_val}.get(split)
        if cap is not None and cap < len(paths):
            keep = np.sort(np.random.default_rng([self.cfg.seed, len(paths)]).permutation(len(paths))[:cap])
            paths, labels = [paths[i] for i in keep], labels[keep]
        return paths, labels

    def _image_path(self, file_name: str) -> Path:
        root = self.folder()
        path = root / file_name
        if not file_name.startswith("data/") and not path.exists():
            return root / "data" / file_name
        return path

    def domain_stats(self, domain: str) -> tuple[Tensor, Tensor]:
        """Channel mean/std of the domain, from up to ``stats_images`` evenly spaced train images."""
        if domain not in self._stats:
            paths, labels = self._labelled(domain, "train")
            if not paths:
                raise DataError(f"{self.annotation_file(domain, 'train')}: no training images")
            pick = np.unique(np.linspace(0, len(paths) - 1, min(self.stats_images, len(paths))).round().astype(int))
            probe = DomainImages(domain, paths, labels, self.size, torch.zeros(3), torch.ones(3), augment=False)
            self._stats[domain] = channel_stats([probe.load(int(i)) for i in pick])
        return self._stats[domain]

    def dataset(self, split: str, train: bool) -> MultiDomainDataset:
        """All configured domains of ``split`` as one dataset (batch with :meth:`batch_sampler`)."""
        if split not in self.splits:
            raise ConfigError(f"split {split!r}: dataset 'decathlon' has {', '.join(self.splits)}")
        parts = []
        for d in self.domains():
            paths, labels = self._labelled(d, split)
            mean, std = self.domain_stats(d)
            parts.append((d, DomainImages(d, paths, labels, self.size, mean, std, train and self.cfg.augment)))
        return MultiDomainDataset(parts)
