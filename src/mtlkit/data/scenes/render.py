"""The renderer: camera rays through every pixel, nearest hits, shadows and shading -> image, label, depth,
normal (:func:`render_scene`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtlkit.data.scenes.classes import _MERGE, CEILING, CLASS_NAMES, FLOOR, WALL
from mtlkit.data.scenes.raycast import (
    _BOX,
    _CYL,
    _SPHERE,
    _box_local,
    _cyl_t,
    _mat3,
    _nearest,
    _pack,
    _room_hit,
    _screen_pairs,
    _slab,
)
from mtlkit.data.scenes.scene import _sample_scene, _Scene
from mtlkit.data.scenes.shading import _albedo
from mtlkit.errors import ConfigError

#: horizontal field of view of the camera, degrees
HFOV_DEG = 62.0


def _intrinsics(height: int, width: int) -> np.ndarray:
    """fx, fy, cx, cy of the fixed 62-degree camera at this image size."""
    fx = width / (2.0 * np.tan(np.radians(HFOV_DEG) / 2))
    return np.array([fx, fx, (width - 1) / 2.0, (height - 1) / 2.0], np.float64)


def _render(rng_seed: int, height: int, width: int) -> dict[str, np.ndarray]:
    """Sample and render one scene with 13-class labels (plus per-pixel surface ids, for tests)."""
    rng = np.random.default_rng(rng_seed)
    return _trace(_sample_scene(rng), rng, height, width)


@dataclass
class _Surfaces:
    """What each pixel's nearest hit is: world normal, texture coordinates, material and surface id."""

    normal: np.ndarray  # (3, P) float32
    su: np.ndarray  # (P,) float32
    sv: np.ndarray  # (P,) float32
    mat: np.ndarray  # (P,) int64
    surface: np.ndarray  # (P,) int64

    @classmethod
    def empty(cls, p: int) -> _Surfaces:
        f32 = np.float32
        return cls(
            np.zeros((3, p), f32), np.zeros(p, f32), np.zeros(p, f32), np.zeros(p, np.int64), np.zeros(p, np.int64)
        )


def _room_surfaces(s: _Surfaces, on_obj: np.ndarray, room_axis: np.ndarray, d: np.ndarray, x: np.ndarray) -> None:
    """Pixels that see the room: the normal points inwards, against the ray along the exit axis."""
    sel = np.flatnonzero(~on_obj)
    ax = room_axis[sel]
    sgn = np.where(np.take_along_axis(d[:, sel], ax[None], 0)[0] > 0, 1, 0)
    s.normal[ax, sel] = np.where(sgn == 1, -1.0, 1.0)
    s.mat[sel] = np.where(ax == 1, np.where(sgn == 1, CEILING, FLOOR), WALL)
    s.surface[sel] = ax * 2 + sgn
    s.su[sel] = np.where(ax == 0, x[2, sel], x[0, sel])
    s.sv[sel] = np.where(ax == 1, x[2, sel], x[1, sel])


def _box_surfaces(
    s: _Surfaces, kind: np.ndarray, idx: np.ndarray, prims: dict, o: np.ndarray, d: np.ndarray, t: np.ndarray
) -> None:
    """Pixels that see a box: the entry axis of the slab test is the face hit."""
    sel = np.flatnonzero(kind == _BOX)
    if len(sel):
        j = idx[sel]
        c, h, cs, sn = prims["c"][j].T, prims["size"][j].T, prims["cos"][j], prims["sin"][j]
        loc = _box_local(o[0] - c[0], o[1] - c[1], o[2] - c[2], d[0, sel], d[1, sel], d[2, sel], cs, sn)
        _, _, entries = _slab(*loc, h[0], h[1], h[2])
        face = np.argmax(np.stack(entries), axis=0)
        dl = np.stack(loc[3:])
        nl = np.zeros((3, len(sel)), np.float32)
        nl[face, np.arange(len(sel))] = -np.sign(np.take_along_axis(dl, face[None], 0)[0])
        s.normal[:, sel] = np.stack([cs * nl[0] + sn * nl[2], nl[1], -sn * nl[0] + cs * nl[2]])
        pl = np.stack(loc[:3]) + t[sel] * dl + h
        s.su[sel] = np.where(face == 0, pl[2], pl[0])
        s.sv[sel] = np.where(face == 1, pl[2], pl[1])
        s.surface[sel] = (1 + j) * 8 + face * 2 + (nl.sum(0) > 0)


def _sphere_surfaces(s: _Surfaces, kind: np.ndarray, idx: np.ndarray, prims: dict, x: np.ndarray) -> None:
    """Pixels that see a sphere: radial normal, latitude/longitude coordinates."""
    sel = np.flatnonzero(kind == _SPHERE)
    if len(sel):
        j = idx[sel]
        r = prims["size"][j, 0]
        n = (x[:, sel] - prims["c"][j].T) / r
        n /= np.linalg.norm(n, axis=0)
        s.normal[:, sel] = n
        s.su[sel] = r * np.arctan2(n[2], n[0])
        s.sv[sel] = r * np.arccos(np.clip(n[1], -1, 1))
        s.surface[sel] = (1 + j) * 8 + 7  # 7 marks a curved surface


def _cylinder_surfaces(
    s: _Surfaces, kind: np.ndarray, idx: np.ndarray, prims: dict, o: np.ndarray, d: np.ndarray, x: np.ndarray
) -> None:
    """Pixels that see a cylinder: side (radial normal) or cap (vertical normal), whichever the ray hit first."""
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
        s.normal[:, sel] = np.where(is_cap, capn, radial)
        s.su[sel] = np.where(is_cap, pl[0], r * np.arctan2(pl[2], pl[0]))
        s.sv[sel] = np.where(is_cap, pl[2], pl[1])
        s.surface[sel] = (1 + j) * 8 + np.where(is_cap, 2 + (capn[1] > 0), 7)


def _shade(
    scene: _Scene, rng: np.random.Generator, s: _Surfaces, x: np.ndarray, prims: dict, light: np.ndarray
) -> np.ndarray:
    """(3, P) image: ambient + Lambertian point light with hard shadows (rays cast from the light), emissive
    materials unlit, a white-balance tint, exposure jitter and pixel noise."""
    f32 = np.float32
    p = x.shape[1]
    materials = scene.materials
    albedo = _albedo(s.mat, s.su, s.sv, materials)
    xs = x + 2e-3 * s.normal
    to_l = light[:, None] - xs
    dist = np.linalg.norm(to_l, axis=0)
    cos = np.maximum((s.normal * to_l).sum(0) / dist, 0)
    lit = np.flatnonzero(cos > 0)
    vis = np.zeros(p, f32)
    if len(lit):
        ts, _ = _nearest(light, -to_l[:, lit], prims)
        vis[lit] = (ts >= 1.0).astype(f32)
    shade = scene.ambient + scene.light_power * cos * vis / (1.0 + 0.08 * dist * dist)
    emissive = np.array([m.emissive for m in materials])[s.mat]
    tint = np.array([1.0, rng.uniform(0.95, 1.0), rng.uniform(0.88, 0.97)], f32)[:, None]
    img = np.where(emissive, albedo, albedo * shade * tint)
    img = img * f32(rng.uniform(0.9, 1.1)) + rng.standard_normal(img.shape, f32) * f32(rng.uniform(0.005, 0.02))
    return np.clip(img, 0.0, 1.0)


def _trace(scene: _Scene, rng: np.random.Generator, height: int, width: int) -> dict[str, np.ndarray]:
    """Ray-cast ``scene``: 13-class labels, and ``surface`` ids (one per plane; ``% 8 == 7``: curved)."""
    prims = _pack(scene)
    kinds = prims["kind"]
    f32 = np.float32

    k = _intrinsics(height, width)
    vv, uu = np.mgrid[0:height, 0:width]
    dcam = np.stack([(uu.ravel() - k[2]) / k[0], (vv.ravel() - k[3]) / k[1], np.ones(height * width)])
    assert scene.cam_rot is not None and scene.cam_pos is not None and scene.light is not None, "scene not sampled"
    rot = scene.cam_rot
    d = _mat3(rot, dcam).astype(f32)  # world directions with unit z in the camera: t is the z-depth
    o = scene.cam_pos.astype(f32)
    p = d.shape[1]

    t_room, room_axis = _room_hit(o[:, None], d, scene.room.astype(f32))
    t_obj, idx = _nearest(o, d, prims, _screen_pairs(prims, o, rot, k, height, width, d))
    on_obj = t_obj < t_room
    t = np.where(on_obj, t_obj, t_room)
    x = o[:, None] + t * d

    s = _Surfaces.empty(p)
    kind = np.where(on_obj, kinds[np.maximum(idx, 0)] if len(kinds) else -1, -1)
    _room_surfaces(s, on_obj, room_axis, d, x)
    _box_surfaces(s, kind, idx, prims, o, d, t)
    _sphere_surfaces(s, kind, idx, prims, x)
    _cylinder_surfaces(s, kind, idx, prims, o, d, x)
    s.mat[on_obj] = prims["mat"][idx[on_obj]]
    img = _shade(scene, rng, s, x, prims, scene.light.astype(f32))

    ncam = _mat3(rot.T, s.normal)
    ncam /= np.linalg.norm(ncam, axis=0)
    cls = np.array([m.cls for m in scene.materials], np.int64)[s.mat]
    return {
        "image": img.T.reshape(height, width, 3).astype(f32),
        "label": cls.reshape(height, width),
        "depth": t.reshape(height, width, 1).astype(f32),
        "normal": ncam.T.reshape(height, width, 3).astype(f32),
        "intrinsics": k,
        "surface": s.surface.reshape(height, width),
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
