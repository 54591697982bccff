"""What the registered loggers share: the config flattened to dotted keys, an epoch's numbers as scalars.

The logger interface itself, and the background thread each tracker runs on, are in
:mod:`mtlkit.train.logging` (:class:`~mtlkit.train.logging.Logger`,
:class:`~mtlkit.train.logging.Background`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtlkit.records import EpochRecord
from mtlkit.train.logging import CLOSE_TIMEOUT, FINAL_STATUSES


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and None kept as values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def epoch_scalars(record: EpochRecord | Mapping[str, Any]) -> dict[str, float]:
    """The numbers of an epoch record under the TensorBoard tag names (train/..., val/..., weights/..., lr)."""
    data = record.to_dict() if isinstance(record, EpochRecord) else record
    out = {
        f"{section}/{k}": float(v)
        for section in ("train", "val", "weights")
        for k, v in data.get(section, {}).items()
        if isinstance(v, (int, float))
    }
    if "lr" in data:
        out["lr"] = float(data["lr"])
    return out


__all__ = ["CLOSE_TIMEOUT", "FINAL_STATUSES", "epoch_scalars", "flatten"]
