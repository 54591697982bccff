"""bench/reference_mtan.py (the speed benchmark's yardstick) computes the same function as mtlkit's MTAN."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mtlkit.models import build_model, count_parameters
from mtlkit.tasks import depth_task, normal_task, segmentation_task, stack_losses

TASKS = [segmentation_task(7), depth_task(), normal_task()]
W = 0.125


@pytest.fixture(scope="module")
def ref_mod():
    path = Path(__file__).resolve().parents[2] / "bench" / "reference_mtan.py"
    spec = importlib.util.spec_from_file_location("reference_mtan", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("reference_mtan", module)
    spec.loader.exec_module(module)
    return module


def _batch(b: int = 2, h: int = 32, w: int = 64, dtype=torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(b, 3, h, w, generator=g, dtype=dtype),
        "segmentation": torch.randint(0, 7, (b, h, w), generator=g),
        "depth": torch.rand(b, 1, h, w, generator=g, dtype=dtype) + 0.5,
        "normal": torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g, dtype=dtype), dim=1),
    }


def _pair(ref_mod):
    torch.manual_seed(0)
    model = build_model("mtan", TASKS, W).double()
    ref = ref_mod.ReferenceMTAN({t.name: t.channels for t in TASKS}, W).double()
    return model, ref_mod.load_from_mtlkit(ref, model)


@pytest.mark.parametrize("width", [W, 1.0])
def test_same_parameter_count(ref_mod, width):
    with torch.device("meta"):
        model = build_model("mtan", TASKS, width)
        ref = ref_mod.ReferenceMTAN({t.name: t.channels for t in TASKS}, width)
    assert count_parameters(ref) == count_parameters(model)
    assert len(ref.state_dict()) == len(model.state_dict())


def test_same_outputs_losses_and_gradients(ref_mod):
    torch.set_num_threads(1)
    model, ref = _pair(ref_mod)
    batch = _batch()
    kinds = {t.name: t.kind for t in TASKS}
    out, ref_out = model(batch["image"]), ref(batch["image"])
    assert list(out) == list(ref_out)
    for name in out:
        torch.testing.assert_close(ref_out[name], out[name], rtol=1e-10, atol=1e-10)
    # the reference's losses are mtlkit's (which computes them in float32: compared at that precision)
    ref_losses = torch.stack([ref_mod.task_loss(kinds[n], ref_out[n], batch[n]) for n in ref.task_names])
    torch.testing.assert_close(ref_losses, stack_losses(TASKS, out, batch).double(), rtol=1e-6, atol=1e-7)
    # gradients in float64: the same (float64) loss on both outputs
    losses = torch.stack([ref_mod.task_loss(kinds[n], out[n], batch[n]) for n in ref.task_names])
    torch.testing.assert_close(ref_losses, losses, rtol=1e-10, atol=1e-12)
    losses.sum().backward()
    ref_losses.sum().backward()
    # the copy maps every tensor one to one: move mtlkit's gradients (and its updated BatchNorm
    # statistics) into the reference's layout through it, then compare tensor by tensor
    holder = ref_mod.ReferenceMTAN({t.name: t.channels for t in TASKS}, W).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.grad)
    ref_mod.load_from_mtlkit(holder, model)
    for (name, g_mtlkit), p_ref in zip(holder.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p_ref.grad, g_mtlkit, rtol=1e-8, atol=1e-12, msg=name)
    for (name, b_mtlkit), b_ref in zip(holder.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b_ref, b_mtlkit, rtol=1e-10, atol=1e-12, msg=name)


def test_reference_step_trains(ref_mod):
    torch.manual_seed(0)
    ref = ref_mod.ReferenceMTAN({t.name: t.channels for t in TASKS}, W)
    batch = _batch(dtype=torch.float32)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    kinds = {t.name: t.kind for t in TASKS}
    first = ref_mod.reference_step(ref, opt, batch, kinds)
    for _ in range(3):
        last = ref_mod.reference_step(ref, opt, batch, kinds)
    assert first.shape == (3,) and last.sum() < first.sum()
