"""Training-time augmentation of dense multi-task samples: random scale-crop and horizontal flip.

Follows the augmentation the later official MTAN code applied to NYUv2 and CityScapes, with two
deliberate choices that keep every target exact:

- **Scale-crop.** A scale ``s`` is drawn from ``scales`` (default ``{1.0, 1.2, 1.5}``); a window of
  ``(int(H / s), int(W / s))`` pixels at a uniformly random position is cropped and resized back
  to ``(H, W)``. The image is resized bilinearly; labels, depth and normals with nearest-neighbour
  sampling, so labels stay integers (``-1`` kept), a missing depth/normal (``0``) stays exactly
  ``0`` and valid normals stay unit vectors (bilinear normals would need renormalising and would
  blend valid pixels with missing ones). Zooming in by ``s`` shows the scene as if the camera
  were ``s`` times closer, so metric depth is divided by ``s`` (inverse depth / disparity, as
  CityScapes distributes it, is multiplied by ``s``); normals do not change under this zoom.
- **Horizontal flip** with probability ``flip_prob``: every map is mirrored and the normals' x
  component is negated (camera x points right).

What a zoom or a flip does to a target is its task kind's to say (``TaskKind.resize``, ``zoom``,
``flip`` in :mod:`mtlkit.tasks`); this module only draws the crop and the flip.

Randomness comes only from the ``numpy.random.Generator`` passed in, so the dataset can derive it
from ``(seed, epoch, index)`` and results do not depend on the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.tasks import Task

DEFAULT_SCALES = (1.0, 1.2, 1.5)


def _nearest_index(out_size: int, in_size: int, start: int) -> Tensor:
    """Source indices of nearest-neighbour resampling ``in_size`` -> ``out_size`` (pixel centres)."""
    pos = (torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size)
    return (pos.floor().long().clamp(max=in_size - 1)) + start


class DenseAugment:
    """Random scale-crop + horizontal flip applied consistently to an image and its dense targets.

    ``kinds`` maps each target key of the sample to its :class:`Task` (or a task kind's name, for
    kinds whose augmentation needs no options); keys not in it are passed through unchanged.
    ``depth_is_inverse`` turns on the ``inverse`` option of tasks whose kind has one (inverse depth
    is multiplied by the scale instead of divided).
    """

    def __init__(
        self,
        kinds: dict[str, str | Task],
        scales: Sequence[float] = DEFAULT_SCALES,
        flip: bool = True,
        flip_prob: float = 0.5,
        depth_is_inverse: bool = False,
    ) -> None:
        scales = tuple(float(s) for s in scales)
        if not scales or any(s < 1.0 for s in scales):
            raise ConfigError(f"dataset.options.scales: every scale must be >= 1.0 (got {list(scales)})")
        if not 0.0 <= flip_prob <= 1.0:
            raise ConfigError(f"dataset.options.flip_prob: must be in [0, 1] (got {flip_prob})")
        self.targets = {key: _as_task(key, value, bool(depth_is_inverse)) for key, value in kinds.items()}
        self.scales = scales
        self.flip = bool(flip)
        self.flip_prob = float(flip_prob)
        self.depth_is_inverse = bool(depth_is_inverse)

    @classmethod
    def from_options(
        cls, kinds: dict[str, str | Task], options: dict[str, Any], depth_is_inverse: bool = False
    ) -> DenseAugment:
        """Build from ``dataset.options`` (keys ``scales``, ``flip``, ``flip_prob``; others ignored)."""
        scales = options.get("scales", DEFAULT_SCALES)
        if isinstance(scales, (int, float)) or not isinstance(scales, Sequence) or isinstance(scales, str):
            raise ConfigError(f"dataset.options.scales: expected a list of numbers (got {scales!r})")
        try:
            scales = [float(s) for s in scales]
        except (TypeError, ValueError):
            raise ConfigError(f"dataset.options.scales: expected a list of numbers (got {scales!r})") from None
        flip = options.get("flip", True)
        if not isinstance(flip, bool):
            raise ConfigError(f"dataset.options.flip: expected true or false (got {flip!r})")
        flip_prob = options.get("flip_prob", 0.5)
        if not isinstance(flip_prob, (int, float)) or isinstance(flip_prob, bool):
            raise ConfigError(f"dataset.options.flip_prob: expected a number (got {flip_prob!r})")
        return cls(kinds, scales, flip, float(flip_prob), depth_is_inverse)

    def __call__(self, sample: dict[str, Tensor], rng: np.random.Generator) -> dict[str, Tensor]:
        """A new sample dict with the same random crop/flip applied to the image and every target."""
        out = dict(sample)
        _, height, width = out["image"].shape
        scale = float(self.scales[int(rng.integers(len(self.scales)))])
        if scale != 1.0:
            ch, cw = max(1, int(height / scale)), max(1, int(width / scale))
            top = int(rng.integers(0, height - ch + 1))
            left = int(rng.integers(0, width - cw + 1))
            out = self._scale_crop(out, scale, top, left, ch, cw, height, width)
        if self.flip and rng.random() < self.flip_prob:
            out = self._hflip(out)
        return out

    def _scale_crop(
        self, sample: dict[str, Tensor], scale: float, top: int, left: int, ch: int, cw: int, h: int, w: int
    ) -> dict[str, Tensor]:
        """Crop the window and resize it back to (h, w): bilinear image, nearest targets."""
        out: dict[str, Tensor] = {}
        img = sample["image"][:, top : top + ch, left : left + cw]
        out["image"] = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        rows = _nearest_index(h, ch, top)
        cols = _nearest_index(w, cw, left)
        for key, value in sample.items():
            if key == "image":
                continue
            task = self.targets.get(key)
            if task is None:
                out[key] = value
                continue
            out[key] = task.spec.zoom(task, task.spec.resize(task, value, rows, cols), scale)
        return out

    def _hflip(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        """Mirror left-right; each target as its kind says (normals negate x)."""
        out: dict[str, Tensor] = {}
        for key, value in sample.items():
            task = self.targets.get(key)
            if key == "image":
                out[key] = torch.flip(value, dims=[-1]).contiguous()
            elif task is None:
                out[key] = value
            else:
                out[key] = task.spec.flip(task, value)
        return out


def _as_task(key: str, value: str | Task, inverse: bool) -> Task:
    """The task of a target key (a bare kind name becomes a task with that kind's defaults)."""
    task = value if isinstance(value, Task) else Task(key, value, 1, {}, "")
    task.spec  # noqa: B018  (an unknown kind is a ConfigError now, not at the first sample)
    if inverse and "inverse" in task.spec.defaults:
        task = task.with_options(inverse=True)
    return task
