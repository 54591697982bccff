"""Convert the official NYUv2 labeled release into the ``.npy`` layout the ``nyuv2`` dataset reads.

Input: ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3, i.e. HDF5, read with h5py). MATLAB stores arrays
column-major, so h5py sees them transposed: ``images`` (N, 3, W, H) uint8, ``depths`` (N, W, H)
float metres, ``labels`` (N, W, H) uint16 with 894 classes and 0 = unlabeled.

Class mapping (user-supplied; the public files): ``classMapping40.mat`` (``mapClass``: 894 -> 40,
1-based) and ``class13Mapping.mat`` (``classMapping13.labels13``: 40 -> 13, 1-based, with names);
class ``k`` (1..13) is stored as ``k - 1``, unlabeled as -1. A direct 894 -> 13 map can instead be
given as a ``.npy`` or text file of 894 integers (0..12, -1 = ignore). Splits: ``splits.mat``
(``trainNdxs`` 795 -> ``train``, ``testNdxs`` 654 -> ``val``, 1-based), samples numbered in the
order the file lists them.

Resizing (default 480x640 -> 288x384): bilinear with antialiasing for the image, nearest for
labels and depth (no blending of classes or of missing depth).

Depth (``--depth``): ``filled`` (default) takes the release's ``depths``, in-painted by the
NYU toolbox (Levin et al.'s colorization) wherever the Kinect measured nothing, about a third of a
typical frame; ``raw`` takes ``rawDepths``, the measured depth projected into the colour camera,
and keeps 0 (and normal 0) where there was no measurement, so the losses and metrics, which skip
zeros as MTAN's masks do, never see invented depth. MTAN's own release corresponds to neither
exactly, as far as the authors' issues tell (lorenmt/mtan #10, #12, #42): images and depth were
rescaled after cropping the invalid border, the normals were taken from Eigen & Fergus's DNL
release (with its invalid-pixel masks, not computed from this depth), and depth is in metres with
0 at invalid pixels although the labelled release's filled ``depths`` has no zero: its depth
values are the filled ones, with holes where a mask said so.

Surface normals are estimated from the chosen depth at the release's full resolution and then
sampled at the same output pixels as the depth (estimating them from nearest-resized depth would
bend planes by the sub-pixel jitter of the resampling), in camera coordinates (x right, y down,
z forward, i.e. OpenCV's convention):

1. smooth the inverse depth (where a plane is affine and the Kinect's steps are uniform) with a
   bilateral filter (``--normal-smoothing``, 11x11, spatial sigma 2.75 px, range sigma 2 disparity
   steps, so edges between surfaces a few steps apart stay sharp);
2. back-project every pixel with the Kinect colour-camera intrinsics (fx=518.857901,
   fy=519.469611, cx=325.582449, cy=253.736166 at 640x480; scaled about pixel centres for
   another resolution): ``P = Z * ((u - cx) / fx, (v - cy) / fy, 1)``;
3. fit a plane (least squares) to the 3-D points of the valid pixels in a window around each
   pixel: the normal is the eigenvector of the smallest eigenvalue of their covariance (exact,
   batched ``torch.linalg.eigh``). The window grows with depth (``--normal-window adaptive``:
   4 px per metre, odd, 5..31 px) because the Kinect's depth step grows as ``2.85e-3 z^2``
   (66 mm at 4.9 m) while a window of w pixels spans ``w z / f`` of surface;
4. orient it towards the camera (``n . P < 0``);
5. set it to 0 where the pixel's depth is missing or fewer than ``window + 1`` neighbours have
   depth (too few points for a plane).

What the normals are: the orientation of the best plane through a few centimetres (near) to a
few decimetres (far) of surface, i.e. smoothed geometry, reliable on walls, floors and large
furniture faces. What they are not: exact per-pixel normals (a quantised Kinect cannot give
them), nor right at creases and depth edges, where the window spans two surfaces. Measured on
synthetic Kinect-quantised rooms (``bench/nyuv2_normals.py``, docs/results/nyuv2_normals/:
disparity rounded to integers, correlated noise, planes known exactly): median / mean angular
error on walls 9.9 / 11.2 degrees, floor 4.0 / 4.7, within 8 px of an edge 15.0 / 31.3, against
23.0 / 36.0, 8.9 / 9.5 and 20.1 / 28.9 with the former fixed 5-pixel window (the same noise model
gives 23.0 and 13.5 degrees on walls with 5- and 15-pixel windows, as a real NYUv2 wall at 4.9 m
gave 24.6 and 13.6).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from mtlkit.errors import ConfigError, DataError

#: Kinect colour-camera intrinsics of NYUv2 at 640x480
KINECT = {"fx": 518.857901, "fy": 519.469611, "cx": 325.582449, "cy": 253.736166, "width": 640, "height": 480}
NYU_RAW_CLASSES = 894
NYU13_CLASSES = 13
#: ``--depth`` choices -> the labeled release's array: in-painted everywhere, or as the sensor measured
DEPTH_SOURCES = {"filled": "depths", "raw": "rawDepths"}


@dataclass
class Intrinsics:
    """Pinhole intrinsics in pixels (pixel centres at integer coordinates)."""

    fx: float
    fy: float
    cx: float
    cy: float

    def resized(self, sx: float, sy: float) -> Intrinsics:
        """Intrinsics of the image resized by (sx, sy), keeping pixel centres aligned."""
        return Intrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5)


def kinect_intrinsics(height: int, width: int) -> Intrinsics:
    """The NYUv2 Kinect intrinsics for a ``height`` x ``width`` image of the full 640x480 view."""
    base = Intrinsics(KINECT["fx"], KINECT["fy"], KINECT["cx"], KINECT["cy"])
    return base.resized(width / KINECT["width"], height / KINECT["height"])


def backproject(depth: np.ndarray, k: Intrinsics) -> np.ndarray:
    """H x W x 3 camera-space points (x right, y down, z forward) of an H x W depth map."""
    h, w = depth.shape
    u = np.arange(w, dtype=np.float64)[None, :]
    v = np.arange(h, dtype=np.float64)[:, None]
    z = depth.astype(np.float64)
    return np.stack([(u - k.cx) / k.fx * z, (v - k.cy) / k.fy * z, z], axis=-1)


#: Kinect depth quantisation: the disparity is an integer, so depth moves in steps of about this times z^2 (m)
KINECT_STEP = 2.85e-3
#: the adaptive window's size per metre of depth, and its bounds (from bench/nyuv2_normals.py)
ADAPTIVE_PX_PER_M = 4.0
MIN_WINDOW, MAX_WINDOW = 5, 31
#: the bilateral pre-smoothing window prepare uses by default (0 = none)
DEFAULT_SMOOTHING = 11


def quantisation_step(z: np.ndarray) -> np.ndarray:
    """The Kinect's depth step at depth ``z`` (metres): ``2.85e-3 * z^2`` (66 mm at 4.9 m)."""
    return KINECT_STEP * np.square(z)


def bilateral_smooth(depth: np.ndarray, window: int = 7, range_steps: float = 2.0) -> np.ndarray:
    """Bilateral filter of the inverse depth, where planes are affine and Kinect steps uniform; 0 stays 0.

    Gaussian spatial weights (sigma ``window / 4``) times a range weight of ``range_steps`` disparity
    steps (``2.85e-3`` per metre each): terraces of a plane merge, surfaces a few steps apart do not.
    Opposite neighbours share the smaller of their two weights, so the weights stay symmetric
    (at image borders, holes and edges too) and an exact plane comes out unchanged.
    """
    r = window // 2
    sigma_px = window / 4
    valid = depth > 0
    inv = np.where(valid, 1.0 / np.where(valid, depth, 1.0), 0.0)
    pad = np.pad(inv, r)
    h, w = inv.shape

    def weight(dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
        nb = pad[r + dy : r + dy + h, r + dx : r + dx + w]
        z = np.square((nb - inv) / (range_steps * KINECT_STEP))
        return nb, np.exp(-(dy * dy + dx * dx) / (2 * sigma_px**2) - 0.5 * z) * (nb > 0)

    num, den = inv.copy(), np.ones_like(inv)
    for dy in range(0, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx <= 0:
                continue
            (a, wa), (b, wb) = weight(dy, dx), weight(-dy, -dx)
            pair = np.minimum(wa, wb)
            num += pair * (a + b)
            den += 2 * pair
    return np.where(valid, 1.0 / np.where(valid, num / den, 1.0), 0.0).astype(np.float32)


def smallest_eigenvector(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit eigenvectors of the smallest eigenvalue of symmetric ... x 3 x 3 matrices, and where defined.

    Exact (batched ``torch.linalg.eigh`` in float64). Undefined (False) where the points are
    (nearly) collinear or coincide: the middle eigenvalue is below 1e-10 of the trace.
    """
    import torch

    flat = torch.from_numpy(np.ascontiguousarray(cov, dtype=np.float64).reshape(-1, 3, 3))
    values, vectors = torch.linalg.eigh(flat)
    vec = vectors[:, :, 0].numpy().reshape(cov.shape[:-1])
    values = values.numpy().reshape(cov.shape[:-2] + (3,))
    determined = values[..., 1] > 1e-10 * np.maximum(values.sum(-1), 1e-300)
    return vec, determined


def window_moments(pts: np.ndarray, weight: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Number of weighted points and their 3 x 3 covariance in each pixel's ``window`` x ``window`` box."""

    def box(a: np.ndarray) -> np.ndarray:
        """Sum of ``a`` over each pixel's window (zeros outside the image)."""
        return ndimage.uniform_filter(a, size=window, mode="constant") * window * window

    count = box(weight)
    safe = np.maximum(count, 1e-12)
    mean = np.stack([box(pts[..., i] * weight) for i in range(3)], -1) / safe[..., None]
    cov = np.empty(weight.shape + (3, 3))
    for i in range(3):
        for j in range(i, 3):
            second = box(pts[..., i] * pts[..., j] * weight) / safe
            cov[..., i, j] = cov[..., j, i] = second - mean[..., i] * mean[..., j]
    return count, cov


def adaptive_windows(depth: np.ndarray, px_per_m: float = ADAPTIVE_PX_PER_M) -> np.ndarray:
    """Per-pixel odd window size ``px_per_m * z`` within [5, 31]: a depth step is ~z^2, the window ~z."""
    w = np.clip(np.round(px_per_m * depth), MIN_WINDOW, MAX_WINDOW).astype(np.int64)
    return w + (w % 2 == 0)


def normals_from_depth(
    depth: np.ndarray,
    k: Intrinsics,
    window: int | str = "adaptive",
    px_per_m: float = ADAPTIVE_PX_PER_M,
    smoothing: int = 0,
) -> np.ndarray:
    """H x W x 3 float32 unit normals by local plane fits, towards the camera, 0 where undetermined.

    ``window``: an odd size >= 3 for every pixel, or ``"adaptive"`` (``px_per_m * depth``, odd,
    within 5..31). ``smoothing``: odd bilateral pre-smoothing window, 0 for none. The prepare
    defaults (adaptive, 11) come from bench/nyuv2_normals.py; see the module docstring.
    """
    if smoothing:
        if smoothing < 3 or smoothing % 2 == 0:
            raise ValueError(f"smoothing must be 0 or an odd size >= 3, got {smoothing!r}")
        depth = bilateral_smooth(depth, smoothing)
    valid = depth > 0
    if window == "adaptive":
        sizes = np.where(valid, adaptive_windows(depth, px_per_m), 0)
    elif isinstance(window, (int, np.integer)) and not isinstance(window, bool) and window >= 3 and window % 2:
        sizes = np.where(valid, int(window), 0)
    else:
        raise ValueError(f"window must be an odd size >= 3 or 'adaptive', got {window!r}")
    pts = backproject(np.where(valid, depth, 0.0), k)
    weight = valid.astype(np.float64)
    count = np.zeros(depth.shape)
    cov = np.zeros(depth.shape + (3, 3))
    for size in np.unique(sizes[valid]):
        here = sizes == size
        c, m = window_moments(pts, weight, int(size))
        count[here], cov[here] = c[here], m[here]
    normal = np.zeros(depth.shape + (3,))
    determined = np.zeros(depth.shape, dtype=bool)
    ok = valid & (count >= sizes + 1)  # enough points for a plane
    normal[ok], determined[ok] = smallest_eigenvector(cov[ok])
    towards = (normal * pts).sum(-1) > 0
    normal = np.where(towards[..., None], -normal, normal)
    ok &= determined
    normal = np.where(ok[..., None], normal / np.linalg.norm(normal, axis=-1, keepdims=True).clip(1e-12), 0.0)
    return normal.astype(np.float32)


def _mat_file(path: Path) -> dict:
    """Variables of a MATLAB (< v7.3) file; unreadable is a DataError naming it."""
    import scipy.io

    try:
        return scipy.io.loadmat(path)
    except Exception as err:  # scipy raises several types for a bad file
        raise DataError(f"{path}: cannot read MATLAB file ({str(err).splitlines()[0] if str(err) else err})") from None


@dataclass
class NyuMeta:
    """Everything the conversion needs beyond the labeled release: 894 -> 13 map and the splits."""

    map894: np.ndarray  # length 895: raw id (0 = unlabeled) -> 0..12 or -1
    splits: dict[str, np.ndarray] | None  # split -> 0-based image indices
    class_names: list[str] | None


def load_meta(class_map: list[str | Path], splits: str | Path | None = None) -> NyuMeta:
    """Read the mapping files (folders or files) and the splits into one 894 -> 13 lookup table."""
    files: list[Path] = []
    for item in class_map:
        p = Path(item).expanduser()
        if p.is_dir():
            files += sorted(p.glob("*.mat"))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: class-map file or folder not found")
    if splits is not None:
        sp = Path(splits).expanduser()
        if not sp.is_file():
            raise DataError(f"{sp}: splits file not found")
        files.append(sp)

    map40 = map13 = direct = None
    names = None
    split_idx = None
    for f in files:
        if f.suffix in (".npy", ".txt"):
            try:
                direct = np.load(f) if f.suffix == ".npy" else np.loadtxt(f)
            except (OSError, ValueError) as err:
                raise DataError(f"{f}: cannot read class map ({err})") from None
            direct = np.asarray(direct).ravel()
            if direct.shape != (NYU_RAW_CLASSES,) or not np.isin(direct, np.arange(-1, NYU13_CLASSES)).all():
                raise DataError(f"{f}: a direct class map must hold {NYU_RAW_CLASSES} integers in -1..12")
            continue
        m = _mat_file(f)
        if "mapClass" in m:
            map40 = np.asarray(m["mapClass"]).ravel().astype(np.int64)
            if map40.shape != (NYU_RAW_CLASSES,) or map40.min() < 1 or map40.max() > 40:
                raise DataError(f"{f}: mapClass must hold {NYU_RAW_CLASSES} class ids in 1..40")
        if "classMapping13" in m:
            s = m["classMapping13"]
            try:
                map13 = np.asarray(s["labels13"][0, 0]).ravel().astype(np.int64)
                names = [str(np.asarray(n).ravel()[0]) for n in np.asarray(s["classNames"][0, 0]).ravel()]
            except (ValueError, IndexError, KeyError):
                raise DataError(f"{f}: classMapping13 lacks labels13/classNames") from None
            if map13.shape != (40,) or map13.min() < 1 or map13.max() > NYU13_CLASSES:
                raise DataError(f"{f}: classMapping13.labels13 must hold 40 class ids in 1..13")
        if "trainNdxs" in m and "testNdxs" in m:
            split_idx = {
                "train": np.asarray(m["trainNdxs"]).ravel().astype(np.int64) - 1,
                "val": np.asarray(m["testNdxs"]).ravel().astype(np.int64) - 1,
            }
    if direct is not None:
        table = np.concatenate([[-1], direct.astype(np.int64)])
    elif map40 is not None and map13 is not None:
        table = np.concatenate([[-1], map13[map40 - 1] - 1])
    else:
        lacking = "classMapping40.mat (mapClass)" if map40 is None else "class13Mapping.mat (classMapping13)"
        raise DataError(f"--class-map: no {lacking} among {', '.join(str(f) for f in files) or 'the given paths'}")
    return NyuMeta(table, split_idx, names)


def _nearest(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes (pixel-centre aligned)."""
    rows = np.minimum(((np.arange(height) + 0.5) * arr.shape[0] / height).astype(np.int64), arr.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * arr.shape[1] / width).astype(np.int64), arr.shape[1] - 1)
    return arr[rows][:, cols]


def _resize_image(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """H x W x 3 uint8 -> height x width x 3 float32 in [0, 1] (bilinear, antialiased)."""
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()[None] / 255.0
    if t.shape[-2:] != (height, width):
        t = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return t[0].clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32)


def convert_sample(
    image: np.ndarray,
    depth: np.ndarray,
    labels: np.ndarray,
    meta: NyuMeta,
    height: int,
    width: int,
    window: int | str = "adaptive",
    smoothing: int = DEFAULT_SMOOTHING,
) -> dict[str, np.ndarray]:
    """One sample (image H x W x 3 uint8, depth H x W metres, raw labels H x W) in the layout's arrays.

    ``depth`` is whichever release array ``--depth`` chose; 0 (or NaN) marks a missing pixel, which
    gets depth 0 and normal 0.
    """
    depth = np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    depth = np.where(depth > 0, depth, 0).astype(np.float32)
    # normals at the release's resolution (exact geometry), then sampled at the same pixels as depth
    normal = normals_from_depth(depth, kinect_intrinsics(*depth.shape), window, smoothing=smoothing)
    normal = _nearest(normal, height, width)
    depth_r = _nearest(depth, height, width)
    label_r = meta.map894[_nearest(labels.astype(np.int64), height, width)]
    return {
        "image": _resize_image(image, height, width),
        "label": label_r.astype(np.int16),
        "depth": depth_r[..., None],
        "normal": normal,
    }


def _check_options(height: int, width: int, window: int | str, depth: str, smoothing: int) -> str:
    """ConfigError for an unusable option; returns the release's dataset name of the ``depth`` source."""
    if window != "adaptive" and (
        not isinstance(window, int) or isinstance(window, bool) or window < 3 or window % 2 == 0
    ):
        raise ConfigError(f"--normal-window: must be an odd size >= 3 or 'adaptive' (got {window})")
    if (
        not isinstance(smoothing, int)
        or isinstance(smoothing, bool)
        or (smoothing != 0 and (smoothing < 3 or smoothing % 2 == 0))
    ):
        raise ConfigError(f"--normal-smoothing: must be 0 or an odd size >= 3 (got {smoothing})")
    if depth not in DEPTH_SOURCES:
        raise ConfigError(f"--depth: expected one of {', '.join(DEPTH_SOURCES)} (got {depth!r})")
    if height < 8 or width < 8:
        raise ConfigError(f"--height/--width: must be at least 8 (got {height}x{width})")
    return DEPTH_SOURCES[depth]


def _release_arrays(h5, src: Path, depth_key: str, splits: dict[str, np.ndarray]) -> tuple:
    """The release's ``images``, depths and ``labels`` datasets, checked against each other and the splits."""
    for key in ("images", depth_key, "labels"):
        if key not in h5:
            raise DataError(f"{src}: dataset {key!r} not found (is this nyu_depth_v2_labeled.mat?)")
    images, depths, labels = h5["images"], h5[depth_key], h5["labels"]
    n, c, w0, h0 = images.shape if images.ndim == 4 else (0, 0, 0, 0)
    if images.ndim != 4 or c != 3:
        raise DataError(f"{src}: 'images' has shape {images.shape}, expected (N, 3, W, H)")
    for key, ds in ((depth_key, depths), ("labels", labels)):
        if ds.shape != (n, w0, h0):
            raise DataError(f"{src}: {key!r} has shape {ds.shape}, expected {(n, w0, h0)} like 'images'")
    for split, idx in splits.items():
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise DataError(f"--splits: {split} indices reach {idx.max() + 1} but {src} holds {n} images")
    return images, depths, labels


def _write_split(
    arrays: tuple,
    src: Path,
    folder: Path,
    idx: np.ndarray,
    meta: NyuMeta,
    height: int,
    width: int,
    window: int | str,
    smoothing: int,
    bar,
) -> None:
    """Convert the release's images ``idx`` and write them as samples 0.. of the split folder ``folder``."""
    images, depths, labels = arrays
    for j, i in enumerate(idx):
        raw = np.asarray(labels[int(i)]).T
        if raw.max() > NYU_RAW_CLASSES:
            raise DataError(f"{src}: labels of image {int(i) + 1} reach {raw.max()}, above 894")
        sample = convert_sample(
            np.asarray(images[int(i)]).transpose(2, 1, 0),
            np.asarray(depths[int(i)]).T,
            raw,
            meta,
            height,
            width,
            window,
            smoothing,
        )
        for name, arr in sample.items():
            path = folder / name / f"{j}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, arr)
        bar.update(1)


def prepare_nyuv2(
    labeled_mat: str | Path,
    class_map: list[str | Path],
    out: str | Path,
    splits: str | Path | None = None,
    height: int = 288,
    width: int = 384,
    window: int | str = "adaptive",
    overwrite: bool = False,
    progress: bool = True,
    depth: str = "filled",
    smoothing: int = DEFAULT_SMOOTHING,
) -> dict[str, int]:
    """Write ``out/{train,val}/{image,label,depth,normal}/{i}.npy``; returns samples per split.

    ``depth``: ``filled`` (the release's in-painted ``depths``) or ``raw`` (``rawDepths``: 0 where the
    sensor measured nothing). Written into a temporary sibling folder and renamed at the end, so
    ``out`` is never half done.
    """
    import h5py

    depth_key = _check_options(height, width, window, depth, smoothing)
    src = Path(labeled_mat).expanduser()
    out = Path(out).expanduser()
    if not src.is_file():
        raise DataError(f"{src}: labeled .mat file not found")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out}: output folder exists and is not empty (pass --overwrite to replace it)")
    meta = load_meta(list(class_map), splits)
    if meta.splits is None:
        raise DataError("--splits: no splits.mat (trainNdxs/testNdxs) given or found in the --class-map folder")
    try:
        h5 = h5py.File(src, "r")
    except OSError as err:
        raise DataError(f"{src}: not a MATLAB v7.3 (HDF5) file ({str(err).splitlines()[0]})") from None
    with h5:
        arrays = _release_arrays(h5, src, depth_key, meta.splits)
        tmp = out.with_name(f".{out.name}.partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        counts: dict[str, int] = {}
        total = sum(len(v) for v in meta.splits.values())
        bar = tqdm(total=total, desc="prepare nyuv2", disable=not progress)
        for split, idx in meta.splits.items():
            _write_split(arrays, src, tmp / split, idx, meta, height, width, window, smoothing, bar)
            counts[split] = len(idx)
        bar.close()
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return counts
