"""Ray casting: analytic ray intersections with boxes, spheres, cylinders and the room, vectorised over
pixel/primitive pairs; the intersection functions are elementwise and broadcast, so they serve both the
search for the nearest primitive and the per-pixel pass on the winning one."""

from __future__ import annotations

import numpy as np

from mtlkit.data.scenes.scene import _Scene

_EPS = 1e-4

#: an array or a scalar: the intersection helpers broadcast over either
_A = np.ndarray | float


def _slab(ox: _A, oy: _A, oz: _A, dx: _A, dy: _A, dz: _A, hx: _A, hy: _A, hz: _A) -> tuple[_A, _A, list[_A]]:
    """Entry/exit ray parameters of the box [-h, h] in its local frame, and the per-axis entries."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ax: list[_A] = [0.0, 0.0, 0.0]  # each axis's entry, filled below
        tn: _A | None = None
        tf: _A | None = None
        for k, (o, d, h) in enumerate(((ox, dx, hx), (oy, dy, hy), (oz, dz, hz))):
            inv = 1.0 / d
            t1, t2 = (-h - o) * inv, (h - o) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            ax[k] = lo
            tn = lo if tn is None else np.maximum(tn, lo)
            tf = hi if tf is None else np.minimum(tf, hi)
    assert tn is not None and tf is not None
    return tn, tf, ax


def _box_local(ox: _A, oy: _A, oz: _A, dx: _A, dy: _A, dz: _A, cos: _A, sin: _A) -> tuple[_A, _A, _A, _A, _A, _A]:
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
        cap: np.ndarray | float = np.inf
        for sgn in (-1.0, 1.0):
            tp = (sgn * hh - oy) / dy
            px, pz = ox + tp * dx, oz + tp * dz
            cap = np.minimum(cap, np.where((px * px + pz * pz <= r * r) & (tp > _EPS), tp, np.inf))
        return side, np.asarray(cap)


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
    prim, ray = np.nonzero(cosang >= cos_max[:, None].astype(np.float32))
    return prim, ray


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
