"""Procedural indoor scenes: ray-cast rooms with furniture, giving image, segmentation, depth, normals.

Each sample is a real 3-D scene seen through a pinhole camera: a box-shaped room (floor, four
walls, ceiling) holding a random set of boxes, spheres and vertical cylinders (beds, sofas,
chairs with legs, tables, cabinets, books, balls, vases, floor lamps, and paintings, windows and
TVs on the walls). Every camera ray is intersected analytically, in NumPy, with every primitive
whose bounding box or bounding sphere it can reach (vectorised over all such pixel/primitive
pairs at once) and the nearest hit is kept, so the four outputs are exactly consistent:

* ``image`` float32 (H, W, 3) in [0, 1]: per-class procedural textures (planks, tiles, stripes,
  grid, wood grain, blotches, fabric noise) with per-object colour jitter, Lambertian shading
  from one point light plus ambient, hard shadows (shadow rays), emissive windows, and Gaussian
  pixel noise.
* ``depth`` float32 (H, W, 1), metres, **z-depth along the optical axis** (like Kinect / NYUv2
  depth), not the distance along the ray. Every pixel sees a surface, so depth is always > 0.
* ``normal`` float32 (H, W, 3): true unit surface normals in **camera coordinates with the
  OpenCV convention: x right, y down, z forward** (the viewing direction); every normal faces
  the camera (``dot(normal, ray) < 0``).
* ``label`` float32 (H, W): class id of the object each pixel sees, 0..C-1 (no pixel is
  ignored).
* ``intrinsics`` float64 (4,): ``fx, fy, cx, cy`` in pixels, with the OpenCV pixel convention:
  the pixel in row ``v``, column ``u`` looks along ``((u - cx) / fx, (v - cy) / fy, 1)``, so
  ``X = (u - cx) / fx * depth``, ``Y = (v - cy) / fy * depth``, ``Z = depth``. The horizontal
  field of view is fixed at 62 degrees (a Kinect-like sensor), square pixels, centred
  principal point.

Class schemes. The scene is always built and labelled with the 13 fine classes; the 7- and
2-class labels are merges of them, so one seed gives the same image (and depth, normals) under
every scheme, and the 2-class scheme is also a merge of the 7-class one.

===  ============  ===================================================  =============  =========
13   name          shape, size and appearance cues                      7              2
===  ============  ===================================================  =============  =========
0    floor         lowest plane; wood planks or checker tiles           0 floor        0 layout
1    wall          vertical room planes; pastel, plain or striped       1 wall         0 layout
2    ceiling       highest plane; near-white                            2 ceiling      0 layout
3    bed           large low box + headboard against a wall; cream,     3 soft         1 object
                   broad coloured stripes
4    sofa          seat, back and arms against a wall; saturated        3 soft         1 object
                   fabric with fine noise
5    chair         small seat on four legs with a back; dark, plain     4 hard         1 object
6    table         thin top on four legs (0.7-0.78 m); light wood grain 4 hard         1 object
7    cabinet       tall box against a wall; plain with door-line grid   4 hard         1 object
8    tv            thin 16:9 box on a wall; near black                  5 wall_decor   1 object
9    painting      thin box on a wall; vivid two-colour blotches        5 wall_decor   1 object
10   window        thin box on a wall; bright sky blue with white       1 wall         0 layout
                   mullions, unlit (emissive)
11   books         small boxes: upright rows or flat piles on tables,   6 props        1 object
                   cabinets or the floor; vivid flat colours
12   object        spheres and cylinders (balls, vases, bins, lamps);   6 props        1 object
                   random colours, stripes or checks
===  ============  ===================================================  =============  =========

Determinism: :func:`render_scene` is a pure function of its arguments (same seed -> same
bytes on the same platform). :func:`generate` renders sample ``i`` of a split from a seed
derived from ``(seed, split, i)`` only, so a sample never depends on how many others exist.

Cache layout (the NYUv2 preprocessed layout)::

    ROOT/meta.json                    generator, version, seed, size, classes, counts, camera
    ROOT/{train,val}/image/{i}.npy    float32 (H, W, 3) in [0, 1]
    ROOT/{train,val}/label/{i}.npy    float32 (H, W), class ids
    ROOT/{train,val}/depth/{i}.npy    float32 (H, W, 1), metres
    ROOT/{train,val}/normal/{i}.npy   float32 (H, W, 3), unit vectors

A cache is written into a hidden sibling folder and renamed to ``ROOT`` only when complete
(``meta.json`` is its last file), so a killed generation never looks like a cache.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

# "x as x": re-exported pieces of the renderer, still reached as mtlkit.data.scenes.<name> (tests/data/test_scenes.py
# builds and traces scenes by hand)
from mtlkit.data.scenes.classes import _MERGE, CLASS_NAMES
from mtlkit.data.scenes.classes import BED as BED
from mtlkit.data.scenes.classes import BOOKS as BOOKS
from mtlkit.data.scenes.classes import CABINET as CABINET
from mtlkit.data.scenes.classes import CEILING as CEILING
from mtlkit.data.scenes.classes import CHAIR as CHAIR
from mtlkit.data.scenes.classes import FLOOR as FLOOR
from mtlkit.data.scenes.classes import OBJECT as OBJECT
from mtlkit.data.scenes.classes import PAINTING as PAINTING
from mtlkit.data.scenes.classes import SOFA as SOFA
from mtlkit.data.scenes.classes import TABLE as TABLE
from mtlkit.data.scenes.classes import TV as TV
from mtlkit.data.scenes.classes import WALL as WALL
from mtlkit.data.scenes.classes import WINDOW as WINDOW
from mtlkit.data.scenes.raycast import _mat3 as _mat3
from mtlkit.data.scenes.raycast import _nearest as _nearest
from mtlkit.data.scenes.raycast import _pack as _pack
from mtlkit.data.scenes.raycast import _screen_pairs as _screen_pairs
from mtlkit.data.scenes.render import HFOV_DEG as HFOV_DEG
from mtlkit.data.scenes.render import _check_args, _intrinsics, _render, render_scene
from mtlkit.data.scenes.render import _trace as _trace
from mtlkit.data.scenes.scene import _camera_rotation as _camera_rotation
from mtlkit.data.scenes.scene import _material as _material
from mtlkit.data.scenes.scene import _sample_scene as _sample_scene
from mtlkit.data.scenes.scene import _Scene as _Scene
from mtlkit.errors import ConfigError, DataError
from mtlkit.io import atomic_write_json, pid_alive

__all__ = ["CLASS_NAMES", "VERSION", "cache_name", "ensure_generated", "generate", "render_scene", "sample_seed"]

#: bump whenever the rendered bytes change, so old caches are not reused
VERSION = 1

_SPLITS = {"train": 0, "val": 1}
#: the modality folders of a cache (the .npy layout's)
_KINDS = ("image", "label", "depth", "normal")


def sample_seed(seed: int, split: str, index: int) -> int:
    """The render seed of sample ``index`` of ``split``: a function of (seed, split, index) only."""
    state = np.random.SeedSequence([int(seed), _SPLITS[split], int(index)]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def cache_name(n_train: int, n_val: int, height: int, width: int, num_classes: int, seed: int = 0) -> str:
    """Folder name of a cache made with these arguments (used under ``ensure_generated``'s dir)."""
    return f"scenes-{num_classes}c-{height}x{width}-{n_train}-{n_val}-s{seed}-v{VERSION}"


def _meta(n_train: int, n_val: int, height: int, width: int, num_classes: int, seed: int) -> dict:
    """The meta.json content of a cache made with these arguments."""
    fx, fy, cx, cy = (float(v) for v in _intrinsics(height, width))
    return {
        "generator": "mtlkit.data.scenes",
        "version": VERSION,
        "seed": seed,
        "height": height,
        "width": width,
        "num_classes": num_classes,
        "class_names": CLASS_NAMES[num_classes],
        "counts": {"train": n_train, "val": n_val},
        "intrinsics": {"fx": fx, "fy": fy, "cx": cx, "cy": cy},
        "depth": "z-depth along the optical axis, metres",
        "normal": "unit vectors in camera coordinates, x right, y down, z forward; facing the camera",
        "ignore_index": -1,
    }


_MATCH_KEYS = ("generator", "version", "seed", "height", "width", "num_classes", "counts")


def _is_complete(root: Path, meta: dict) -> bool:
    """True if ``root`` holds a finished cache whose meta.json matches ``meta`` and every file."""
    try:
        have = json.loads((root / "meta.json").read_text())
        if any(have.get(k) != meta[k] for k in _MATCH_KEYS):
            return False
        for split, n in meta["counts"].items():
            want = {f"{i}.npy" for i in range(n)}
            for kind in _KINDS:
                if set(os.listdir(root / split / kind)) != want:
                    return False
    except (OSError, ValueError, AttributeError):
        return False
    return True


def _is_scenes_folder(root: Path) -> bool:
    """Whether ``root`` may be replaced: it has a scenes meta.json or nothing but cache entries."""
    try:
        if json.loads((root / "meta.json").read_text()).get("generator") == "mtlkit.data.scenes":
            return True
    except (OSError, ValueError, AttributeError):
        pass
    return set(os.listdir(root)) <= {"meta.json", *_SPLITS}

    return True


def _clean_stale(root: Path) -> None:
    """Remove partial caches of ``root`` left by killed generations on this host."""
    host = socket.gethostname()
    for p in root.parent.glob(f".{root.name}.partial-*"):
        parts = p.name.rsplit(".partial-", 1)[1].split("-")
        if len(parts) >= 3 and "-".join(parts[:-2]) == host and parts[-2].isdigit():
            if not pid_alive(int(parts[-2])):
                shutil.rmtree(p, ignore_errors=True)


def generate(
    root: str | Path,
    n_train: int,
    n_val: int,
    height: int,
    width: int,
    num_classes: int,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Render ``n_train`` + ``n_val`` scenes into ``root`` (replacing an old scenes cache there); returns root."""
    _check_args(height, width, num_classes)
    if n_train < 0 or n_val < 0 or seed < 0:
        raise ConfigError(f"scenes: n_train={n_train}, n_val={n_val}, seed={seed} must all be >= 0")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: exists and is not a folder; cannot write the scenes cache there")
    if root.exists() and not _is_scenes_folder(root):
        raise DataError(f"{root}: exists and is not a scenes cache (holds other files); not overwriting")
    root.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(root)
    tmp = root.parent / f".{root.name}.partial-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    meta = _meta(n_train, n_val, height, width, num_classes, seed)
    merge = _MERGE[num_classes]
    try:
        for split in _SPLITS:
            for kind in _KINDS:
                (tmp / split / kind).mkdir(parents=True)
        with tqdm(total=n_train + n_val, desc=f"scenes {height}x{width}", unit="img", disable=not progress) as bar:
            for split, n in (("train", n_train), ("val", n_val)):
                for i in range(n):
                    out = _render(sample_seed(seed, split, i), height, width)
                    out["label"] = merge[out["label"]].astype(np.float32)
                    for kind in _KINDS:
                        np.save(tmp / split / kind / f"{i}.npy", out[kind])
                    bar.update(1)
        atomic_write_json(tmp / "meta.json", meta)
        if _is_complete(root, meta):  # a concurrent writer finished the same cache first
            return root
        if root.exists():
            shutil.rmtree(root)
        try:
            os.replace(tmp, root)
        except OSError:
            if not _is_complete(root, meta):  # not a concurrent writer finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_generated(
    cache_dir: str | Path,
    n_train: int,
    n_val: int,
    height: int,
    width: int,
    num_classes: int,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """The cache folder ``cache_dir/cache_name(...)``, reused when complete and matching, else (re)made."""
    _check_args(height, width, num_classes)
    root = Path(cache_dir) / cache_name(n_train, n_val, height, width, num_classes, seed)
    if _is_complete(root, _meta(n_train, n_val, height, width, num_classes, seed)):
        return root
    return generate(root, n_train, n_val, height, width, num_classes, seed, progress)
