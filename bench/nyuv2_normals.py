"""Accuracy of NYUv2 normal estimators on synthetic Kinect-like frames whose planes are known exactly.

Each frame is a room (floor, ceiling, back and side walls) with a cabinet standing on the floor,
seen at 640x480 through the NYUv2 Kinect intrinsics from a pitched and yawed camera 1.2 m above
the floor. Depth is quantised as the Kinect's disparity is: ``k / z`` plus noise is rounded to an
integer, ``k = 1 / 2.85e-3`` m, so a depth step is ``2.85e-3 * z^2`` (66 mm at 4.9 m); the noise is
white noise smoothed over ``--noise-px`` pixels (the sensor's correlation window), scaled to
``--noise`` disparity units before rounding. Reported: median / mean angle (degrees) between the
estimated and the true normal on walls (back, sides), floor, and near edges (pixels within 8 px of
a boundary between two surfaces), and the seconds per frame.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/nyuv2_normals.py [--frames 4] [--robust] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from mtlkit.data.prepare_nyuv2 import (
    Intrinsics,
    backproject,
    bilateral_smooth,
    kinect_intrinsics,
    normals_from_depth,
    quantisation_step,
    window_moments,
)

H, W = 480, 640
#: surface ids of the synthetic room
SURFACES = {"floor": 0, "ceiling": 1, "back": 2, "left": 3, "right": 4, "cabinet": 5}


def _rotation(pitch: float, yaw: float) -> np.ndarray:
    cp, sp, cy, sy = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return ry @ rx


def render_room(back: float, pitch: float, yaw: float, k: Intrinsics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact depth (H x W), true camera-space normals (H x W x 3) and surface ids of one room."""
    rot = _rotation(-pitch, yaw)  # camera -> room (a positive pitch looks down)
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    ray = np.stack([(u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones_like(u)], -1)  # z = 1: t is depth
    d = ray @ rot.T  # ray directions in room coordinates (x right, y down, z forward)
    # room planes: (axis, coordinate, inward normal in room coordinates, id)
    planes = [
        (1, 1.2, (0, -1, 0), 0),
        (1, -1.4, (0, 1, 0), 1),
        (2, back, (0, 0, -1), 2),
        (0, -2.0, (1, 0, 0), 3),
        (0, 2.2, (-1, 0, 0), 4),
    ]
    depth = np.full((H, W), np.inf)
    ids = np.full((H, W), -1)
    normal_room = np.zeros((H, W, 3))
    for axis, coord, n, sid in planes:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = coord / d[..., axis]
        hit = (t > 0) & (t < depth)
        depth[hit], ids[hit], normal_room[hit] = t[hit], sid, n
    # cabinet: an axis-aligned box on the floor in front of the back wall (slab intersection)
    lo, hi = np.array([-0.7, 0.3, back - 1.4]), np.array([0.5, 1.2, back - 0.8])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = lo / d, hi / d
    tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
    t_in, t_out = tmin.max(-1), tmax.min(-1)
    hit = (t_in < t_out) & (t_in > 0) & (t_in < depth)
    face = tmin.argmax(-1)
    n_box = np.zeros((H, W, 3))
    np.put_along_axis(n_box, face[..., None], -np.sign(np.take_along_axis(d, face[..., None], -1)), -1)
    depth[hit], ids[hit], normal_room[hit] = t_in[hit], SURFACES["cabinet"], n_box[hit]
    normal = normal_room @ rot  # room -> camera
    return depth, normal, ids


def kinect_quantise(depth: np.ndarray, noise: float, noise_px: float, rng: np.random.Generator) -> np.ndarray:
    """Depth through the Kinect's integer disparity: round(k / z + correlated noise), back to metres."""
    kq = 1.0 / 2.85e-3
    n = rng.normal(size=depth.shape)
    if noise_px > 0:
        n = ndimage.gaussian_filter(n, noise_px)
    n *= noise / n.std()
    return (kq / np.round(kq / depth + n)).astype(np.float32)


def angles(est: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Angle in degrees between unit vectors (NaN where the estimate is 0, i.e. undetermined)."""
    norm = np.linalg.norm(est, axis=-1)
    cos = np.clip((est * true).sum(-1) / np.where(norm > 0, norm, np.nan), -1, 1)
    return np.degrees(np.arccos(cos))


def power_iteration(cov: np.ndarray, iterations: int = 6) -> np.ndarray:
    """The estimator before: power iteration on adj(C) from its largest column, ``iterations`` steps."""
    c00, c11, c22 = cov[..., 0, 0], cov[..., 1, 1], cov[..., 2, 2]
    c01, c02, c12 = cov[..., 0, 1], cov[..., 0, 2], cov[..., 1, 2]
    adj = np.empty_like(cov)
    adj[..., 0, 0], adj[..., 1, 1], adj[..., 2, 2] = c11 * c22 - c12**2, c00 * c22 - c02**2, c00 * c11 - c01**2
    adj[..., 0, 1] = adj[..., 1, 0] = c02 * c12 - c01 * c22
    adj[..., 0, 2] = adj[..., 2, 0] = c01 * c12 - c02 * c11
    adj[..., 1, 2] = adj[..., 2, 1] = c01 * c02 - c00 * c12
    best = np.linalg.norm(adj, axis=-1).argmax(-1)
    vec = np.take_along_axis(adj, best[..., None, None], axis=-2)[..., 0, :]
    for _ in range(iterations):
        vec = vec / np.linalg.norm(vec, axis=-1, keepdims=True).clip(1e-300)
        vec = np.einsum("...ij,...j->...i", adj, vec)
    return vec / np.linalg.norm(vec, axis=-1, keepdims=True).clip(1e-300)


def _orient(normal: np.ndarray, pts: np.ndarray, ok: np.ndarray) -> np.ndarray:
    normal = np.where(((normal * pts).sum(-1) > 0)[..., None], -normal, normal)
    return np.where(ok[..., None], normal, 0.0)


def legacy_normals(depth: np.ndarray, k: Intrinsics, window: int = 5) -> np.ndarray:
    """mtlkit's estimator before this change: 5-pixel window, 6 power iterations."""
    valid = depth > 0
    pts = backproject(np.where(valid, depth, 0.0), k)
    count, cov = window_moments(pts, valid.astype(np.float64), window)
    return _orient(power_iteration(cov), pts, valid & (count >= window + 1))


def robust_normals(depth: np.ndarray, k: Intrinsics, window: int = 15, iterations: int = 2) -> np.ndarray:
    """IRLS plane fits: Cauchy weights on point-to-plane residuals in units of the quantisation step."""
    import torch
    import torch.nn.functional as F

    valid = depth > 0
    pts = backproject(np.where(valid, depth, 0.0), k)
    h, w = depth.shape
    r = window // 2
    grid = torch.from_numpy(np.concatenate([pts, valid[..., None]], -1)).permute(2, 0, 1)[None]
    grid = F.pad(grid, (r, r, r, r))
    out = np.zeros((h, w, 3))
    step = torch.from_numpy(np.maximum(quantisation_step(depth.astype(np.float64)), 1e-3))
    for r0 in range(0, h, 32):
        r1 = min(h, r0 + 32)
        patch = F.unfold(grid[:, :, r0 : r1 + 2 * r], window)  # 1 x (4 * window^2) x (rows * w)
        patch = patch.view(4, window * window, -1).permute(2, 1, 0)  # pixels x points x (xyz, valid)
        p, wt = patch[..., :3], patch[..., 3].clone()
        s = step[r0:r1].reshape(-1, 1)
        for it in range(iterations + 1):
            n_w = wt.sum(1, keepdim=True).clamp(min=1e-12)
            mean = (wt[..., None] * p).sum(1, keepdim=True) / n_w[..., None]
            d = p - mean
            cov = torch.einsum("np,npi,npj->nij", wt, d, d) / n_w[..., None]
            vec = torch.linalg.eigh(cov)[1][:, :, 0]
            if it < iterations:
                res = (d * vec[:, None, :]).sum(-1) / s
                wt = patch[..., 3] / (1 + res**2)
        out[r0:r1] = vec.view(r1 - r0, w, 3).numpy()
    count, _ = window_moments(pts, valid.astype(np.float64), window)
    return _orient(out, pts, valid & (count >= window + 1))


def methods(k: Intrinsics, robust: bool = False) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The estimators compared: name -> depth -> normals."""
    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {"window 5, power x6 (before)": lambda d: legacy_normals(d, k)}
    for w in (5, 9, 15, 21):
        out[f"window {w}"] = lambda d, w=w: normals_from_depth(d, k, window=w)
    for scale in (3.0, 4.0, 5.0, 6.0):
        out[f"adaptive {scale:g} px/m"] = lambda d, s=scale: normals_from_depth(d, k, "adaptive", s)
    if robust:  # about 280 s per frame on one core
        out["robust (IRLS) 15"] = lambda d: robust_normals(d, k, 15)
    out["bilateral + window 5"] = lambda d: normals_from_depth(bilateral_smooth(d, 7), k, window=5)
    out["bilateral + window 9"] = lambda d: normals_from_depth(bilateral_smooth(d, 7), k, window=9)
    out["bilateral + adaptive 3"] = lambda d: normals_from_depth(bilateral_smooth(d, 7), k, "adaptive", 3.0)
    out["bilateral + adaptive 4"] = lambda d: normals_from_depth(bilateral_smooth(d, 7), k, "adaptive", 4.0)
    out["bilateral + adaptive 5"] = lambda d: normals_from_depth(bilateral_smooth(d, 7), k, "adaptive", 5.0)
    out["bilateral 11 + adaptive 4"] = lambda d: normals_from_depth(bilateral_smooth(d, 11), k, "adaptive", 4.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--noise", type=float, default=0.4, help="disparity noise std before rounding (units)")
    ap.add_argument("--noise-px", type=float, default=3.0, help="spatial correlation of the noise (pixels)")
    ap.add_argument("--robust", action="store_true", help="also the IRLS fit (slow: minutes per frame)")
    ap.add_argument("--only", nargs="*", default=None, help="method names to run (default all)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    k = kinect_intrinsics(H, W)
    rng = np.random.default_rng(0)
    setups = [(4.9, 0.25, 0.15), (3.5, 0.3, -0.25), (4.2, 0.2, 0.35), (3.0, 0.35, 0.0)][: args.frames]
    frames = []
    for back, pitch, yaw in setups:
        depth, normal, ids = render_room(back, pitch, yaw, k)
        edge = ndimage.maximum_filter(ids, 17) != ndimage.minimum_filter(ids, 17)
        frames.append((kinect_quantise(depth, args.noise, args.noise_px, rng), normal, ids, edge))
    steps = [float(quantisation_step(np.float64(z))) for z in (1.0, 3.0, 4.9)]
    print(f"depth step at 1 / 3 / 4.9 m: {', '.join(f'{1000 * s:.1f}' for s in steps)} mm")
    regions = {
        "walls": lambda ids, edge: np.isin(ids, [2, 3, 4]) & ~edge,
        "floor": lambda ids, edge: (ids == 0) & ~edge,
        "edges": lambda ids, edge: edge & (ids >= 0),
    }
    results = {}
    for name, fn in methods(k, args.robust).items():
        if args.only and name not in args.only:
            continue
        errs = {r: [] for r in regions}
        t0 = time.perf_counter()
        undetermined = 0
        for depth, normal, ids, edge in frames:
            est = fn(depth)
            err = angles(est, normal)
            undetermined += int((np.abs(est).sum(-1) == 0).sum())
            for r, sel in regions.items():
                errs[r].append(err[sel(ids, edge)])
        secs = (time.perf_counter() - t0) / len(frames)
        row = {}
        for r, parts in errs.items():
            e = np.concatenate(parts)
            row[r] = (float(np.nanmedian(e)), float(np.nanmean(e)))
        row["seconds"] = secs
        row["undetermined"] = undetermined
        results[name] = row
        print(
            f"{name:30s} "
            + "  ".join(f"{r} {row[r][0]:5.1f}/{row[r][1]:5.1f}" for r in regions)
            + f"  {secs:5.2f} s/frame",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
