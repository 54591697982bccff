"""docs/differences.md against the code: the architecture rows state what the models do.

Each test builds the model the row is about (dilated ResNet-18 at width 1/8) and checks the
stated count or behaviour, and that the page still states it, so a change to either shows here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mtlkit.models import build_model
from mtlkit.tasks import depth_task, segmentation_task

PAGE = (Path(__file__).resolve().parents[2] / "docs" / "differences.md").read_text()
TASKS = [segmentation_task(5), depth_task()]
BACKBONE = "resnet18_dilated"


def row(choice: str) -> str:
    """The table row whose first cell is ``choice``."""
    rows = [line for line in PAGE.splitlines() if line.startswith(f"| {choice} |")]
    assert len(rows) == 1, choice
    return rows[0]


def test_page_is_in_the_navigation() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "gen_pages.py").read_text()
    assert '"differences.md")' in text


def test_cross_stitch_mixes_after_every_resnet_stage_the_last_included() -> None:
    assert "after layer1, layer2, layer3 and layer4 (4 units; the heads read stitched features)" in row(
        "Cross-stitch: stitch points on the ResNets"
    )
    torch.manual_seed(0)
    model = build_model("cross_stitch", TASKS, 0.125, backbone=BACKBONE).eval()
    assert len(model.stitches) == 4 == next(iter(model.nets.values())).num_stages
    x = torch.randn(1, 3, 24, 32)
    with torch.no_grad():
        before = model(x)
        model.stitches[-1].alpha.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # swap the columns after layer4
        after = model.encode(x)
        nets = list(model.nets.values())
        h = [net.begin(x)[0] for net in nets]
        for i in range(3):
            h = model.stitches[i]([net.stage(i, hh, None) for net, hh in zip(nets, h)])
        last = [net.stage(3, hh, None) for net, hh in zip(nets, h)]
    torch.testing.assert_close(after[0], last[1], rtol=0, atol=0)
    assert not torch.equal(model(x)["segmentation"], before["segmentation"])


def test_ltb_branches_before_layer2_to_layer4_and_evaluates_the_argmax_tree() -> None:
    assert "before layer2, layer3, layer4 (3;" in row("LTB: branch points on the ResNets")
    assert "the most likely parent (the argmax tree)" in row("LTB: evaluation")
    torch.manual_seed(0)
    model = build_model("ltb", TASKS, 0.125, backbone=BACKBONE)
    assert tuple(model.alpha.shape) == (3, 2, 2)
    model.set_epoch(150, 200)  # past the warm-up: training samples, evaluation does not
    model.eval()
    x = torch.randn(1, 3, 24, 32)
    with torch.no_grad():
        first, second = model(x), model(x)
    torch.testing.assert_close(first["depth"], second["depth"], rtol=0, atol=0)


def test_ple_has_one_level_per_resnet_stage() -> None:
    assert row("PLE: levels on the ResNets").startswith("| PLE: levels on the ResNets | 4, one per stage;")
    model = build_model("ple", TASKS, 0.125, backbone=BACKBONE)
    assert model.levels == 4 == model.shared_experts[0].num_stages
    assert len(model.task_gates[TASKS[0].name]) == 4 and len(model.shared_gates) == 3


def test_head_row_names_the_switch_and_the_default() -> None:
    cells = row("DeepLabV3 heads' final x8 bilinear upsampling")
    assert "`align_corners=False` (torchvision's convention) by default" in cells
    assert "`model.align_corners: true`" in cells and "`nyuv2_resnet50`" in cells
    model = build_model("hps", TASKS, 0.125, backbone=BACKBONE)
    assert all(h.align_corners is False for h in model.heads.values())
