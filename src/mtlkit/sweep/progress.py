"""Overall sweep progress: runs done / total, elapsed time and an estimate of the time left.

Shown as one bar above the running run's own epoch bar (one after another), or above the list of
runs in flight (parallel, Ray, SLURM). The estimate counts only runs trained in this invocation
(skipped runs take no time): mean run time x runs left / runs at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable


def eta_seconds(durations: list[float], remaining: int, concurrency: int = 1) -> float | None:
    """Seconds left when ``remaining`` runs take the mean of ``durations``, ``concurrency`` at a time."""
    if remaining <= 0:
        return 0.0
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    waves = -(-remaining // max(1, concurrency))
    return mean * waves


def fmt_seconds(seconds: float | None) -> str:
    """``1:02:03``, ``2:05`` or ``?``."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class SweepProgress:
    """A tqdm bar over the runs whose text says done/total, elapsed and ETA, and which runs are in flight."""

    def __init__(self, name: str, total: int, concurrency: int = 1, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.total, self.concurrency, self.done = total, concurrency, 0
        self.durations: list[float] = []
        self.running: list[str] = []
        self.start = time.perf_counter()
        self.bar = tqdm(
            total=total, desc=f"sweep {name}", unit="run", disable=not enabled, position=0, dynamic_ncols=True
        )
        self.refresh()

    def text(self) -> str:
        """``elapsed 1:02, ETA 3:10, running: a, b``."""
        elapsed = time.perf_counter() - self.start
        eta = eta_seconds(self.durations, self.total - self.done, self.concurrency)
        tail = f", running: {', '.join(self.running)}" if self.running else ""
        return f"elapsed {fmt_seconds(elapsed)}, ETA {fmt_seconds(eta)}{tail}"

    def refresh(self) -> None:
        """Redraw the bar with the current text."""
        text = self.text().replace("{", "{{").replace("}", "}}")
        self.bar.bar_format = "{desc}: {n_fmt}/{total_fmt} runs |{bar:20}| " + text
        self.bar.refresh()

    def started(self, names: Iterable[str]) -> None:
        """Runs now in flight."""
        self.running.extend(n for n in names if n not in self.running)
        self.refresh()

    def finished(self, name: str, seconds: float | None) -> None:
        """A run ended (``seconds`` None when it was skipped: it does not count towards the estimate)."""
        if name in self.running:
            self.running.remove(name)
        if seconds is not None:
            self.durations.append(seconds)
        self.done += 1
        self.bar.update(1)
        self.refresh()

    def close(self) -> None:
        """Leave the final state on screen."""
        self.refresh()
        self.bar.close()
