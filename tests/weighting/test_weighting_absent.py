"""Weighting.only: a method run on the tasks present in a step, and DWA's statistics with absent tasks."""

from __future__ import annotations

import math

import pytest
import torch

from mtlkit.balance import Balancer
from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting import DWA
from mtlkit.weighting._dwa import dwa_weights

NAMES = ["a", "b", "c"]


def test_only_restricts_the_tasks_and_puts_back_k_weights() -> None:
    w = WEIGHTINGS.get("equal")(NAMES)
    with w.only([0, 2]):
        assert w.task_names == ["a", "c"] and w.num_tasks == 2
        assert w.combine(torch.tensor([1.0, 2.0])).item() == 3.0
        assert w.select(torch.tensor([10.0, 20.0, 30.0])).tolist() == [10.0, 30.0]
    assert w.task_names == NAMES and w.num_tasks == 3 and w.present is None
    assert w.last_weights.tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="ascending distinct task indices"):
        with w.only([2, 0]):
            pass


def test_dwa_on_present_tasks_is_their_softmax_alone() -> None:
    history = [[1.0, 2.0, 4.0], [0.5, 1.8, 2.0]]
    w = DWA(NAMES, temperature=2.0)
    w.set_extra_state({"history": history})
    with w.only([0, 2]):
        w.combine(torch.tensor([1.0, 1.0]))
    r = [0.5 / 1.0, 2.0 / 4.0]  # the present tasks' loss ratios
    e = [math.exp(x / 2.0) for x in r]
    assert w.last_weights.tolist() == pytest.approx([2 * e[0] / sum(e), 0.0, 2 * e[1] / sum(e)], rel=1e-6)


def test_dwa_counts_an_epoch_without_labels_as_no_change() -> None:
    """A task with no label in an epoch has a NaN mean loss (train.loop): its ratio is 1 in both epochs it enters."""
    got = dwa_weights([[1.0, 2.0, 3.0], [0.5, math.nan, 3.0]], 2.0)
    e = [math.exp(0.5 / 2), math.exp(1 / 2), math.exp(1 / 2)]
    assert got == pytest.approx([3 * x / sum(e) for x in e])
    w = DWA(NAMES)
    w.epoch_end(0, torch.tensor([1.0, 2.0, 3.0]))
    w.epoch_end(1, torch.tensor([0.5, math.nan, 3.0]))
    assert w.weights.tolist() == pytest.approx(got)


def test_a_stateful_loss_level_method_drops_the_absent_task() -> None:
    """FAMO on the present tasks alone: the absent task's returned loss and gradient are 0."""
    balancer = Balancer("famo", tasks=NAMES)
    x = torch.ones(3, requires_grad=True)
    losses = {"a": (x[0] * 2).abs(), "c": (x[2] * 3).abs()}
    values = balancer.backward(losses)
    assert values.tolist() == [2.0, 0.0, 3.0]
    assert x.grad is not None and float(x.grad[1]) == 0.0
