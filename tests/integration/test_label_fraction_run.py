"""A run on the built-in scenes with ``dataset.label_fraction``: trains, and results.json records the subset."""

from __future__ import annotations

import json

import pytest

from mtlkit.data.partial import labelled_indices
from mtlkit.train.trainer import train


@pytest.mark.slow
def test_label_fraction_run_records_its_subset(tiny_cfg) -> None:
    cfg = tiny_cfg(dataset={"label_fraction": {"normal": 0.1}}, weighting={"name": "dwa"}, train={"epochs": 2})
    run = train(cfg)
    results = json.loads((run / "results.json").read_text())
    assert results["label_fraction"] == {"normal": {"fraction": 0.1, "seed": 0, "labelled": 2, "samples": 16}}
    assert len(labelled_indices(16, 0.1, seed=0, task="normal")) == 2
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(line["train"]["loss/normal"] > 0 for line in lines)  # its two labelled samples trained it
    assert any(k.startswith("normal/") for k in lines[-1]["val"])  # validation keeps every label


@pytest.mark.slow
@pytest.mark.parametrize("name", ["famo", "moco", "gradnorm"])
def test_stateful_methods_train_on_steps_without_a_task(tiny_cfg, name: str) -> None:
    """Methods with per-task state run steps that lack normal's labels (they were refused or fed 0 losses)."""
    cfg = tiny_cfg(dataset={"label_fraction": {"normal": 0.1}}, weighting={"name": name}, train={"epochs": 2})
    run = train(cfg)
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "finished"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    weights = [line["weights"]["normal"] for line in lines]
    others = [line["weights"]["segmentation"] for line in lines]
    # normal is labelled in 2 of 16 samples: absent from most steps, where its weight is 0, so its
    # epoch-mean weight is below every present-every-step task's (all methods here give positive weights)
    assert all(0 < w < o for w, o in zip(weights, others)), (weights, others)
