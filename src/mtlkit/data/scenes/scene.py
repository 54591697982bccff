"""A scene's description (room, materials, boxes, spheres, cylinders, camera, light) and its random sampling:
furniture placed against walls and on the floor, books, objects, wall items, the camera and the light."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

from mtlkit.data.scenes.classes import (
    BED,
    BOOKS,
    CABINET,
    CEILING,
    CHAIR,
    FLOOR,
    OBJECT,
    PAINTING,
    SOFA,
    TABLE,
    TV,
    WALL,
    WINDOW,
)

# texture codes
_FLAT, _CHECKER, _STRIPES, _PLANKS, _GRID, _GRAIN, _BLOTCH = range(7)


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
