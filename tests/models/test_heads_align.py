"""``model.align_corners``: the ResNet DeepLabV3 heads' final upsampling, torchvision's or the MTAN authors' / LibMTL's.

The head's output is compared with bilinear interpolation written here from its two definitions
(source coordinate ``(d + 0.5) * in / out - 0.5`` clamped at 0, or ``d * (in - 1) / (out - 1)``),
applied in float64 to the logits the head computes before it upsamples.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F

from mtlkit import catalog
from mtlkit import sweep as sweeps
from mtlkit.config import load_config
from mtlkit.errors import ConfigError
from mtlkit.models import build_model
from mtlkit.models.heads import DeepLabHead
from mtlkit.tasks import classification_task, depth_task, segmentation_task
from mtlkit.train.trainer import build

TASKS = [segmentation_task(5), depth_task()]
ARCHS = ("single", "hps", "mtan", "cross_stitch", "mmoe", "cgc", "ple", "dselect_k", "ltb")
#: float32 rounding of one bilinear sample (a convex combination of four values, weights computed in
#: float32): a few units in the last place of the largest magnitude
ULPS = 8 * torch.finfo(torch.float32).eps


def source_coords(n_in: int, n_out: int, align_corners: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output index: the lower and upper source index and the upper one's weight."""
    d = torch.arange(n_out, dtype=torch.float64)
    if align_corners:
        src = d * (n_in - 1) / (n_out - 1) if n_out > 1 else torch.zeros_like(d)
    else:
        src = ((d + 0.5) * n_in / n_out - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo, hi, src - lo


def bilinear(z: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) ``z`` to ``size`` in float64, separably along H then W."""
    z = z.double()
    lo, hi, t = source_coords(z.shape[-2], size[0], align_corners)
    z = z[..., lo, :] * (1 - t)[:, None] + z[..., hi, :] * t[:, None]
    lo, hi, t = source_coords(z.shape[-1], size[1], align_corners)
    return z[..., lo] * (1 - t) + z[..., hi] * t


def head_and_logits(align_corners: bool | None, seed: int = 0):
    """A DeepLabV3 head upsampling x8 (eval mode) and its output and pre-upsampling logits on random features."""
    torch.manual_seed(seed)
    kwargs = {} if align_corners is None else {"align_corners": align_corners}
    head = DeepLabHead(16, 3, width=0.125, upsample=8, **kwargs).eval()
    feats = torch.randn(2, 16, 5, 7)
    with torch.no_grad():
        logits = torch.nn.Sequential.forward(head, feats)
        out = head(feats)
    return out, logits


@pytest.mark.parametrize("align_corners", [True, False])
def test_head_upsamples_as_the_definition(align_corners: bool) -> None:
    out, logits = head_and_logits(align_corners)
    assert logits.shape[-2:] == (5, 7) and out.shape[-2:] == (40, 56)
    ref = bilinear(logits, (40, 56), align_corners)
    tol = ULPS * float(logits.abs().max())
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=tol)
    torch.testing.assert_close(
        out, F.interpolate(logits, size=(40, 56), mode="bilinear", align_corners=align_corners), rtol=0, atol=tol
    )


def test_default_is_torchvision_and_the_two_differ() -> None:
    default, logits = head_and_logits(None)
    off, _ = head_and_logits(False)
    on, _ = head_and_logits(True)
    torch.testing.assert_close(default, off, rtol=0, atol=0)
    assert float((on - off).abs().max()) > 100 * ULPS * float(logits.abs().max())


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_passes_the_option_to_every_head(arch: str) -> None:
    for value in (False, True):
        model = build_model(arch, TASKS, 0.125, backbone="resnet18_dilated", align_corners=value)
        heads = [m for m in model.modules() if isinstance(m, DeepLabHead)]
        assert len(heads) == len(TASKS)
        assert all(h.align_corners is value for h in heads)


def test_hps_output_is_the_aligned_upsampling_of_its_logits() -> None:
    torch.manual_seed(0)
    model = build_model("hps", TASKS, 0.125, backbone="resnet18_dilated", align_corners=True).eval()
    x = torch.randn(1, 3, 24, 32)
    with torch.no_grad():
        out = model(x)
        feats = model.backbone(x)
        for t in TASKS:
            logits = torch.nn.Sequential.forward(model.heads[t.name], feats)
            ref = bilinear(logits, (24, 32), align_corners=True)
            torch.testing.assert_close(out[t.name].double(), ref, rtol=0, atol=ULPS * float(logits.abs().max()))


def test_config_key_reaches_the_model() -> None:
    over = ["model.arch=hps", "model.backbone=resnet18_dilated", "model.width=0.125"]
    assert load_config(None).model.align_corners is False
    for value in (False, True):
        cfg = load_config(None, [*over, f"model.align_corners={str(value).lower()}"])
        model = build(cfg, torch.device("cpu")).model
        assert {h.align_corners for h in model.modules() if isinstance(h, DeepLabHead)} == {value}


@pytest.mark.parametrize(
    ("arch", "backbone", "needle"),
    [
        ("hps", "segnet", "the segnet backbone's heads do not upsample"),
        ("mtan", "wrn28", "the wrn28 backbone's heads do not upsample"),
        ("mtan", None, "the segnet backbone's heads do not upsample"),
        ("cross_stitch", None, "the segnet backbone's heads do not upsample"),
        ("single", "segnet", "the segnet backbone's heads do not upsample"),
        ("dense", None, "on its own backbone has no upsampling head"),
        ("stan", "segnet", "model.arch 'stan' on the segnet backbone has no upsampling head"),
    ],
)
def test_refused_where_no_head_upsamples(arch: str, backbone: str | None, needle: str) -> None:
    tasks = [classification_task("a", 10), classification_task("b", 10)] if backbone == "wrn28" else TASKS
    with pytest.raises(ConfigError, match="model.align_corners") as err:
        build_model(arch, tasks, 0.125, backbone=backbone, align_corners=True)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_not_a_bool_or_under_options_is_refused() -> None:
    with pytest.raises(ConfigError, match="model.align_corners must be true or false"):
        build_model("hps", TASKS, 0.125, backbone="resnet18_dilated", align_corners=1)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.options={align_corners: true}"])
    assert (
        str(err.value) == "overrides: model.options: align_corners is set as model.align_corners, not under "
        "model.options"
    )


def test_libmtl_presets_use_their_upsampling() -> None:
    configs = catalog.presets("config")
    for name in ("nyuv2_resnet50", "cityscapes_resnet50"):
        assert load_config(configs[name]).model.align_corners is True
    runs = sweeps.load_sweep(catalog.presets("sweep")["nyuv2_resnet50"]).runs()
    assert runs and all(r.config.model.align_corners is True for r in runs)
    assert load_config(configs["demo"]).model.align_corners is False


def test_hash_at_the_default_is_the_hash_without_the_key() -> None:
    """A config that leaves ``model.align_corners`` false keeps the hash it had before the key existed."""
    for cfg in (load_config(None), load_config(catalog.presets("config")["demo"])):
        assert cfg.to_dict()["model"]["align_corners"] is False
        data = cfg.hashed_dict()  # what the hash reads: the key at its default is not in it
        assert "align_corners" not in data["model"]
        assert cfg.hash() == hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
    assert load_config(None, ["model.align_corners=true"]).hash() != load_config(None).hash()
    run = sweeps.load_sweep(catalog.presets("sweep")["scenes_resnet18_cpu"]).runs()[0]
    flipped = run.config.model_copy(deep=True)
    flipped.model.align_corners = True
    assert sweeps.SweepRun(run.name, run.assignment, flipped).plan_hash() != run.plan_hash()
