"""Cross-stitch variants: Misra et al.'s K x K units and the MTAN paper's shared K-vectors."""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.models import build_model, count_parameters
from mtlkit.models.cross_stitch import CrossStitchUnit, SharedStitchUnit
from mtlkit.tasks import depth_task, normal_task, segmentation_task

TASKS = [segmentation_task(7), depth_task(), normal_task()]
W = 0.125
POINTS = ["enc0", "enc1", "enc2", "enc3", "enc4", "dec4", "dec3", "dec2", "dec1"]


def test_mtan_variant_units_shapes_and_initialisation() -> None:
    model = build_model("cross_stitch", TASKS, W, variant="mtan")
    assert list(model.stitches) == POINTS
    for unit in model.stitches.values():
        assert isinstance(unit, SharedStitchUnit)
        assert unit.alpha.shape == (3,) and torch.equal(unit.alpha.detach(), torch.ones(3))
    misra = build_model("cross_stitch", TASKS, W)
    assert misra.variant == "misra" and all(isinstance(u, CrossStitchUnit) for u in misra.stitches.values())
    # same networks, 9 x (K vector) instead of 9 x (K x K) stitch parameters
    assert count_parameters(misra) - count_parameters(model) == 9 * (3 * 3 - 3)
    out = model(torch.randn(2, 3, 32, 32))
    assert out["segmentation"].shape == (2, 7, 32, 32) and out["normal"].shape == (2, 3, 32, 32)


def test_shared_unit_mix_equals_the_formula() -> None:
    unit = SharedStitchUnit(3)
    with torch.no_grad():
        unit.alpha.copy_(torch.tensor([0.5, -1.0, 2.0]))
    xs = [torch.randn(2, 4, 3, 5) for _ in range(3)]
    expected = 0.5 * xs[0] - 1.0 * xs[1] + 2.0 * xs[2]
    out = unit(xs)
    assert len(out) == 3 and all(torch.allclose(o, expected, atol=1e-6) for o in out)
    assert torch.equal(unit.matrix().detach(), torch.tensor([[0.5, -1.0, 2.0]] * 3))


def test_mtan_variant_gradient_reaches_every_weight() -> None:
    unit = SharedStitchUnit(2)
    xs = [torch.full((1, 1, 1, 1), 3.0), torch.full((1, 1, 1, 1), 5.0)]
    sum(o.sum() for o in unit(xs)).backward()
    # d/dw_k of sum_i (w . x) = K * x_k
    assert torch.allclose(unit.alpha.grad, torch.tensor([6.0, 10.0]))


def _grad_norm(model, output: str, net: str) -> float:
    model.zero_grad()
    model(torch.randn(1, 3, 32, 32))[output].sum().backward()
    return sum(float(p.grad.abs().sum()) for p in model.nets[net].parameters() if p.grad is not None)


def test_mtan_variant_stitches_the_network_with_the_formula() -> None:
    """With w = e_0 at all 9 points every mix is task 0's features: segmentation uses net 0 only."""
    torch.manual_seed(0)
    model = build_model("cross_stitch", TASKS, W, variant="mtan")
    assert _grad_norm(model, "segmentation", "depth") > 0  # ones: every net feeds every task
    with torch.no_grad():
        for unit in model.stitches.values():
            unit.alpha.copy_(torch.tensor([1.0, 0.0, 0.0]))
    assert _grad_norm(model, "segmentation", "depth") == 0.0
    assert _grad_norm(model, "segmentation", "normal") == 0.0
    assert _grad_norm(model, "depth", "segmentation") > 0  # depth's net reads net 0's stitched features
    with model.recording() as rec:
        model(torch.randn(1, 3, 32, 32))
    assert set(rec) == {f"alpha/{p}" for p in POINTS}
    assert torch.equal(rec["alpha/enc0"], torch.tensor([[1.0, 0.0, 0.0]] * 3))
    assert model.stitch_alphas()["dec1"].shape == (3, 3)


def test_param_groups_learning_rates() -> None:
    mtan = build_model("cross_stitch", TASKS, W, variant="mtan")
    groups = mtan.param_groups(1e-4)
    assert [g["lr"] for g in groups] == [1e-4, 1e-4]
    assert len(groups[1]["params"]) == 9 and all(p.shape == (3,) for p in groups[1]["params"])
    n_all = sum(p.numel() for p in mtan.parameters())
    assert sum(p.numel() for g in groups for p in g["params"]) == n_all
    misra = build_model("cross_stitch", TASKS, W, variant="misra")
    assert misra.param_groups(1e-4)[1]["lr"] == pytest.approx(1e-2)
    assert build_model("cross_stitch", TASKS, W, variant="mtan", alpha_lr_mult=10).param_groups(1e-4)[1][
        "lr"
    ] == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"variant": "paper"}, "variant must be one of misra, mtan"),
        ({"variant": "mtan", "alpha_s": 0.9}, "belong to variant 'misra'"),
        ({"variant": "mtan", "per_channel": True}, "belong to variant 'misra'"),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model("cross_stitch", TASKS, W, **options)
