"""``model.init_from``: each stream of a stitched network starts exactly from its one-task run."""

from __future__ import annotations

import pytest
import torch
import yaml

from mtlkit.config import config_from_dict
from mtlkit.errors import ConfigError
from mtlkit.models import build_model
from mtlkit.tasks import normal_task, segmentation_task
from mtlkit.train.init_from import apply_init_from

W = 0.0625
TASKS = [segmentation_task(13), normal_task()]


def fake_run(path, task, *, width=W, backbone="alexnet", seed=0):
    """A run folder as training leaves it: config.yaml and checkpoints/best.pt of a one-task network."""
    cfg = config_from_dict({"model": {"arch": "single", "backbone": backbone, "width": width}})
    path.mkdir()
    (path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    torch.manual_seed(seed)
    model = build_model("single", [task], width, backbone=backbone)
    (path / "checkpoints").mkdir()
    torch.save({"model": model.state_dict()}, path / "checkpoints" / "best.pt")
    return model


def stitched_config(init_from):
    return config_from_dict(
        {"model": {"arch": "cross_stitch", "backbone": "alexnet", "width": W, "init_from": init_from}}
    )


def test_init_from_loads_both_streams_exactly(tmp_path):
    seg = fake_run(tmp_path / "seg", TASKS[0], seed=1)
    nor = fake_run(tmp_path / "nor", TASKS[1], seed=2)
    torch.manual_seed(3)
    model = build_model("cross_stitch", TASKS, W, backbone="alexnet")
    alphas = [u.alpha.detach().clone() for u in model.units()]
    cfg = stitched_config({"segmentation": str(tmp_path / "seg"), "normal": str(tmp_path / "nor")})
    assert len(apply_init_from(cfg, model)) == 2
    state = model.state_dict()
    for src in (seg, nor):
        for key, value in src.state_dict().items():  # single: nets.<task>.* and heads.<task>.*
            assert torch.equal(state[key], value), key
    for unit, before in zip(model.units(), alphas):  # the units keep their initialisation
        assert torch.equal(unit.alpha.detach(), before)
    # the two streams differ (each came from its own run)
    assert not torch.equal(state["nets.segmentation.features.0.weight"], state["nets.normal.features.0.weight"])


def test_init_from_refuses_a_misfit_with_one_line_naming_the_run(tmp_path):
    model = build_model("cross_stitch", TASKS, W, backbone="alexnet")
    fake_run(tmp_path / "wide", TASKS[0], width=0.125)
    with pytest.raises(
        ConfigError, match=r"model\.init_from\.segmentation: .*wide: trained backbone alexnet at width 0\.125"
    ):
        apply_init_from(stitched_config({"segmentation": str(tmp_path / "wide")}), model)
    fake_run(tmp_path / "res", TASKS[0], backbone="resnet18_dilated")
    with pytest.raises(ConfigError, match=r"res: trained backbone resnet18_dilated"):
        apply_init_from(stitched_config({"segmentation": str(tmp_path / "res")}), model)
    fake_run(tmp_path / "nor", TASKS[1])
    with pytest.raises(ConfigError, match=r"nor: the run has no network for task 'segmentation'"):
        apply_init_from(stitched_config({"segmentation": str(tmp_path / "nor")}), model)
    with pytest.raises(ConfigError, match=r"model\.init_from\.depth: this run has no task 'depth'"):
        apply_init_from(stitched_config({"depth": str(tmp_path / "nor")}), model)
    with pytest.raises(ConfigError, match=r"missing: not a run folder"):
        apply_init_from(stitched_config({"normal": str(tmp_path / "missing")}), model)


def test_init_from_is_hash_neutral_at_its_default():
    plain = config_from_dict({"model": {"arch": "cross_stitch"}})
    assert plain.hash() == config_from_dict({"model": {"arch": "cross_stitch", "init_from": None}}).hash()
    assert plain.hash() != config_from_dict({"model": {"arch": "cross_stitch", "init_from": {"a": "b"}}}).hash()
