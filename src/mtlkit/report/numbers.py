"""How report tables write numbers: the decimals of a column, a value, a delta_m with its spread; the sample
standard deviation over seeds and the best cells of a column."""

from __future__ import annotations

import math


def _argbest(values: list[float | None], higher: bool) -> set[int]:
    present = [v for v in values if v is not None and math.isfinite(v)]
    if not present:
        return set()
    target = max(present) if higher else min(present)
    tol = 1e-12 * max(1.0, abs(target))
    return {i for i, v in enumerate(values) if v is not None and abs(v - target) <= tol}


def sample_std(values: list[float]) -> float:
    """Standard deviation with Bessel's correction (ddof = 1); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def decimals(values: list[float | None]) -> int:
    """The decimals of a table column: 4 when its largest magnitude is below 10, 2 below 100, else 1.

    One count for the whole column, so its numbers line up (12.40 above 4.34, not 4.3444).
    """
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    top = max(finite, default=0.0)
    return 4 if top < 10 else 2 if top < 100 else 1


def fmt_value(v: float | None, places: int | None = None) -> str:
    """A metric for the table with ``places`` decimals (None: :func:`decimals` of the value alone); '–' when
    missing."""
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.{decimals([v]) if places is None else places}f}"


def fmt_delta(mean: float | None, std: float | None) -> str:
    """A delta_m in percent with sign, and its spread when there is one."""
    if mean is None:
        return "–"
    if round(mean, 2) == 0:
        mean = 0.0
    return f"{mean:+.2f} ± {std:.2f}" if std is not None else f"{mean:+.2f}"
