"""Mixture-of-experts and branching architectures against their definitions: DSelect-k's smooth
step and k-sparse selection, MMoE/CGC/PLE gates reducing to known networks, LTB's schedule and
branching."""

from __future__ import annotations

import math

import pytest
import torch

from mtlkit.models import build_model
from mtlkit.models.dselect_k import DSelectGate, smooth_step
from mtlkit.models.moe import mix
from mtlkit.tasks import depth_task, normal_task, segmentation_task

TASKS = [segmentation_task(5), depth_task(), normal_task()]


def test_smooth_step_by_hand():
    g = 2.0
    t = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    inner = lambda s: -2 / g**3 * s**3 + 3 / (2 * g) * s + 0.5  # noqa: E731
    want = torch.tensor([0.0, 0.0, inner(-0.5), 0.5, inner(0.5), 1.0, 1.0])
    torch.testing.assert_close(smooth_step(t, g), want)
    # C1 at the ends: the cubic's slope vanishes at +-gamma/2
    s = torch.tensor([-1.0 + 1e-4, 1.0 - 1e-4], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(smooth_step(s, g).sum(), s)
    assert grad.abs().max() < 1e-3


@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_dselect_gate_is_a_distribution_and_k_sparse_once_saturated(n):
    torch.manual_seed(0)
    gate = DSelectGate(3 * 4, n, 2, 1.0, 2)
    x = torch.randn(6, 3, 8, 8)
    w = gate(x)
    assert w.shape == (6, n) and (w >= 0).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(6))
    assert (w > 0).all()  # at initialisation every expert has weight (smooth region)
    # saturate every bit: selector 0 -> expert n-1, selector 1 -> expert 1 (codes in binary, MSB first)
    bits = gate.bits
    code = lambda e: [1.0 if (e >> (bits - 1 - b)) & 1 else -1.0 for b in range(bits)]  # noqa: E731
    with torch.no_grad():
        gate.z.weight.zero_()
        gate.z.bias.copy_(torch.tensor(code(n - 1) + code(1)))
        gate.w.weight.zero_()
        gate.w.bias.copy_(torch.tensor([math.log(3.0), 0.0]))
    w = gate(x)
    want = torch.zeros(n)
    want[n - 1], want[1] = 0.75, 0.25
    torch.testing.assert_close(w, want.expand(6, n))


def test_dselect_k_training_selects_k_experts():
    """Fit a mixture of two of four experts: the other two reach exactly zero weight."""
    torch.manual_seed(0)
    gate = DSelectGate(4, 4, 2, 1.0, 1)
    x = torch.randn(1, 4, 1, 1)
    experts = torch.randn(4, 8)
    target = 0.7 * experts[1] + 0.3 * experts[3]
    opt = torch.optim.Adam(gate.parameters(), lr=0.05)
    for _ in range(150):
        loss = ((gate(x)[0] @ experts - target) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = gate(x)[0].detach()
    assert w[0] == 0 and w[2] == 0
    torch.testing.assert_close(w[[1, 3]], torch.tensor([0.7, 0.3]), atol=2e-3, rtol=0)


def test_mix_by_hand():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    w = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    out = mix(w, [a, b])
    torch.testing.assert_close(out[0], 0.25 * a[0] + 0.75 * b[0])
    torch.testing.assert_close(out[1], a[1])


def force_gate(gate: torch.nn.Module, index: int) -> None:
    """Make a softmax gate put (numerically) all weight on expert ``index``."""
    with torch.no_grad():
        gate.linear.weight.zero_()
        gate.linear.bias.fill_(-60.0)
        gate.linear.bias[index] = 60.0


@pytest.mark.parametrize("backbone", ["segnet", "resnet18_dilated"])
def test_forced_gates_reduce_to_known_networks(backbone):
    width, size = (0.0625, 32) if backbone == "segnet" else (0.125, 24)
    x = torch.randn(2, 3, size, size)
    torch.manual_seed(0)
    mmoe = build_model("mmoe", TASKS, width, backbone=backbone, num_experts=3).eval()
    for t in TASKS:
        force_gate(mmoe.gates[t.name], 2)
    torch.manual_seed(1)
    cgc = build_model("cgc", TASKS, width, backbone=backbone, num_shared_experts=2).eval()
    for t in TASKS:
        force_gate(cgc.gates[t.name], 0)  # own expert first
    ple = build_model("ple", TASKS, width, backbone=backbone).eval()
    for t in TASKS:
        for g in ple.task_gates[t.name]:
            force_gate(g, 0)
    with torch.no_grad():
        out_m, out_c, out_p = mmoe(x), cgc(x), ple(x)
        for t in TASKS:
            # MMoE gated onto expert 2 = hard sharing on expert 2
            torch.testing.assert_close(out_m[t.name], mmoe.heads[t.name](mmoe.experts[2](x)))
            # CGC / PLE gated onto each task's own expert = single-task networks
            torch.testing.assert_close(out_c[t.name], cgc.heads[t.name](cgc.task_experts[t.name][0](x)))
            torch.testing.assert_close(out_p[t.name], ple.heads[t.name](ple.task_experts[t.name][0](x)))


def test_ltb_schedule_and_branching():
    torch.manual_seed(0)
    model = build_model("ltb", TASKS[:2], 0.125, backbone="resnet18_dilated")
    assert model.alpha.shape == (3, 2, 2) and model.temperature() == 1.0 and not model.in_warmup()
    model.set_epoch(1, 200)
    assert model.in_warmup()
    torch.testing.assert_close(model.branch_weights(), torch.full((3, 2, 2), 0.5))
    model.set_epoch(3, 200)
    assert not model.in_warmup() and model.temperature() == pytest.approx(0.05 * 200 / 2)
    w = model.branch_weights()
    assert set(w.unique().tolist()) <= {0.0, 1.0} and (w.sum(dim=-1) == 1).all()
    # straight-through: the branch logits get a gradient after the warm-up
    x = torch.randn(2, 3, 24, 24)
    sum(o.sum() for o in model(x).values()).backward()
    assert model.alpha.grad is not None and model.alpha.grad.abs().sum() > 0
    # evaluation follows the most likely parents: every child of column 1 branches from column 0
    with torch.no_grad():
        model.alpha.zero_()
        model.alpha[:, :, 0] = 5.0
    model.eval()
    net0, net1 = model.nets["segmentation"], model.nets["depth"]
    with torch.no_grad():
        h = net0.stem(x)
        for i in range(3):
            h = net0.stage(i, h, None)
        want = model.heads["depth"](net1.stage(3, h, None))
        torch.testing.assert_close(model(x)["depth"], want)
        with model.recording() as rec:
            model(x)
    torch.testing.assert_close(rec["branch/stage1"].sum(dim=-1), torch.ones(2))
