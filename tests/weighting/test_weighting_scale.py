"""Mixed precision: a GradScaler's loss scale must not change any method's task weights. The step
multiplies the losses by the scale and divides the per-task gradients by it before the method
sees them; this checks that contract for every registered method on CPU (float32 compute, scale
2^14, so only the scaling path differs between the two runs)."""

from __future__ import annotations

import pytest
import torch

from helpers.nets import TinyNet, _batch
from mtlkit.registry import WEIGHTINGS
from mtlkit.tasks import depth_task, normal_task, segmentation_task
from mtlkit.train.step import StepRunner

TASKS = [segmentation_task(3, "seg"), depth_task("depth"), normal_task("normal")]


def _weights_after_steps(name: str, mode: str, scaler: torch.amp.GradScaler | None) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = TinyNet(TASKS)
    method = WEIGHTINGS.get(name)([t.name for t in TASKS])
    params = list(model.parameters()) + [p for p in method.parameters() if p.requires_grad]
    runner = StepRunner(model, method, TASKS, torch.optim.SGD(params, lr=1e-2), mode, scaler=scaler)
    out = []
    for _ in range(3):
        runner(_batch())
        out.append(method.last_weights.detach().double().clone())
    return out


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name, cls in WEIGHTINGS.items():
        cases.append((name, "parameters"))
        if cls.needs_gradients and cls.supports_representation:
            cases.append((name, "representation"))
    return cases


@pytest.mark.parametrize("name,mode", _cases())
def test_grad_scaler_does_not_change_the_weights(name, mode):
    plain = _weights_after_steps(name, mode, None)
    scaled = _weights_after_steps(name, mode, torch.amp.GradScaler("cpu", init_scale=2.0**14))
    for a, b in zip(plain, scaled):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
