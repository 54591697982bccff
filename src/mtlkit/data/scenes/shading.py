"""Textures and shading: hashed value noise, fractal noise and each material's procedural albedo."""

from __future__ import annotations

import numpy as np

from mtlkit.data.scenes.scene import _BLOTCH, _CHECKER, _GRAIN, _GRID, _PLANKS, _STRIPES, _Material


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
