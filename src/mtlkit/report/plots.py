"""Report figures with matplotlib's Agg canvas (no display, no pyplot global state).

Every function writes one PNG and returns its path. Inputs are plain numbers/arrays, so the plots
can be redrawn from the report's JSON/CSV files elsewhere.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mtlkit.report.runs import ARCH_ORDER

DPI = 110
#: line styles a figure cycles through, one per ten lines (tab10 gives the ten colours)
LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.")
#: markers added after every colour x line style pair is used (more than 40 lines)
MARKERS = ("o", "s", "^", "D", "v", "x")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def arch_color(arch: str) -> tuple:
    """A fixed colour per architecture (paper order first), so every figure uses the same colours."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    if arch in ARCH_ORDER:
        return cmap(ARCH_ORDER.index(arch))
    return cmap(7 + sum(map(ord, arch)) % 3)


def line_styles(n: int) -> list[tuple[tuple, Any, str | None]]:
    """``n`` distinct ``(colour, line style, marker)`` for the lines of one figure, in line order.

    Colours cycle through tab10, the line style changes every ten lines and a marker every 40, so
    no two lines of a figure look the same (17 curves: 10 solid + 7 dashed, each its own colour).
    """
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    per_marker = 10 * len(LINESTYLES)
    out = []
    for i in range(n):
        marker = None if i < per_marker else MARKERS[(i // per_marker - 1) % len(MARKERS)]
        out.append((cmap(i % 10), LINESTYLES[(i // 10) % len(LINESTYLES)], marker))
    return out


def plot_curves(lines: list[dict[str, Any]], tasks: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """:func:`curves_figure` written to ``path``."""
    return _save(curves_figure(lines, tasks, title), path)


def curves_figure(lines: list[dict[str, Any]], tasks: list[dict[str, Any]], title: str = "") -> Figure:
    """Per task: training loss and validation main metric per epoch, one line per table row.

    ``lines``: dicts with ``label`` and ``series``: {"loss/<task>": [(epoch, value)], "<task>/<main
    metric>": [(epoch, value)]} (seed means). ``tasks``: dicts with ``name``, ``main_metric`` and
    ``metrics`` ({metric: higher is better}; the direction arrow is left out where unknown). Each
    line has its own colour and line style (:func:`line_styles`); x ticks are whole epochs.
    """
    k = len(tasks)
    fig = _figure(10.5, 2.5 * k + 0.6)
    axes = fig.subplots(k, 2, squeeze=False)
    styles = line_styles(len(lines))
    for i, task in enumerate(tasks):
        name, main = task["name"], task["main_metric"]
        higher = (task.get("metrics") or {}).get(main)
        arrow = "" if higher is None else " ↑" if higher else " ↓"
        for j, (key, ylabel) in enumerate(
            [(f"loss/{name}", f"{name}: train loss"), (f"{name}/{main}", f"{name}: val {main}{arrow}")]
        ):
            ax = axes[i][j]
            positive = True
            for line, (color, style, marker) in zip(lines, styles):
                pts = line["series"].get(key) or []
                if not pts:
                    continue
                x, y = zip(*pts)
                positive &= min(y) > 0
                ax.plot(
                    x,
                    y,
                    color=color,
                    linestyle=style,
                    linewidth=1.4,
                    label=line["label"],
                    marker=marker or ("o" if len(x) < 3 else None),
                    markersize=3,
                )
            if j == 0 and positive and _spans_decade(ax):
                ax.set_yscale("log")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if i == k - 1:
                ax.set_xlabel("epoch", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[0][1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _spans_decade(ax) -> bool:
    lo, hi = math.inf, -math.inf
    for line in ax.get_lines():
        y = np.asarray(line.get_ydata(), dtype=float)
        if y.size:
            lo, hi = min(lo, float(y.min())), max(hi, float(y.max()))
    return lo > 0 and hi / lo > 20


def plot_weights(panels: list[dict[str, Any]], task_names: list[str], path: Path, title: str = "") -> Path:
    """Task weights over training, one small panel per weighting row: ``panels`` of {label, series{task: pts}}."""
    n = len(panels)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = _figure(3.6 * cols + 1.2, 2.4 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False)
    import matplotlib

    cmap = matplotlib.colormaps["Dark2"]
    for idx in range(rows * cols):
        ax = axes[idx // cols][idx % cols]
        if idx >= n:
            ax.set_axis_off()
            continue
        panel = panels[idx]
        for t, name in enumerate(task_names):
            pts = panel["series"].get(name) or []
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, color=cmap(t % 8), linewidth=1.5, label=name)
        ax.set_title(panel["label"], fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("weight", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def alpha_matrices(alphas: dict[str, Any], num_tasks: int) -> dict[str, np.ndarray]:
    """Each stitch point's alphas as a K x K matrix (mean over any channel dims, before or after K x K)."""
    out = {}
    for key, value in alphas.items():
        a = np.asarray(value.detach().cpu().float() if hasattr(value, "detach") else value, dtype=float)
        if a.ndim == 2 and a.shape == (num_tasks, num_tasks):
            out[key] = a
        elif a.ndim > 2 and a.shape[:2] == (num_tasks, num_tasks):
            out[key] = a.reshape(num_tasks, num_tasks, -1).mean(axis=2)
        elif a.ndim > 2 and a.shape[-2:] == (num_tasks, num_tasks):
            out[key] = a.reshape(-1, num_tasks, num_tasks).mean(axis=0)
        else:
            raise ValueError(f"cross-stitch alphas {key!r} have shape {a.shape}, not K x K (+ channels), K={num_tasks}")
    return out


def plot_stitch_alphas(alphas: dict[str, np.ndarray], task_names: list[str], path: Path, title: str = "") -> Path:
    """Cross-stitch alphas per stitch point: K x K heat maps, and the self weight alpha_kk along the network."""
    keys = list(alphas)
    n = len(keys)
    k = len(task_names)
    fig = _figure(max(7.0, 1.25 * n + 1.5), 5.2)
    grid = fig.add_gridspec(2, n, height_ratios=[1, 1.1])
    vmin = min(0.0, min(float(a.min()) for a in alphas.values()))
    vmax = max(1.0, max(float(a.max()) for a in alphas.values()))
    image = None
    for i, key in enumerate(keys):
        ax = fig.add_subplot(grid[0, i])
        image = ax.imshow(alphas[key], vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_title(key, fontsize=8)
        ax.set_xticks(range(k), [t[:4] for t in task_names], fontsize=6, rotation=90)
        ax.set_yticks(range(k), [t[:4] for t in task_names] if i == 0 else [], fontsize=6)
        if k <= 4:
            for r in range(k):
                for c in range(k):
                    v = alphas[key][r, c]
                    ax.text(
                        c,
                        r,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if v < (vmin + vmax) / 2 else "black",
                    )
    if image is not None:
        fig.colorbar(image, ax=fig.axes[:n], shrink=0.8, label="alpha (row: output task)")
    ax = fig.add_subplot(grid[1, :])
    import matplotlib

    cmap = matplotlib.colormaps["Dark2"]
    for t, name in enumerate(task_names):
        ax.plot(
            range(n),
            [alphas[key][t, t] for key in keys],
            marker="o",
            color=cmap(t % 8),
            label=f"{name}: own weight alpha_kk",
        )
        ax.plot(
            range(n),
            [alphas[key][t].sum() - alphas[key][t, t] for key in keys],
            marker="x",
            linestyle="--",
            color=cmap(t % 8),
            label=f"{name}: from other tasks",
        )
    ax.set_xticks(range(n), keys, fontsize=7, rotation=45)
    ax.set_ylabel("alpha", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _as_array(value: Any) -> np.ndarray:
    return np.asarray(value.detach().cpu().float() if hasattr(value, "detach") else value, dtype=float)


def stitch_channel_alphas(
    alphas: dict[str, Any], task_names: list[str]
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Per stitch point and task, Misra et al.'s alpha_S and alpha_D of every channel, each sorted increasingly.

    The unit mixes ``out[i] = sum_k alpha[i, k] x_k`` (row = the task whose features come out), so task i's
    alpha_S is ``alpha[i, i]`` and its alpha_D the weight it takes from the other tasks, ``sum_{k != i}
    alpha[i, k]`` (the paper's alpha_D with two tasks; with more, their sum: our choice). As in the paper's
    figure (Sec. 5.4) both are sorted independently, so position j of alpha_S and of alpha_D need not be
    the same channel. A point with one K x K matrix (no channel axis) gives one value each. Layouts: K x K
    x C... or C... x K x K (as :func:`alpha_matrices`).
    """
    k = len(task_names)
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for key, value in alphas.items():
        a = _as_array(value)
        if a.ndim >= 2 and a.shape[:2] == (k, k):
            per = a.reshape(k, k, -1)
        elif a.ndim > 2 and a.shape[-2:] == (k, k):
            per = np.moveaxis(a.reshape(-1, k, k), 0, 2)
        else:
            raise ValueError(f"cross-stitch alphas {key!r} have shape {a.shape}, not K x K (+ channels), K={k}")
        out[key] = {
            name: {
                "alpha_s": sorted(per[i, i].tolist()),
                "alpha_d": sorted(np.delete(per[i], i, axis=0).sum(axis=0).tolist()),
            }
            for i, name in enumerate(task_names)
        }
    return out


def plot_stitch_alpha_channels(
    profiles: dict[str, dict[str, dict[str, list[float]]]], task_names: list[str], path: Path, title: str = ""
) -> Path:
    """The paper's alpha figure: one panel per stitch point (rows) and task (columns), the sorted per-channel
    alpha_S and alpha_D (:func:`stitch_channel_alphas`). alpha_S above alpha_D: the layer keeps its features
    task-specific; the two close together: it shares."""
    keys = list(profiles)
    values = [v for p in profiles.values() for t in p.values() for v in (*t["alpha_s"], *t["alpha_d"])]
    lo, hi = min([0.0, *values]), max([1.0, *values])
    pad = 0.05 * (hi - lo)
    fig = _figure(2.6 * len(task_names) + 0.6, 1.7 * len(keys) + 0.8)
    axes = fig.subplots(len(keys), len(task_names), squeeze=False, sharey=True)
    for r, key in enumerate(keys):
        for c, name in enumerate(task_names):
            ax = axes[r][c]
            prof = profiles[key][name]
            for which, style, label in (("alpha_s", "-", "alpha_S (own)"), ("alpha_d", "--", "alpha_D (others)")):
                ys = prof[which]
                ax.plot(range(len(ys)), ys, linestyle=style, marker="o" if len(ys) < 16 else None, ms=3, label=label)
            ax.set_ylim(lo - pad, hi + pad)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=6)
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(key, fontsize=8)
            if r == len(keys) - 1:
                ax.set_xlabel("channel (sorted)", fontsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_class_gain(data: dict[str, Any], path: Path, title: str = "") -> Path:
    """The data-starved analysis (Misra et al. Fig. 6): per class, a row's IoU gain over the baseline row (IoU
    points, x 100) against the class's labelled training pixels, log x axis; one colour per row.

    ``data``: ``classes``, ``pixels`` (one count per class) and ``rows``: ``[{label, arch, gain}]`` with one
    gain (or None: not scored) per class. Classes without a training pixel cannot sit on a log axis: left out.
    """
    import matplotlib

    fig = _figure(7.2, 4.2 + 0.22 * len(data["rows"]))  # the legend sits below the axes, one line per row
    ax = fig.add_subplot()
    pixels = np.asarray(data["pixels"], dtype=float)
    styles = line_styles(len(data["rows"]))
    markers = matplotlib.lines.Line2D.filled_markers
    for i, row in enumerate(data["rows"]):
        pts = [(p, g) for p, g in zip(pixels, row["gain"]) if g is not None and p > 0]
        if pts:
            xs, ys = zip(*pts)
            label = _short(row["label"])
            ax.scatter(xs, ys, color=styles[i][0], marker=markers[i % len(markers)], s=22, label=label)
    if len(data["rows"]) == 1 and len(data["classes"]) <= 60:
        for name, p, g in zip(data["classes"], pixels, data["rows"][0]["gain"]):
            if g is not None and p > 0:
                ax.annotate(str(name), (p, g), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.axhline(0.0, color="0.4", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training pixels of the class (log scale)", fontsize=8)
    ax.set_ylabel("IoU gain over the baseline (points)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
    if data["rows"]:
        ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)
    base = f"baseline: {data.get('baseline', 'the baseline row')}"
    ax.set_title(_short(f"{title}\n{base}" if title else base, 200), fontsize=8)
    return _save(fig, path)


def _short(text: str, limit: int = 90) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis: legend entries and titles that stay inside the figure."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plot_complexity(series: list[dict[str, Any]], tasks: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Performance vs number of classes per architecture (MTAN section 4.1.5).

    ``series``: dicts with ``label``, ``arch``, ``weighting``, ``points``: {classes: {"<task>/<main>": v}},
    and optionally ``relative``: {classes: {"<task>/<main>": % better than single-task}}.
    Top row: each task's main metric; bottom row (when any series has it): relative to single-task.
    """
    has_rel = any(s.get("relative") for s in series)
    k = len(tasks)
    fig = _figure(3.8 * k + 1.8, 5.4 if has_rel else 2.9)
    axes = fig.subplots(2 if has_rel else 1, k, squeeze=False)
    classes = sorted({c for s in series for c in s["points"]})
    for j, task in enumerate(tasks):
        key = f"{task['name']}/{task['main_metric']}"
        higher = task["metrics"].get(task["main_metric"], True)
        for row, field, ylabel in [
            (0, "points", f"{task['name']} {task['main_metric']} {'↑' if higher else '↓'}"),
            (1, "relative", f"{task['name']}: % vs single-task ↑"),
        ][: 2 if has_rel else 1]:
            ax = axes[row][j]
            for s, (color, style, _) in zip(series, line_styles(len(series))):
                data = s.get(field) or {}
                xs = [c for c in classes if c in data and key in data[c]]
                if xs:
                    ax.plot(xs, [data[c][key] for c in xs], marker="o", color=color, linestyle=style, label=s["label"])
            if row == 1:
                ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_xticks(classes)
            ax.set_xlabel("segmentation classes", fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def display_image(image: np.ndarray) -> np.ndarray:
    """A (3, H, W) float image rescaled to [0, 1] for display (datasets may normalise differently)."""
    img = np.moveaxis(np.asarray(image, dtype=float), 0, -1)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def plot_attention(image: np.ndarray, rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """One validation image: per task a row with image, ground truth, prediction and each block's mask.

    ``rows``: dicts with ``task`` (a :class:`~mtlkit.tasks.Task`, which draws its own target and
    prediction), ``target``, ``pred`` (arrays) and ``masks``:
    [(block, (h, w) array = the attention mask averaged over channels)]. Each mask panel is stretched
    to its own range (printed above it), so the spatial selection shows even when masks are near 0.5.
    """
    nblocks = max((len(r["masks"]) for r in rows), default=0)
    ncols = 3 + nblocks
    aspect = image.shape[-2] / image.shape[-1]
    panel = 1.35
    fig = _figure(panel * ncols + 0.3, len(rows) * (panel * aspect + 0.45) + 0.5)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    shown = display_image(image)
    for i, row in enumerate(rows):
        axes[i][0].imshow(shown)
        axes[i][0].set_xticks([])
        axes[i][0].set_yticks([])
        task = row["task"]
        axes[i][0].set_ylabel(task.name, fontsize=8)
        task.spec.draw(task, axes[i][1], row["target"])
        task.spec.draw(task, axes[i][2], row["pred"])
        for j in range(nblocks):
            ax = axes[i][3 + j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(row["masks"]):
                ax.set_axis_off()
                continue
            block, mask = row["masks"][j]
            lo, hi = float(mask.min()), float(mask.max())
            ax.imshow(mask, cmap="inferno", vmin=lo, vmax=hi if hi > lo else lo + 1e-6, interpolation="nearest")
            ax.set_title(f"{block}\n{lo:.3f}–{hi:.3f}", fontsize=6)
        if i == 0:
            for ax, text in zip(axes[0][:3], ["image", "ground truth", "prediction"]):
                ax.set_title(text, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


__all__ = [
    "plot_curves",
    "curves_figure",
    "plot_weights",
    "plot_stitch_alphas",
    "alpha_matrices",
    "plot_complexity",
    "plot_attention",
    "display_image",
    "arch_color",
    "line_styles",
]


def plot_delta(bars: list[dict[str, Any]], path: Path, title: str = "", baseline: str = "") -> Path:
    """Δm per row as horizontal bars with ± std error bars over seeds (hatched: not significant).

    ``bars``: dicts with ``label``, ``arch``, ``delta`` (%), ``std`` (None: one seed),
    ``not_significant`` (bool) and ``reference`` (bool: a published row, drawn grey).
    """
    fig = _figure(7.0, 0.34 * len(bars) + 1.3)
    ax = fig.subplots()
    ys = np.arange(len(bars))[::-1]
    for y, b in zip(ys, bars):
        color = (0.72, 0.72, 0.72, 1.0) if b.get("reference") else arch_color(b["arch"])
        ax.barh(
            y,
            b["delta"],
            color=color,
            hatch="//" if b.get("not_significant") else None,
            edgecolor="black" if b.get("not_significant") else color,
            linewidth=0.6,
        )
        if b.get("std") is not None:
            ax.errorbar(b["delta"], y, xerr=b["std"], color="black", capsize=3, linewidth=1)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(ys, [b["label"] for b in bars], fontsize=7)
    ax.set_xlabel(
        f"Δm % vs {baseline} (higher is better; bars: mean, whiskers: ± std over seeds)" if baseline else "Δm %",
        fontsize=8,
    )
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)
