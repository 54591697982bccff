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

import colorsys
import json
import os
import shutil
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mtlkit.errors import ConfigError, DataError
from mtlkit.io import atomic_write_json, pid_alive

__all__ = ["CLASS_NAMES", "VERSION", "cache_name", "ensure_generated", "generate", "render_scene", "sample_seed"]

#: bump whenever the rendered bytes change, so old caches are not reused
VERSION = 1
#: horizontal field of view of the camera, degrees
HFOV_DEG = 62.0

CLASS_NAMES: dict[int, list[str]] = {
    13: [
        "floor",
        "wall",
        "ceiling",
        "bed",
        "sofa",
        "chair",
        "table",
        "cabinet",
        "tv",
        "painting",
        "window",
        "books",
        "object",
    ],
    7: ["floor", "wall", "ceiling", "soft_furniture", "hard_furniture", "wall_decor", "props"],
    2: ["layout", "object"],
}

# fine (13-class) id -> coarse id
_MERGE: dict[int, np.ndarray] = {
    13: np.arange(13, dtype=np.int64),
    7: np.array([0, 1, 2, 3, 3, 4, 4, 4, 5, 5, 1, 6, 6], dtype=np.int64),
    2: np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1], dtype=np.int64),
}

FLOOR, WALL, CEILING, BED, SOFA, CHAIR, TABLE, CABINET, TV, PAINTING, WINDOW, BOOKS, OBJECT = range(13)

_SPLITS = {"train": 0, "val": 1}
_KINDS = ("image", "label", "depth", "normal")
_EPS = 1e-4

#: an array or a scalar: the intersection helpers broadcast over either
_A = np.ndarray | float

# texture codes
_FLAT, _CHECKER, _STRIPES, _PLANKS, _GRID, _GRAIN, _BLOTCH = range(7)


# --------------------------------------------------------------------------------------------
# scene description


@dataclass
class _Material:
    cls: int
    tex: int
    c1: tuple[float, float, float]
    c2: tuple[float, float, float]
    scale: float = 0.25  # pattern period / cell size, metres
    line: float = 0.05  # grid line width as a fraction of the cell
    noise: float = 0.04  # amplitude of the additive value noise
    nscale: float = 0.2  # feature size of that noise, metres
    seed: int = 0
    emissive: bool = False


@dataclass
class _Scene:
    room: np.ndarray  # (3,) room size; the room spans [0, size] on each world axis, y up
    materials: list[_Material] = field(default_factory=list)
    boxes: list[tuple] = field(default_factory=list)  # (centre(3), half(3), yaw, material)
    spheres: list[tuple] = field(default_factory=list)  # (centre(3), radius, material)
    cyls: list[tuple] = field(default_factory=list)  # (centre(3), radius, half height, material)
    cam_pos: np.ndarray | None = None
    cam_rot: np.ndarray | None = None  # (3, 3) columns = camera x, y, z axes in world coordinates
    light: np.ndarray | None = None
    light_power: float = 1.0
    ambient: float = 0.3


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    """RGB tuple of an HSV colour (hue wraps around)."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (r, g, b)


def _scaled(c: tuple[float, float, float], k: float) -> tuple[float, float, float]:
    """Colour ``c`` times ``k``, clipped to [0, 1]."""
    return tuple(min(max(x * k, 0.0), 1.0) for x in c)  # type: ignore[return-value]


def _material(rng: np.random.Generator, cls: int) -> _Material:
    """A random material with the colour/texture statistics of class ``cls``."""
    u = rng.uniform
    seed = int(rng.integers(0, 2**31 - 1))
    if cls == FLOOR:
        if u() < 0.6:
            c1 = _hsv(u(0.05, 0.10), u(0.45, 0.65), u(0.45, 0.7))
            return _Material(
                cls, _PLANKS, c1, _scaled(c1, u(0.7, 0.85)), u(0.12, 0.22), noise=0.06, nscale=0.05, seed=seed
            )
        c1 = _hsv(u(0.05, 0.15), u(0.0, 0.2), u(0.6, 0.85))
        return _Material(cls, _CHECKER, c1, _scaled(c1, u(0.7, 0.85)), u(0.3, 0.6), noise=0.03, seed=seed)
    if cls == WALL:
        c1 = _hsv(u(), u(0.05, 0.25), u(0.7, 0.9))
        if u() < 0.25:
            return _Material(
                cls, _STRIPES, c1, _scaled(c1, u(0.88, 0.94)), u(0.1, 0.2), noise=0.02, nscale=0.5, seed=seed
            )
        return _Material(cls, _FLAT, c1, c1, noise=0.03, nscale=0.6, seed=seed)
    if cls == CEILING:
        c1 = _hsv(u(), u(0.0, 0.05), u(0.88, 0.97))
        return _Material(cls, _FLAT, c1, c1, noise=0.02, nscale=0.5, seed=seed)
    if cls == BED:
        c1 = _hsv(u(0.08, 0.15), u(0.0, 0.15), u(0.85, 0.95))
        c2 = _hsv(u(), u(0.3, 0.5), u(0.7, 0.85))
        return _Material(cls, _STRIPES, c1, c2, u(0.2, 0.4), noise=0.03, nscale=0.1, seed=seed)
    if cls == SOFA:
        c1 = _hsv(u(), u(0.45, 0.75), u(0.35, 0.6))
        return _Material(cls, _FLAT, c1, c1, noise=0.12, nscale=0.025, seed=seed)
    if cls == CHAIR:
        c1 = _hsv(u(), u(0.0, 0.3), u(0.12, 0.3))
        return _Material(cls, _FLAT, c1, c1, noise=0.04, nscale=0.1, seed=seed)
    if cls == TABLE:
        c1 = _hsv(u(0.07, 0.11), u(0.35, 0.55), u(0.6, 0.8))
        return _Material(cls, _GRAIN, c1, _scaled(c1, u(0.75, 0.85)), u(0.3, 0.6), noise=0.03, seed=seed)
    if cls == CABINET:
        if u() < 0.5:
            c1 = _hsv(u(), u(0.0, 0.1), u(0.65, 0.9))
        else:
            c1 = _hsv(u(0.05, 0.1), u(0.4, 0.6), u(0.35, 0.55))
        return _Material(cls, _GRID, c1, _scaled(c1, 0.5), u(0.3, 0.5), line=u(0.03, 0.05), noise=0.03, seed=seed)
    if cls == TV:
        c1 = _hsv(u(0.55, 0.65), u(0.2, 0.5), u(0.03, 0.1))
        return _Material(cls, _FLAT, c1, c1, noise=0.02, nscale=0.1, seed=seed)
    if cls == PAINTING:
        h = u()
        c1 = _hsv(h, u(0.6, 0.9), u(0.5, 0.9))
        c2 = _hsv(h + u(0.3, 0.7), u(0.6, 0.9), u(0.5, 0.9))
        return _Material(cls, _BLOTCH, c1, c2, u(0.08, 0.2), noise=0.03, seed=seed)
    if cls == WINDOW:
        c1 = _hsv(u(0.55, 0.6), u(0.15, 0.35), u(0.95, 1.0))
        c2 = _hsv(0.0, 0.0, u(0.9, 0.97))
        return _Material(cls, _GRID, c1, c2, u(0.35, 0.6), line=0.06, noise=0.02, seed=seed, emissive=True)
    if cls == BOOKS:
        c1 = _hsv(u(), u(0.5, 0.9), u(0.35, 0.8))
        return _Material(cls, _FLAT, c1, c1, noise=0.03, nscale=0.05, seed=seed)
    if cls == OBJECT:
        h = u()
        c1 = _hsv(h, u(0.4, 0.9), u(0.4, 0.9))
        c2 = _hsv(h + u(0.25, 0.75), u(0.4, 0.9), u(0.4, 0.9))
        tex = (_FLAT, _STRIPES, _CHECKER)[int(rng.integers(0, 3))]
        return _Material(cls, tex, c1, c2, u(0.05, 0.15), noise=0.03, nscale=0.1, seed=seed)
    raise ValueError(f"unknown class {cls}")


def _rot_y(yaw: float, v: np.ndarray) -> np.ndarray:
    """Rotate the 3-vector ``v`` about the world up axis (y) by ``yaw`` radians."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([c * v[0] + s * v[2], v[1], -s * v[0] + c * v[2]])


class _Builder:
    """Adds materials and primitives to a scene and keeps the floor/wall occupancy for placement."""

    def __init__(self, rng: np.random.Generator, scene: _Scene, cam_xz: tuple[float, float]) -> None:
        self.rng = rng
        self.s = scene
        self.floor: list[tuple[float, float, float, float]] = [
            (cam_xz[0] - 0.45, cam_xz[0] + 0.45, cam_xz[1] - 0.45, cam_xz[1] + 0.45)
        ]
        self.wall_items: dict[int, list[tuple[float, float, float, float]]] = {0: [], 1: [], 2: []}
        self.supports: list[tuple[float, float, float, float, float, float]] = []

    def material(self, cls: int) -> int:
        """Append a fresh material of class ``cls``; returns its index."""
        self.s.materials.append(_material(self.rng, cls))
        return len(self.s.materials) - 1

    def box(self, base: tuple[float, float], yaw: float, local: tuple, half: tuple, mat: int) -> None:
        """Box with centre ``local`` in the frame of an object standing at ``base`` turned by ``yaw``."""
        c = _rot_y(yaw, np.asarray(local, dtype=float)) + np.array([base[0], 0.0, base[1]])
        self.s.boxes.append((c, np.asarray(half, dtype=float), yaw, mat))

    def place(self, hx: float, hz: float, against_wall: bool) -> tuple[float, float, float] | None:
        """Free floor spot (x, z, yaw) for a footprint of half sizes (hx, hz); its back (+z) to a wall."""
        rng, (sx, _, sz) = self.rng, self.s.room
        for _ in range(30):
            if against_wall:
                wall = int(rng.choice(3, p=[0.5, 0.25, 0.25]))
                yaw = (0.0, -np.pi / 2, np.pi / 2)[wall]
                ex, ez = (hx, hz) if wall == 0 else (hz, hx)
                if 2 * ex + 0.1 > (sx if wall == 0 else sz):
                    continue
                if wall == 0:
                    x, z = rng.uniform(ex + 0.05, sx - ex - 0.05), sz - ez - 0.01
                else:
                    lo, hi = max(ez + 0.05, sz * 0.3), sz - ez - 0.05
                    if lo >= hi:
                        continue
                    x, z = (ex + 0.01 if wall == 1 else sx - ex - 0.01), rng.uniform(lo, hi)
            else:
                yaw = rng.uniform(-np.pi, np.pi)
                c, s = abs(np.cos(yaw)), abs(np.sin(yaw))
                ex, ez = c * hx + s * hz, s * hx + c * hz
                if 2 * ex + 0.1 > sx or 2 * ez + 0.1 > sz:
                    return None
                x, z = rng.uniform(ex + 0.05, sx - ex - 0.05), rng.uniform(ez + 0.05, sz - ez - 0.05)
            if self.reserve(x, z, ex, ez):
                return x, z, yaw
        return None

    def reserve(self, x: float, z: float, ex: float, ez: float) -> bool:
        """Claim the floor rectangle centred at (x, z) with half sizes (ex, ez) unless it overlaps."""
        sx, _, sz = self.s.room
        if x - ex < 0 or x + ex > sx or z - ez < 0 or z + ez > sz:
            return False
        for x0, x1, z0, z1 in self.floor:
            if x - ex < x1 + 0.03 and x + ex > x0 - 0.03 and z - ez < z1 + 0.03 and z + ez > z0 - 0.03:
                return False
        self.floor.append((x - ex, x + ex, z - ez, z + ez))
        return True

    def wall_item(self, cls: int, w: float, h: float, yc: float, thick: float) -> None:
        """A thin box of class ``cls`` (w x h) hung on a random wall at centre height ``yc``."""
        rng, (sx, sy, sz) = self.rng, self.s.room
        yc = min(yc, sy - 0.05 - h / 2)
        for _ in range(20):
            wall = int(rng.choice(3, p=[0.5, 0.25, 0.25]))
            length = sx if wall == 0 else sz
            lo = 0.1 if wall == 0 else max(0.1, 0.3 * sz)
            if lo + w / 2 > length - 0.1 - w / 2:
                continue
            a = rng.uniform(lo + w / 2, length - 0.1 - w / 2)
            rect = (a - w / 2, a + w / 2, yc - h / 2, yc + h / 2)
            if any(
                r[0] < rect[1] + 0.05 and rect[0] < r[1] + 0.05 and r[2] < rect[3] + 0.05 and rect[2] < r[3] + 0.05
                for r in self.wall_items[wall]
            ):
                continue
            self.wall_items[wall].append(rect)
            mat = self.material(cls)
            if wall == 0:
                centre, half = (a, yc, sz - thick), (w / 2, h / 2, thick)
            else:
                centre, half = ((thick if wall == 1 else sx - thick), yc, a), (thick, h / 2, w / 2)
            self.s.boxes.append((np.array(centre), np.array(half), 0.0, mat))
            return


def _add_bed(b: _Builder) -> None:
    """Mattress box against a wall with a headboard at the wall end."""
    u = b.rng.uniform
    hx, hz, top = u(0.5, 0.9), u(0.95, 1.05), u(0.45, 0.6)
    spot = b.place(hx, hz, against_wall=True)
    if spot is None:
        return
    x, z, yaw = spot
    mat, head = b.material(BED), b.material(BED)
    b.s.materials[head].tex, b.s.materials[head].c1 = _FLAT, b.s.materials[mat].c2
    b.box((x, z), yaw, (0, top / 2, -0.03), (hx, top / 2, hz - 0.03), mat)
    hh = u(0.9, 1.15)
    b.box((x, z), yaw, (0, hh / 2, hz - 0.03), (hx, hh / 2, 0.03), head)


def _add_sofa(b: _Builder) -> None:
    """Seat block, back and two arms, back against a wall."""
    u = b.rng.uniform
    hx, hz = u(0.8, 1.2), u(0.4, 0.5)
    spot = b.place(hx, hz, against_wall=True)
    if spot is None:
        return
    x, z, yaw = spot
    mat = b.material(SOFA)
    seat, back, arm, t = u(0.4, 0.45), u(0.8, 0.95), u(0.55, 0.65), u(0.1, 0.15)
    b.box((x, z), yaw, (0, seat / 2, -t), (hx - t, seat / 2, hz - t), mat)
    b.box((x, z), yaw, (0, back / 2, hz - t), (hx, back / 2, t), mat)
    for side in (-1, 1):
        b.box((x, z), yaw, (side * (hx - t / 2), arm / 2, -t), (t / 2, arm / 2, hz - t), mat)


def _add_table(b: _Builder) -> None:
    """Top slab on four legs; registers the top as a support for books and small objects."""
    u = b.rng.uniform
    hx, hz, top = u(0.4, 0.8), u(0.3, 0.45), u(0.7, 0.78)
    spot = b.place(hx, hz, against_wall=False)
    if spot is None:
        return
    x, z, yaw = spot
    mat, leg = b.material(TABLE), u(0.02, 0.03)
    b.box((x, z), yaw, (0, top - 0.02, 0), (hx, 0.02, hz), mat)
    for sx_ in (-1, 1):
        for sz_ in (-1, 1):
            b.box(
                (x, z), yaw, (sx_ * (hx - 0.06), (top - 0.04) / 2, sz_ * (hz - 0.06)), (leg, (top - 0.04) / 2, leg), mat
            )
    b.supports.append((x, z, yaw, hx, hz, top))


def _add_chair(b: _Builder) -> None:
    """Seat on four legs with a back; placed at a table side when there is one, else anywhere."""
    rng, u = b.rng, b.rng.uniform
    h = u(0.2, 0.24)
    spot = None
    tables = [s for s in b.supports if s[5] < 0.8]
    if tables and u() < 0.7:
        tx, tz, tyaw, thx, thz, _ = tables[int(rng.integers(0, len(tables)))]
        side = int(rng.integers(0, 2)) * 2 - 1
        off = _rot_y(tyaw, np.array([u(-0.5, 0.5) * thx, 0.0, side * (thz + h + 0.06)]))
        x, z = tx + off[0], tz + off[2]
        yaw = tyaw if side > 0 else tyaw + np.pi
        c, s = abs(np.cos(yaw)), abs(np.sin(yaw))
        if b.reserve(x, z, (c + s) * h, (c + s) * h):
            spot = (x, z, yaw)
    if spot is None:
        spot = b.place(h, h, against_wall=False)
    if spot is None:
        return
    x, z, yaw = spot
    mat, seat, leg = b.material(CHAIR), u(0.43, 0.48), u(0.015, 0.025)
    b.box((x, z), yaw, (0, seat - 0.02, 0), (h, 0.02, h), mat)
    for sx_ in (-1, 1):
        for sz_ in (-1, 1):
            b.box(
                (x, z), yaw, (sx_ * (h - leg), (seat - 0.04) / 2, sz_ * (h - leg)), (leg, (seat - 0.04) / 2, leg), mat
            )
    back = u(0.35, 0.5)
    b.box((x, z), yaw, (0, seat + back / 2, h - 0.02), (h, back / 2, 0.02), mat)


def _add_cabinet(b: _Builder) -> None:
    """Tall box against a wall; a low one becomes a support."""
    u = b.rng.uniform
    hx, hz, hgt = u(0.25, 0.6), u(0.18, 0.28), u(0.8, 2.0)
    spot = b.place(hx, hz, against_wall=True)
    if spot is None:
        return
    x, z, yaw = spot
    b.box((x, z), yaw, (0, hgt / 2, 0), (hx, hgt / 2, hz), b.material(CABINET))
    if hgt < 1.4:
        b.supports.append((x, z, yaw, hx, hz, hgt))


def _add_books(b: _Builder) -> None:
    """An upright row or a flat pile of books on a support (a pile may also sit on the floor)."""
    rng, u = b.rng, b.rng.uniform
    if not b.supports or u() < 0.25:
        spot = b.place(0.16, 0.16, against_wall=False)
        if spot is None:
            return
        x, z, yaw = spot
        hx = hz = 0.16
        top = 0.0
    else:
        x, z, yaw, hx, hz, top = b.supports[int(rng.integers(0, len(b.supports)))]
    if top == 0.0 or u() < 0.4:  # pile of lying books, each turned a little
        ax, az = max(hx - 0.14, 0.0), max(hz - 0.14, 0.0)
        px, pz = u(-ax, ax), u(-az, az)
        y = top
        for _ in range(int(rng.integers(2, 7))):
            t = u(0.02, 0.05)
            half = (u(0.08, 0.12), t / 2, u(0.1, 0.14))
            b.box((x, z), yaw, (px, y + t / 2, pz), half, b.material(BOOKS))
            b.s.boxes[-1] = (*b.s.boxes[-1][:2], yaw + u(-0.3, 0.3), b.s.boxes[-1][3])
            y += t
        return
    pos = u(-hx + 0.03, max(-hx + 0.04, hx - 0.4))
    depth = u(0.08, 0.12)
    zc = u(-hz + depth + 0.02, hz - depth - 0.02) if hz > depth + 0.03 else 0.0
    for _ in range(int(rng.integers(4, 11))):
        t, h = u(0.015, 0.035), u(0.18, 0.3)
        if pos + 2 * t > hx - 0.02:
            break
        b.box((x, z), yaw, (pos + t, top + h / 2, zc), (t, h / 2, depth), b.material(BOOKS))
        pos += 2 * t + 0.002


def _add_object(b: _Builder) -> None:
    """A ball, vase/bin or floor lamp, on the floor or on a support."""
    rng, u = b.rng, b.rng.uniform
    kind = rng.choice(3, p=[0.4, 0.4, 0.2])
    on_support = kind != 2 and b.supports and u() < 0.5
    if on_support:
        x, z, yaw, hx, hz, top = b.supports[int(rng.integers(0, len(b.supports)))]
        r = u(0.05, 0.12)
        if hx < r + 0.02 or hz < r + 0.02:
            return
        off = _rot_y(yaw, np.array([u(-hx + r, hx - r), 0.0, u(-hz + r, hz - r)]))
        x, z, y0 = x + off[0], z + off[2], top
    else:
        r = u(0.1, 0.28) if kind != 2 else u(0.15, 0.22)
        spot = b.place(r, r, against_wall=False)
        if spot is None:
            return
        x, z, _ = spot
        y0 = 0.0
    mat = b.material(OBJECT)
    if kind == 0:
        b.s.spheres.append((np.array([x, y0 + r, z]), r, mat))
    elif kind == 1:
        hh = u(0.1, 0.4) if not on_support else u(0.06, 0.15)
        b.s.cyls.append((np.array([x, y0 + hh, z]), r * u(0.6, 1.0), hh, mat))
    else:
        pole = u(1.2, 1.6)
        b.s.cyls.append((np.array([x, 0.015, z]), r, 0.015, mat))
        b.s.cyls.append((np.array([x, pole / 2, z]), u(0.012, 0.02), pole / 2, mat))
        b.s.spheres.append((np.array([x, pole + r * 0.8, z]), r, mat))


def _camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation (columns: camera x right, y down, z forward) from yaw/pitch/roll.

    Yaw 0 looks along world +z, positive pitch looks down, roll turns about the optical axis.
    """
    fwd = np.array([np.sin(yaw) * np.cos(pitch), -np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    cr, sr = np.cos(roll), np.sin(roll)
    right, down = cr * right + sr * down, -sr * right + cr * down
    return np.stack([right, down, fwd], axis=1)


def _sample_scene(rng: np.random.Generator) -> _Scene:
    """Random room, camera, light and furniture; every class-specific appearance comes from here."""
    u = rng.uniform
    room = np.array([u(3.5, 6.0), u(2.4, 3.0), u(3.5, 6.0)])
    scene = _Scene(room=room)
    cam = np.array([u(0.3, 0.7) * room[0], u(1.1, 1.7), u(0.35, 0.9)])
    b = _Builder(rng, scene, (cam[0], cam[2]))
    for cls in (FLOOR, WALL, CEILING):
        b.material(cls)

    # camera: looks into the room (+z) with random yaw, downward pitch and a little roll
    scene.cam_pos = cam
    scene.cam_rot = _camera_rotation(np.radians(u(-35, 35)), np.radians(u(-5, 20)), np.radians(u(-4, 4)))

    scene.light = np.array([u(0.25, 0.75) * room[0], room[1] - u(0.15, 0.3), u(0.3, 0.8) * room[2]])
    scene.light_power, scene.ambient = u(0.9, 1.3), u(0.25, 0.4)

    if u() < 0.45:
        _add_bed(b)
    if u() < 0.5:
        _add_sofa(b)
    for _ in range(int(rng.integers(0, 3))):
        _add_cabinet(b)
    for _ in range(int(rng.choice(3, p=[0.25, 0.5, 0.25]))):
        _add_table(b)
    for _ in range(int(rng.integers(0, 5))):
        _add_chair(b)
    for _ in range(int(rng.integers(1, 5))):
        _add_books(b)
    for _ in range(int(rng.integers(1, 6))):
        _add_object(b)
    for _ in range(int(rng.integers(0, 3))):
        w = u(0.8, 1.5)
        b.wall_item(WINDOW, w, u(1.0, 1.4), u(1.4, 1.7), 0.015)
    for _ in range(int(rng.integers(0, 4))):
        w = u(0.3, 1.0)
        b.wall_item(PAINTING, w, w * u(0.6, 1.3), u(1.4, 1.8), u(0.01, 0.025))
    if u() < 0.4:
        w = u(0.9, 1.3)
        b.wall_item(TV, w, w * 9 / 16, u(1.1, 1.4), 0.03)
    return scene


# --------------------------------------------------------------------------------------------
# ray casting: the intersection functions are elementwise and broadcast, so they serve both the
# search for the nearest primitive and the per-pixel pass on the winning one


def _slab(ox: _A, oy: _A, oz: _A, dx: _A, dy: _A, dz: _A, hx: _A, hy: _A, hz: _A) -> tuple[_A, _A, list[_A]]:
    """Entry/exit ray parameters of the box [-h, h] in its local frame, and the per-axis entries."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ax = [None, None, None]
        tn, tf = None, None
        for k, (o, d, h) in enumerate(((ox, dx, hx), (oy, dy, hy), (oz, dz, hz))):
            inv = 1.0 / d
            t1, t2 = (-h - o) * inv, (h - o) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            ax[k] = lo
            tn = lo if tn is None else np.maximum(tn, lo)
            tf = hi if tf is None else np.minimum(tf, hi)
    return tn, tf, ax


def _box_local(ox: _A, oy: _A, oz: _A, dx: _A, dy: _A, dz: _A, cos: _A, sin: _A) -> tuple[_A, ...]:
    """Ray origin offset (world) and direction turned into a box frame rotated by yaw about y."""
    return (cos * ox - sin * oz, oy, sin * ox + cos * oz, cos * dx - sin * dz, dy, sin * dx + cos * dz)


def _sphere_t(ox: _A, oy: _A, oz: _A, dx: _A, dy: _A, dz: _A, r: _A) -> np.ndarray:
    """Nearest positive hit with spheres (offsets o = origin - centre), numerically stable form."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = dx * dx + dy * dy + dz * dz
        tc = -(ox * dx + oy * dy + oz * dz) / a
        qx, qy, qz = ox + tc * dx, oy + tc * dy, oz + tc * dz
        h2 = r * r - (qx * qx + qy * qy + qz * qz)
        t = tc - np.sqrt(np.maximum(h2, 0) / a)
        return np.where((h2 > 0) & (t > _EPS), t, np.inf)


def _cyl_t(ox: _A, oy: _A, oz: _A, dx: _A, dy: _A, dz: _A, r: _A, hh: _A) -> tuple[np.ndarray, np.ndarray]:
    """Nearest positive hits with vertical capped cylinders: (side t, cap t), inf where missed."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = dx * dx + dz * dz
        tc = -(ox * dx + oz * dz) / a
        qx, qz = ox + tc * dx, oz + tc * dz
        h2 = r * r - (qx * qx + qz * qz)
        ts = tc - np.sqrt(np.maximum(h2, 0) / a)
        ys = oy + ts * dy
        side = np.where((h2 > 0) & (ts > _EPS) & (np.abs(ys) <= hh), ts, np.inf)
        cap = np.inf
        for sgn in (-1.0, 1.0):
            tp = (sgn * hh - oy) / dy
            px, pz = ox + tp * dx, oz + tp * dz
            cap = np.minimum(cap, np.where((px * px + pz * pz <= r * r) & (tp > _EPS), tp, np.inf))
        return side, cap


_BOX, _SPHERE, _CYL = range(3)


def _pack(scene: _Scene) -> dict[str, np.ndarray]:
    """All object primitives as float32 arrays: kind, centre, size, yaw cos/sin, bounding radius."""
    rows = [(_BOX, c, h, yaw, m) for c, h, yaw, m in scene.boxes]
    rows += [(_SPHERE, c, (r, r, r), 0.0, m) for c, r, m in scene.spheres]
    rows += [(_CYL, c, (r, hh, r), 0.0, m) for c, r, hh, m in scene.cyls]
    size = np.array([r[2] for r in rows], np.float64).reshape(-1, 3)
    kind = np.array([r[0] for r in rows], np.int64)
    radius = np.where(kind == _BOX, np.linalg.norm(size, axis=1), np.hypot(size[:, 0], size[:, 1]))
    yaw = np.array([r[3] for r in rows], np.float64)
    return {
        "kind": kind,
        "c": np.array([r[1] for r in rows], np.float32).reshape(-1, 3),
        "size": size.astype(np.float32),
        "cos": np.cos(yaw).astype(np.float32),
        "sin": np.sin(yaw).astype(np.float32),
        "radius": radius,
        "mat": np.array([r[4] for r in rows], np.int64),
    }


def _mat3(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``m @ v`` for a 3x3 ``m`` and (3, P) ``v``, written out (BLAS is slow for this shape)."""
    m = m.astype(v.dtype)
    return m[:, 0:1] * v[0] + m[:, 1:2] * v[1] + m[:, 2:3] * v[2]


def _pairs_t(prims: dict, prim: np.ndarray, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Ray parameter of the nearest positive hit for (primitive ``prim[m]``, ray ``d[:, m]``) pairs."""
    t = np.full(len(prim), np.inf, np.float32)
    kind = prims["kind"][prim]
    for code in (_BOX, _SPHERE, _CYL):
        sel = np.flatnonzero(kind == code)
        if sel.size == 0:
            continue
        j = prim[sel]
        ox, oy, oz = o[:, None] - prims["c"][j].T
        sx, sy, sz = prims["size"][j].T
        dx, dy, dz = d[:, sel]
        if code == _BOX:
            loc = _box_local(ox, oy, oz, dx, dy, dz, prims["cos"][j], prims["sin"][j])
            tn, tf, _ = _slab(*loc, sx, sy, sz)
            with np.errstate(invalid="ignore"):
                t[sel] = np.where((tn <= tf) & (tn > _EPS), tn, np.inf)
        elif code == _SPHERE:
            t[sel] = _sphere_t(ox, oy, oz, dx, dy, dz, sx)
        else:
            t[sel] = np.minimum(*_cyl_t(ox, oy, oz, dx, dy, dz, sx, sy))
    return t


def _cone_pairs(o: np.ndarray, d: np.ndarray, prims: dict) -> tuple[np.ndarray, np.ndarray]:
    """(primitive, ray) pairs whose ray from ``o`` lies in the cone around the bounding sphere."""
    v = prims["c"].astype(np.float64) - o
    dist = np.linalg.norm(v, axis=1)
    rad = prims["radius"] * 1.01 + 1e-3
    cos_max = np.where(dist > rad, np.sqrt(np.clip(1.0 - (rad / np.maximum(dist, 1e-9)) ** 2, 0, 1)) - 1e-4, -2)
    vh = (v / np.maximum(dist, 1e-9)[:, None]).astype(np.float32)
    dn = d / np.linalg.norm(d, axis=0)
    cosang = vh[:, 0:1] * dn[0] + vh[:, 1:2] * dn[1] + vh[:, 2:3] * dn[2]
    return np.nonzero(cosang >= cos_max[:, None].astype(np.float32))


def _screen_pairs(
    prims: dict, cam: np.ndarray, rot: np.ndarray, k: np.ndarray, height: int, width: int, dirs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(primitive, pixel) pairs inside the image rectangle bounding each primitive's projection.

    The rectangle bounds the projected corners of the primitive's (yawed) bounding box; a box
    reaching behind the camera plane gets the pixels of the cone around its bounding sphere.
    """
    sign = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], np.float64) * 2 - 1
    local = sign[None] * (prims["size"].astype(np.float64) * 1.001 + 1e-4)[:, None]  # (N, 8, 3)
    cs, sn = prims["cos"].astype(np.float64)[:, None], prims["sin"].astype(np.float64)[:, None]
    world = (
        np.stack(
            [cs * local[..., 0] + sn * local[..., 2], local[..., 1], -sn * local[..., 0] + cs * local[..., 2]], axis=-1
        )
        + prims["c"].astype(np.float64)[:, None]
    )
    pc = (world - cam) @ rot  # (N, 8, 3) camera coordinates
    z = pc[..., 2]
    front = (z > 1e-3).all(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = pc[..., 0] / z * k[0] + k[2]
        v = pc[..., 1] / z * k[1] + k[3]
    u0 = np.where(front, np.floor(u.min(1)), 0).clip(0, width).astype(np.int64)
    u1 = np.where(front, np.ceil(u.max(1)) + 1, width).clip(0, width).astype(np.int64)
    v0 = np.where(front, np.floor(v.min(1)), 0).clip(0, height).astype(np.int64)
    v1 = np.where(front, np.ceil(v.max(1)) + 1, height).clip(0, height).astype(np.int64)
    prim_l, pix_l = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for j in np.flatnonzero(front & (u1 > u0) & (v1 > v0)):
        pix = (np.arange(v0[j], v1[j])[:, None] * width + np.arange(u0[j], u1[j])[None, :]).ravel()
        pix_l.append(pix)
        prim_l.append(np.full(pix.size, j, np.int64))
    straddle = np.flatnonzero(~front & (z > 1e-3).any(axis=1))
    if straddle.size:  # reaches behind the camera plane: fall back to the bounding-sphere cone
        sub = {key: val[straddle] for key, val in prims.items()}
        prim, pix = _cone_pairs(cam, dirs, sub)
        prim_l.append(straddle[prim])
        pix_l.append(pix)
    return np.concatenate(prim_l), np.concatenate(pix_l)


def _nearest(
    o: np.ndarray, d: np.ndarray, prims: dict, pairs: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest object hit of rays from the point ``o`` along ``d`` (3, P): (t, primitive index or -1).

    Only candidate (primitive, ray) ``pairs`` are tested (default: the rays in the cone around
    each bounding sphere), so the cost follows the pixels each primitive covers. All pairs are
    intersected in one vectorised pass and reduced with a scatter-min over a key that packs
    (t, primitive) into one integer (positive float32 bit patterns order like the floats).
    """
    p, n = d.shape[1], len(prims["kind"])
    if n == 0 or p == 0:
        return np.full(p, np.inf, np.float32), np.full(p, -1, np.int64)
    prim, ray = _cone_pairs(o, d, prims) if pairs is None else pairs
    t = _pairs_t(prims, prim, o, d[:, ray])
    hit = np.isfinite(t)
    key = (t[hit].view(np.uint32).astype(np.int64) << 32) | prim[hit]
    best = np.full(p, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(best, ray[hit], key)
    missed = best == np.iinfo(np.int64).max
    t_best = (best >> 32).astype(np.uint32).view(np.float32)
    t_best[missed] = np.inf
    idx = np.where(missed, -1, best & 0xFFFFFFFF)
    return t_best, idx


def _room_hit(o: np.ndarray, d: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where rays from inside the room box leave it: (t, index of the axis whose plane they hit)."""
    with np.errstate(divide="ignore"):
        ts = np.stack([np.where(d[k] > 0, size[k] - o[k], -o[k]) / d[k] for k in range(3)])
    ts = np.where(np.isfinite(ts) & (ts > 0), ts, np.inf)
    axis = np.argmin(ts, axis=0)
    t = np.take_along_axis(ts, axis[None], axis=0)[0]
    return t.astype(np.float32), axis


# --------------------------------------------------------------------------------------------
# textures and shading


def _hash(ix: np.ndarray, iy: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer lattice point and seed."""
    with np.errstate(over="ignore"):
        h = (ix.astype(np.uint32) * np.uint32(0x8DA6B343)) ^ (iy.astype(np.uint32) * np.uint32(0xD8163841))
        h ^= seed.astype(np.uint32) * np.uint32(0xCB1AB31F)
        h ^= h >> np.uint32(15)
        h *= np.uint32(0x2C1B3C6D)
        h ^= h >> np.uint32(12)
        h *= np.uint32(0x297A2D39)
        h ^= h >> np.uint32(15)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 2**24)


def _value_noise(u: np.ndarray, v: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1): hashed lattice values, smoothstep-interpolated."""
    fu, fv = np.floor(u), np.floor(v)
    tu, tv = u - fu, v - fv
    tu, tv = tu * tu * (3 - 2 * tu), tv * tv * (3 - 2 * tv)
    iu, iv = fu.astype(np.int64), fv.astype(np.int64)
    a, b = _hash(iu, iv, seed), _hash(iu + 1, iv, seed)
    c, e = _hash(iu, iv + 1, seed), _hash(iu + 1, iv + 1, seed)
    top, bot = a + (b - a) * tu, c + (e - c) * tu
    return top + (bot - top) * tv


def _fbm(u: np.ndarray, v: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Two octaves of value noise, in [0, 1)."""
    return 0.65 * _value_noise(u, v, seed) + 0.35 * _value_noise(2.03 * u + 17.1, 2.03 * v + 31.7, seed + 1)


def _albedo(mat: np.ndarray, u: np.ndarray, v: np.ndarray, materials: list[_Material]) -> np.ndarray:
    """Per-pixel RGB albedo (3, P) from material index and surface coordinates in metres."""
    f = np.float32
    m = {k: np.array([getattr(x, k) for x in materials], f)[mat] for k in ("scale", "line", "noise", "nscale")}
    tex = np.array([x.tex for x in materials], np.int64)[mat]
    seed = np.array([x.seed for x in materials], np.int64)[mat]
    c1 = np.array([x.c1 for x in materials], f)[mat].T
    c2 = np.array([x.c2 for x in materials], f)[mat].T
    us, vs = u / m["scale"], v / m["scale"]
    mix = np.zeros_like(u)
    for code in np.unique(tex):
        sel = tex == code
        a, b, sd = us[sel], vs[sel], seed[sel]
        if code == _CHECKER:
            w = ((np.floor(a) + np.floor(b)) % 2).astype(f)
        elif code == _STRIPES:
            w = (np.floor(b) % 2).astype(f)
        elif code == _PLANKS:
            row = np.floor(b)
            w = _hash((np.floor(a * 0.4 + 0.37 * row)).astype(np.int64), row.astype(np.int64), sd)
            w = 0.6 * w + 0.4 * _value_noise(a * 6.0, b * 0.5 + row * 7.3, sd + 5)
            w = np.where((b - row) < 0.05, 1.0, w)
        elif code == _GRID:
            ln = m["line"][sel]
            w = (((a - np.floor(a)) < ln) | ((b - np.floor(b)) < ln)).astype(f)
        elif code == _GRAIN:
            w = _value_noise(a * 2.0, b * 30.0, sd) * 0.7 + 0.3 * _value_noise(a * 9.0, b * 80.0, sd + 2)
        elif code == _BLOTCH:
            w = (_fbm(a, b, sd) > 0.5).astype(f)
        else:
            continue
        mix[sel] = w
    alb = c1 + (c2 - c1) * mix
    n = (_fbm(u / m["nscale"], v / m["nscale"], seed + 11) - 0.5) * 2.0 * m["noise"]
    return np.clip(alb + n, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# the renderer


def _intrinsics(height: int, width: int) -> np.ndarray:
    """fx, fy, cx, cy of the fixed 62-degree camera at this image size."""
    fx = width / (2.0 * np.tan(np.radians(HFOV_DEG) / 2))
    return np.array([fx, fx, (width - 1) / 2.0, (height - 1) / 2.0], np.float64)


def _render(rng_seed: int, height: int, width: int) -> dict[str, np.ndarray]:
    """Sample and render one scene with 13-class labels (plus per-pixel surface ids, for tests)."""
    rng = np.random.default_rng(rng_seed)
    return _trace(_sample_scene(rng), rng, height, width)


def _trace(scene: _Scene, rng: np.random.Generator, height: int, width: int) -> dict[str, np.ndarray]:
    """Ray-cast ``scene``: 13-class labels, and ``surface`` ids (one per plane; ``% 8 == 7``: curved)."""
    prims = _pack(scene)
    kinds = prims["kind"]
    f32 = np.float32

    k = _intrinsics(height, width)
    vv, uu = np.mgrid[0:height, 0:width]
    dcam = np.stack([(uu.ravel() - k[2]) / k[0], (vv.ravel() - k[3]) / k[1], np.ones(height * width)])
    rot = scene.cam_rot
    d = _mat3(rot, dcam).astype(f32)  # world directions with unit z in the camera: t is the z-depth
    o = scene.cam_pos.astype(f32)
    p = d.shape[1]

    t_room, room_axis = _room_hit(o[:, None], d, scene.room.astype(f32))
    t_obj, idx = _nearest(o, d, prims, _screen_pairs(prims, o, rot, k, height, width, d))
    on_obj = t_obj < t_room
    t = np.where(on_obj, t_obj, t_room)
    x = o[:, None] + t * d

    normal = np.zeros((3, p), f32)
    su = np.zeros(p, f32)
    sv = np.zeros(p, f32)
    mat = np.zeros(p, np.int64)
    surface = np.zeros(p, np.int64)
    kind = np.where(on_obj, kinds[np.maximum(idx, 0)] if len(kinds) else -1, -1)

    # room: normal points inwards, against the ray along the exit axis
    sel = np.flatnonzero(~on_obj)
    ax = room_axis[sel]
    sgn = np.where(np.take_along_axis(d[:, sel], ax[None], 0)[0] > 0, 1, 0)
    normal[ax, sel] = np.where(sgn == 1, -1.0, 1.0)
    mat[sel] = np.where(ax == 1, np.where(sgn == 1, CEILING, FLOOR), WALL)
    surface[sel] = ax * 2 + sgn
    su[sel] = np.where(ax == 0, x[2, sel], x[0, sel])
    sv[sel] = np.where(ax == 1, x[2, sel], x[1, sel])

    # boxes: the entry axis of the slab test is the face hit
    sel = np.flatnonzero(kind == _BOX)
    if len(sel):
        j = idx[sel]
        c, h, cs, sn = prims["c"][j].T, prims["size"][j].T, prims["cos"][j], prims["sin"][j]
        loc = _box_local(o[0] - c[0], o[1] - c[1], o[2] - c[2], d[0, sel], d[1, sel], d[2, sel], cs, sn)
        _, _, entries = _slab(*loc, h[0], h[1], h[2])
        face = np.argmax(np.stack(entries), axis=0)
        dl = np.stack(loc[3:])
        nl = np.zeros((3, len(sel)), f32)
        nl[face, np.arange(len(sel))] = -np.sign(np.take_along_axis(dl, face[None], 0)[0])
        normal[:, sel] = np.stack([cs * nl[0] + sn * nl[2], nl[1], -sn * nl[0] + cs * nl[2]])
        pl = np.stack(loc[:3]) + t[sel] * dl + h
        su[sel] = np.where(face == 0, pl[2], pl[0])
        sv[sel] = np.where(face == 1, pl[2], pl[1])
        surface[sel] = (1 + j) * 8 + face * 2 + (nl.sum(0) > 0)

    # spheres: radial normal, latitude/longitude coordinates
    sel = np.flatnonzero(kind == _SPHERE)
    if len(sel):
        j = idx[sel]
        r = prims["size"][j, 0]
        n = (x[:, sel] - prims["c"][j].T) / r
        n /= np.linalg.norm(n, axis=0)
        normal[:, sel] = n
        su[sel] = r * np.arctan2(n[2], n[0])
        sv[sel] = r * np.arccos(np.clip(n[1], -1, 1))
        surface[sel] = (1 + j) * 8 + 7  # 7 marks a curved surface

    # cylinders: side (radial normal) or cap (vertical normal), whichever the ray hit first
    sel = np.flatnonzero(kind == _CYL)
    if len(sel):
        j = idx[sel]
        c, r, hh = prims["c"][j].T, prims["size"][j, 0], prims["size"][j, 1]
        side, cap = _cyl_t(o[0] - c[0], o[1] - c[1], o[2] - c[2], d[0, sel], d[1, sel], d[2, sel], r, hh)
        is_cap = cap <= side
        pl = x[:, sel] - c
        radial = np.stack([pl[0], np.zeros_like(pl[0]), pl[2]])
        radial /= np.maximum(np.linalg.norm(radial, axis=0), 1e-12)
        capn = np.stack([np.zeros_like(r), -np.sign(d[1, sel]), np.zeros_like(r)])
        normal[:, sel] = np.where(is_cap, capn, radial)
        su[sel] = np.where(is_cap, pl[0], r * np.arctan2(pl[2], pl[0]))
        sv[sel] = np.where(is_cap, pl[2], pl[1])
        surface[sel] = (1 + j) * 8 + np.where(is_cap, 2 + (capn[1] > 0), 7)
    mat[on_obj] = prims["mat"][idx[on_obj]]

    # shading: ambient + Lambertian point light with hard shadows (rays cast from the light)
    materials = scene.materials
    albedo = _albedo(mat, su, sv, materials)
    light = scene.light.astype(f32)
    xs = x + 2e-3 * normal
    to_l = light[:, None] - xs
    dist = np.linalg.norm(to_l, axis=0)
    cos = np.maximum((normal * to_l).sum(0) / dist, 0)
    lit = np.flatnonzero(cos > 0)
    vis = np.zeros(p, f32)
    if len(lit):
        ts, _ = _nearest(light, -to_l[:, lit], prims)
        vis[lit] = (ts >= 1.0).astype(f32)
    shade = scene.ambient + scene.light_power * cos * vis / (1.0 + 0.08 * dist * dist)
    emissive = np.array([m.emissive for m in materials])[mat]
    tint = np.array([1.0, rng.uniform(0.95, 1.0), rng.uniform(0.88, 0.97)], f32)[:, None]
    img = np.where(emissive, albedo, albedo * shade * tint)
    img = img * f32(rng.uniform(0.9, 1.1)) + rng.standard_normal(img.shape, f32) * f32(rng.uniform(0.005, 0.02))
    img = np.clip(img, 0.0, 1.0)

    ncam = _mat3(rot.T, normal)
    ncam /= np.linalg.norm(ncam, axis=0)
    cls = np.array([m.cls for m in materials], np.int64)[mat]
    return {
        "image": img.T.reshape(height, width, 3).astype(f32),
        "label": cls.reshape(height, width),
        "depth": t.reshape(height, width, 1).astype(f32),
        "normal": ncam.T.reshape(height, width, 3).astype(f32),
        "intrinsics": k,
        "surface": surface.reshape(height, width),
    }


def _check_args(height: int, width: int, num_classes: int) -> None:
    """ConfigError unless the image size and class scheme are supported."""
    if num_classes not in CLASS_NAMES:
        raise ConfigError(f"scenes: num_classes={num_classes} not supported; choose one of {sorted(CLASS_NAMES)}")
    if height < 8 or width < 8:
        raise ConfigError(f"scenes: image size {height}x{width} too small; height and width must be >= 8")


def render_scene(rng_seed: int, height: int, width: int, num_classes: int) -> dict[str, np.ndarray]:
    """Render one random room: image, label, depth, normal (HWC float32) and intrinsics (fx, fy, cx, cy)."""
    _check_args(height, width, num_classes)
    out = _render(int(rng_seed), height, width)
    out.pop("surface")
    out["label"] = _MERGE[num_classes][out["label"]].astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------
# cache on disk


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
