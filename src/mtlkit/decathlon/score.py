"""The Visual Decathlon score (Rebuffi et al. 2017), used by MTAN section 4.2.

For each domain d with test error E_d (percent), ``S_d = alpha_d * max(0, E_d^max - E_d)^gamma``
with ``gamma = 2``, ``E_d^max = 2 * E_d^baseline`` (twice the fine-tuned baseline's error) and
``alpha_d = 1000 * (E_d^max)^-gamma``. A domain scores 1000 at zero error, 250 at the baseline's
error and 0 at twice the baseline's error or worse; the total is the sum over domains (at most
10000 for the ten domains). Only accuracies matter: error = 100 - accuracy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from mtlkit.errors import ConfigError

#: exponent of the per-domain score
GAMMA = 2.0
#: points of a domain at zero test error
MAX_POINTS = 1000.0
BASELINES_FILE = Path(__file__).with_name("baselines.json")


@lru_cache(maxsize=1)
def _baseline_file() -> dict:
    return json.loads(BASELINES_FILE.read_text())


def default_baselines() -> dict[str, float]:
    """The shipped fine-tuned baseline test accuracies (percent) per decathlon domain."""
    return {k: float(v) for k, v in _baseline_file()["accuracies"].items()}


def baseline_source() -> str:
    """Where the shipped baseline figures come from (printed by ``mtlkit decathlon-score``)."""
    return str(_baseline_file()["source"])


@dataclass(frozen=True)
class DomainScore:
    """One domain's row of the score table."""

    domain: str
    accuracy: float
    baseline: float
    error: float
    max_error: float
    score: float


def _check_percent(value: float, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: {value!r} is not a number") from None
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise ConfigError(f"{what}: {value!r} is not an accuracy in percent (0..100)")
    return value


def domain_score(accuracy: float, baseline: float) -> float:
    """Points of one domain: 1000 * max(0, 1 - E / E_max)^2 with E_max = 2 * baseline error."""
    max_error = 2.0 * (100.0 - baseline)
    if max_error <= 0:
        raise ConfigError(f"baseline accuracy {baseline} leaves no error to score against")
    error = 100.0 - accuracy
    # alpha * (E_max - E)^gamma with alpha = 1000 * E_max^-gamma, written scale-free
    return MAX_POINTS * max(0.0, (max_error - error) / max_error) ** GAMMA


def score_table(accuracies: dict[str, float], baseline_accuracies: dict[str, float] | None = None) -> list[DomainScore]:
    """Per-domain rows (in the order given) of the decathlon score of ``accuracies`` (percent)."""
    baselines = baseline_accuracies if baseline_accuracies is not None else default_baselines()
    if not accuracies:
        raise ConfigError("decathlon score: no domain accuracies given")
    rows = []
    for domain, acc in accuracies.items():
        if domain not in baselines:
            raise ConfigError(
                f"decathlon score: no baseline accuracy for domain {domain!r} "
                f"(baselines cover: {', '.join(sorted(baselines))})"
            )
        acc = _check_percent(acc, f"accuracy of {domain}")
        base = _check_percent(baselines[domain], f"baseline accuracy of {domain}")
        if base >= 100.0:
            raise ConfigError(f"baseline accuracy of {domain} is 100: the score is undefined at zero baseline error")
        max_error = 2.0 * (100.0 - base)
        rows.append(DomainScore(domain, acc, base, 100.0 - acc, max_error, domain_score(acc, base)))
    return rows


def decathlon_score(
    accuracies: dict[str, float], baseline_accuracies: dict[str, float] | None = None
) -> tuple[float, dict[str, float]]:
    """Total and per-domain decathlon scores of test accuracies in percent, keyed by domain.

    ``baseline_accuracies`` defaults to the shipped fine-tuned baselines; domains absent from
    ``accuracies`` contribute nothing (score the ten domains to compare with published totals).
    """
    rows = score_table(accuracies, baseline_accuracies)
    per_domain = {r.domain: r.score for r in rows}
    return sum(per_domain.values()), per_domain


def format_table(rows: list[DomainScore]) -> str:
    """A plain-text table of per-domain and total scores."""
    lines = [f"{'domain':<16}{'accuracy':>10}{'baseline':>10}{'error':>9}{'max err':>9}{'score':>9}"]
    for r in rows:
        lines.append(
            f"{r.domain:<16}{r.accuracy:>10.2f}{r.baseline:>10.2f}{r.error:>9.2f}{r.max_error:>9.2f}{r.score:>9.1f}"
        )
    total = sum(r.score for r in rows)
    lines.append(f"{'total':<16}{'':>10}{'':>10}{'':>9}{'':>9}{total:>9.1f}")
    return "\n".join(lines)
