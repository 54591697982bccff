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

Surface normals are estimated from the release's full-resolution depth and then sampled at the
same output pixels as the depth (estimating them from nearest-resized depth would bend planes by
the sub-pixel jitter of the resampling), in camera coordinates (x right, y down, z forward, i.e.
OpenCV's convention):

1. back-project every pixel with the Kinect colour-camera intrinsics (fx=518.857901,
   fy=519.469611, cx=325.582449, cy=253.736166 at 640x480; scaled about pixel centres for
   another resolution): ``P = Z * ((u - cx) / fx, (v - cy) / fy, 1)``;
2. fit a plane to the 3-D points of the valid pixels in a ``window`` x ``window`` neighbourhood
   (least squares: the normal is the eigenvector of the smallest eigenvalue of the points'
   covariance, found by power iteration on its adjugate), which is much less noisy than a cross
   product of single-pixel differences;
3. orient it towards the camera (``n . P < 0``);
4. set it to 0 where the pixel's depth is missing or fewer than ``window + 1`` neighbours have
   depth (too few points for a plane).
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


def _smallest_eigenvector(cov: np.ndarray, iterations: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Unit eigenvectors of the smallest eigenvalue of symmetric PSD ... x 3 x 3 matrices, and where defined.

    Power iteration on the adjugate: ``adj(C) = sum_i (prod_{j != i} l_j) v_i v_i^T``, whose
    dominant eigenvector is ``C``'s smallest one, converging by ``l_min / l_mid`` per step and
    started from adj(C)'s largest column. About 20x faster than ``np.linalg.eigh`` on images.
    Undefined (False) where the points are (nearly) collinear, i.e. adj(C) vanishes.
    """
    c00, c11, c22 = cov[..., 0, 0], cov[..., 1, 1], cov[..., 2, 2]
    c01, c02, c12 = cov[..., 0, 1], cov[..., 0, 2], cov[..., 1, 2]
    a00, a11, a22 = c11 * c22 - c12 * c12, c00 * c22 - c02 * c02, c00 * c11 - c01 * c01
    a01, a02, a12 = c02 * c12 - c01 * c22, c01 * c12 - c02 * c11, c01 * c02 - c00 * c12
    cols = np.stack(
        [np.stack([a00, a01, a02], -1), np.stack([a01, a11, a12], -1), np.stack([a02, a12, a22], -1)], -2
    )  # ... x column x component
    norms = np.linalg.norm(cols, axis=-1)
    best = norms.argmax(-1)
    vec = np.take_along_axis(cols, best[..., None, None], axis=-2)[..., 0, :]
    scale = (c00 + c11 + c22) ** 2
    determined = norms.max(-1) > 1e-10 * np.maximum(scale, 1e-300)
    for _ in range(iterations):
        vec = vec / np.linalg.norm(vec, axis=-1, keepdims=True).clip(1e-300)
        vec = np.stack(
            [
                a00 * vec[..., 0] + a01 * vec[..., 1] + a02 * vec[..., 2],
                a01 * vec[..., 0] + a11 * vec[..., 1] + a12 * vec[..., 2],
                a02 * vec[..., 0] + a12 * vec[..., 1] + a22 * vec[..., 2],
            ],
            -1,
        )
    vec = vec / np.linalg.norm(vec, axis=-1, keepdims=True).clip(1e-300)
    return vec, determined


def normals_from_depth(depth: np.ndarray, k: Intrinsics, window: int = 5) -> np.ndarray:
    """H x W x 3 float32 unit normals by local plane fits, towards the camera, 0 where undetermined."""
    if window < 3 or window % 2 == 0:
        raise ValueError(f"window must be an odd size >= 3, got {window}")
    valid = depth > 0
    pts = backproject(np.where(valid, depth, 0.0), k)
    weight = valid.astype(np.float64)

    def box(a: np.ndarray) -> np.ndarray:
        """Sum of ``a`` over each pixel's window (zeros outside the image)."""
        return ndimage.uniform_filter(a, size=window, mode="constant") * window * window

    count = box(weight)
    safe = np.maximum(count, 1)
    mean = np.stack([box(pts[..., i] * weight) for i in range(3)], -1) / safe[..., None]
    cov = np.empty(depth.shape + (3, 3))
    for i in range(3):
        for j in range(i, 3):
            c = box(pts[..., i] * pts[..., j] * weight) / safe - mean[..., i] * mean[..., j]
            cov[..., i, j] = cov[..., j, i] = c
    normal, determined = _smallest_eigenvector(cov)
    towards = (normal * pts).sum(-1) > 0
    normal = np.where(towards[..., None], -normal, normal)
    ok = valid & determined & (count >= window + 1)
    normal = np.where(ok[..., None], normal / np.linalg.norm(normal, axis=-1, keepdims=True).clip(1e-12), 0.0)
    return normal.astype(np.float32)


def _mat_file(path: Path) -> dict:
    """Variables of a MATLAB (< v7.3) file; unreadable is a DataError naming it."""
    import scipy.io

    try:
        return scipy.io.loadmat(path)
    except Exception as err:  # scipy raises several types for a bad file
        raise DataError(
            f"{path}: cannot read MATLAB file ({str(err).splitlines()[0] if str(err) else err})"
        ) from None


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
        raise DataError(
            f"--class-map: no {lacking} among {', '.join(str(f) for f in files) or 'the given paths'}"
        )
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
    window: int = 5,
) -> dict[str, np.ndarray]:
    """One sample (image H x W x 3 uint8, depth H x W metres, raw labels H x W) in the layout's arrays."""
    depth = np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    depth = np.where(depth > 0, depth, 0).astype(np.float32)
    # normals at the release's resolution (exact geometry), then sampled at the same pixels as depth
    normal = _nearest(normals_from_depth(depth, kinect_intrinsics(*depth.shape), window), height, width)
    depth_r = _nearest(depth, height, width)
    label_r = meta.map894[_nearest(labels.astype(np.int64), height, width)]
    return {
        "image": _resize_image(image, height, width),
        "label": label_r.astype(np.int16),
        "depth": depth_r[..., None],
        "normal": normal,
    }


def prepare_nyuv2(
    labeled_mat: str | Path,
    class_map: list[str | Path],
    out: str | Path,
    splits: str | Path | None = None,
    height: int = 288,
    width: int = 384,
    window: int = 5,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Write ``out/{train,val}/{image,label,depth,normal}/{i}.npy``; returns samples per split.

    Written into a temporary sibling folder and renamed at the end, so ``out`` is never half done.
    """
    import h5py

    if window < 3 or window % 2 == 0:
        raise ConfigError(f"--normal-window: must be an odd size >= 3 (got {window})")
    if height < 8 or width < 8:
        raise ConfigError(f"--height/--width: must be at least 8 (got {height}x{width})")
    src = Path(labeled_mat).expanduser()
    out = Path(out).expanduser()
    if not src.is_file():
        raise DataError(f"{src}: labeled .mat file not found")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out}: output folder exists and is not empty (pass --overwrite to replace it)")
    meta = load_meta(list(class_map), splits)
    if meta.splits is None:
        raise DataError(
            "--splits: no splits.mat (trainNdxs/testNdxs) given or found in the --class-map folder"
        )
    try:
        h5 = h5py.File(src, "r")
    except OSError as err:
        raise DataError(f"{src}: not a MATLAB v7.3 (HDF5) file ({str(err).splitlines()[0]})") from None
    with h5:
        for key in ("images", "depths", "labels"):
            if key not in h5:
                raise DataError(f"{src}: dataset {key!r} not found (is this nyu_depth_v2_labeled.mat?)")
        images, depths, labels = h5["images"], h5["depths"], h5["labels"]
        n, c, w0, h0 = images.shape if images.ndim == 4 else (0, 0, 0, 0)
        if images.ndim != 4 or c != 3:
            raise DataError(f"{src}: 'images' has shape {images.shape}, expected (N, 3, W, H)")
        for key, ds in (("depths", depths), ("labels", labels)):
            if ds.shape != (n, w0, h0):
                raise DataError(f"{src}: {key!r} has shape {ds.shape}, expected {(n, w0, h0)} like 'images'")
        for split, idx in meta.splits.items():
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise DataError(f"--splits: {split} indices reach {idx.max() + 1} but {src} holds {n} images")

        tmp = out.with_name(f".{out.name}.partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        counts: dict[str, int] = {}
        total = sum(len(v) for v in meta.splits.values())
        bar = tqdm(total=total, desc="prepare nyuv2", disable=not progress)
        for split, idx in meta.splits.items():
            for j, i in enumerate(idx):
                raw = np.asarray(labels[int(i)]).T
                if raw.max() > NYU_RAW_CLASSES:
                    raise DataError(f"{src}: labels of image {int(i) + 1} reach {raw.max()}, above 894")
                arrays = convert_sample(
                    np.asarray(images[int(i)]).transpose(2, 1, 0),
                    np.asarray(depths[int(i)]).T,
                    raw,
                    meta,
                    height,
                    width,
                    window,
                )
                for folder, arr in arrays.items():
                    path = tmp / split / folder / f"{j}.npy"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(path, arr)
                bar.update(1)
            counts[split] = len(idx)
        bar.close()
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return counts
