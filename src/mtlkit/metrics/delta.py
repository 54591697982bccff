"""Multi-task performance gain Delta_m (Maninis et al., CVPR 2019), in percent.

Delta_m = 100 / M * sum over the M metrics of every task of (-1)^l_j (R_j - B_j) / B_j with
l_j = 1 when lower is better: the average relative improvement over a baseline (usually the
single-task networks). Positive means better than the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from mtlkit.metrics.base import MetricError

if TYPE_CHECKING:
    from mtlkit.tasks import Task


def metric_directions(tasks: Iterable[Task]) -> dict[str, bool]:
    """``{"<task>/<metric>": higher_is_better}`` for every metric the tasks declare."""
    return {f"{t.name}/{m}": hib for t in tasks for m, hib in t.metrics.items()}


def delta_m(results: Mapping[str, float], baseline: Mapping[str, float], higher_is_better: Mapping[str, bool]) -> float:
    """Average signed relative change (percent) of every metric in ``results`` vs ``baseline``.

    Every key of ``results`` must be in ``baseline`` (non-zero, finite) and in ``higher_is_better``,
    else MetricError (a ValueError) naming it; extra baseline keys are ignored. A NaN result gives NaN.
    """
    if not results:
        raise MetricError("delta_m: results hold no metric")
    terms = []
    for name, value in results.items():
        if name not in baseline:
            raise MetricError(f"delta_m: metric {name!r} is missing from the baseline")
        if name not in higher_is_better:
            raise MetricError(f"delta_m: metric {name!r} has no higher_is_better entry")
        base = float(baseline[name])
        if base == 0 or not math.isfinite(base):
            raise MetricError(f"delta_m: baseline of metric {name!r} is {base}; relative change undefined")
        sign = 1.0 if higher_is_better[name] else -1.0
        terms.append(sign * (float(value) - base) / base)
    return 100.0 * sum(terms) / len(terms)
