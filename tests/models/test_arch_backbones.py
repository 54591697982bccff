"""Every (backbone, architecture) pair at small sizes: output shapes, a gradient for every
parameter, the sharing contract (shared parameters = those two tasks' losses reach), the
representation contract, gates as distributions, refusals, and parameter counts by hand."""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.models import build_model
from mtlkit.models.backbones import build_backbone
from mtlkit.models.params import count_model_parameters
from mtlkit.tasks import depth_task, normal_task, segmentation_task, stack_losses

NYUV2 = [segmentation_task(13), depth_task(), normal_task()]
CITYSCAPES = [segmentation_task(7), depth_task()]
#: backbone -> (width, input height, input width) small enough for a fast test
SMALL = {"segnet": (0.0625, 32, 32), "resnet18_dilated": (0.125, 24, 32), "resnet50_dilated": (0.0625, 24, 32)}
ARCHS = ("single", "hps", "mtan", "cross_stitch", "mmoe", "cgc", "ple", "dselect_k", "ltb")
REPRESENTATION = ("hps", "mtan", "mmoe", "cgc", "dselect_k")
PAIRS = [(b, a) for b in SMALL for a in ARCHS]


def small(backbone: str, arch: str, tasks=NYUV2, **options):
    width, h, w = SMALL[backbone]
    model = build_model(arch, tasks, width, backbone=backbone, **options)
    model.set_epoch(0, 200)  # LTB: inside its warm-up, every column feeds every task
    return model, h, w


def batch_for(tasks, h, w, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = {"image": torch.randn(b, 3, h, w, generator=g)}
    for t in tasks:
        if t.kind == "segmentation":
            batch[t.name] = torch.randint(0, t.channels, (b, h, w), generator=g)
        elif t.kind == "depth":
            batch[t.name] = torch.rand(b, 1, h, w, generator=g) + 0.5
        else:
            batch[t.name] = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    return batch


@pytest.mark.parametrize(("backbone", "arch"), PAIRS)
def test_shapes_gradients_and_sharing(backbone, arch):
    torch.manual_seed(0)
    model, h, w = small(backbone, arch)
    batch = batch_for(NYUV2, h, w)
    out = model(batch["image"])
    assert list(out) == [t.name for t in NYUV2]
    for t in NYUV2:
        assert out[t.name].shape == (2, t.channels, h, w) and torch.isfinite(out[t.name]).all()
    params = [p for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    reached = []
    losses = [t.loss(out[t.name], batch[t.name]) for t in NYUV2]
    for k, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, params, retain_graph=k < len(losses) - 1, allow_unused=True)
        reached.append({i for i, g in enumerate(grads) if g is not None and g.abs().sum() > 0})
    everything = set().union(*reached)
    assert [names[i] for i in range(len(params)) if i not in everything] == []
    by_two = {i for i in everything if sum(i in r for r in reached) >= 2}
    shared = {id(p) for p in model.shared_parameters()}
    shared_idx = {i for i, p in enumerate(params) if id(p) in shared}
    if model.supports_representation:
        # the f blocks of MTAN serve every task after the representation; the rest is exact
        assert shared_idx <= by_two
    elif (backbone, arch) == ("segnet", "cross_stitch"):
        # the paper's class declares all but the heads shared, its unstitched last decoder stage too
        assert by_two <= shared_idx
    else:
        assert shared_idx == by_two


@pytest.mark.parametrize(("backbone", "arch"), PAIRS)
def test_encode_decode_and_task_subsets(backbone, arch):
    torch.manual_seed(0)
    model, h, w = small(backbone, arch, CITYSCAPES)
    model.eval()
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        full = model(x)
        again = model.decode(model.encode(x))
        sub = model(x, tasks=["depth"])
    for name in full:
        torch.testing.assert_close(again[name], full[name], rtol=0, atol=0)
    assert list(sub) == ["depth"]
    torch.testing.assert_close(sub["depth"], full["depth"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="no task 'edges'"):
        model(x, tasks=["edges"])
    reps = [r for r in model.encode(x) if r.requires_grad]
    if model.supports_representation:
        params = list(model.parameters())
        grads = torch.autograd.grad(sum(r.sum() for r in reps), params, allow_unused=True)
        assert {id(p) for p, g in zip(params, grads) if g is not None} == {id(p) for p in model.shared_parameters()}


@pytest.mark.parametrize("backbone", ["resnet18_dilated", "segnet"])
@pytest.mark.parametrize("arch", REPRESENTATION)
def test_representation_gradient_equals_plain_backward(backbone, arch):
    """decode reads shared parameters only through encode's tensors (what MGDA-UB relies on)."""
    torch.manual_seed(0)
    model, h, w = small(backbone, arch)
    batch = batch_for(NYUV2, h, w)
    torch.manual_seed(5)  # same dropout masks in both passes
    stack_losses(NYUV2, model(batch["image"]), batch).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    reps = model.encode(batch["image"])
    leaves = [r.detach().requires_grad_(True) for r in reps]
    stack_losses(NYUV2, model.decode(leaves), batch).sum().backward()
    torch.autograd.backward(reps, [leaf.grad for leaf in leaves])
    for p, g in zip(model.parameters(), plain):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backbone", ["segnet", "resnet18_dilated"])
@pytest.mark.parametrize("arch", ["mmoe", "cgc", "dselect_k", "ple"])
def test_gates_are_distributions(backbone, arch):
    torch.manual_seed(0)
    model, h, w = small(backbone, arch, num_task_experts=2) if arch in ("cgc", "ple") else small(backbone, arch)
    with torch.no_grad(), model.recording() as rec:
        model(torch.randn(3, 3, h, w))
    gates = {k: v for k, v in rec.items() if k.startswith("gate/")}
    assert gates
    for key, g in gates.items():
        assert g.shape[0] == 3 and (g >= 0).all(), key
        torch.testing.assert_close(g.sum(dim=1), torch.ones(3, dtype=g.dtype))
    if arch == "ple":
        levels = model.levels
        assert len(gates) == levels * 3 + (levels - 1)
        assert gates["gate/depth/level0"].shape == (3, 2 + 1)
        assert gates["gate/shared/level0"].shape == (3, 2 * 3 + 1)
    if arch == "cgc":
        assert gates["gate/depth"].shape == (3, 3)


def test_refusals():
    with pytest.raises(ConfigError, match="'dense' is built on SegNet only"):
        build_model("dense", NYUV2, 0.125, backbone="resnet18_dilated")
    with pytest.raises(ConfigError, match="'wrn' is built on its own network only"):
        build_model("wrn", NYUV2, 0.125, backbone="resnet18_dilated")
    with pytest.raises(ConfigError, match="model.options.num_experts must be a positive integer"):
        build_model("mmoe", NYUV2, 0.125, num_experts=0)
    with pytest.raises(ConfigError, match="k \\(3\\) must not exceed"):
        build_model("dselect_k", NYUV2, 0.125, num_experts=2, k=3)
    with pytest.raises(ConfigError, match="model.options.alpha_s"):
        build_model("cross_stitch", NYUV2, 0.125, backbone="resnet18_dilated", alpha_s=2)
    with pytest.raises(ConfigError, match="unknown option for model.arch 'hps'"):
        build_model("hps", NYUV2, 0.125, num_experts=2)
    with pytest.raises(ConfigError, match="multiples of 8 for backbone 'resnet18_dilated'"):
        build_model("hps", NYUV2, 0.125, backbone="resnet18_dilated")(torch.randn(1, 3, 20, 32))
    mmoe = build_model("mmoe", NYUV2, 0.0625)
    with pytest.raises(ConfigError, match="decode must follow encode"):
        mmoe.decode([torch.randn(2, 4, 32, 32)] * 2)


def test_one_class_per_architecture_on_every_backbone():
    """``model_class`` is the registered class whatever the backbone: no second table, no module-name test."""
    import inspect
    import warnings

    import mtlkit.models as models
    from mtlkit.models import model_class
    from mtlkit.models.backbones import BACKBONES
    from mtlkit.models.cross_stitch import CrossStitch
    from mtlkit.models.hps import HPS
    from mtlkit.models.mtan import MTAN
    from mtlkit.models.over_backbone import BackboneModel
    from mtlkit.models.single import SingleTask
    from mtlkit.registry import ARCHITECTURES

    for arch, cls in ARCHITECTURES.items():
        assert model_class(arch) is cls
        for backbone in BACKBONES.names():
            if issubclass(cls, BackboneModel) or backbone == cls.own_backbone:
                assert model_class(arch, backbone) is cls, (arch, backbone)
            else:
                with pytest.raises(ConfigError, match="is built on"):
                    model_class(arch, backbone)
    # one registered name per class, and no module of the package keeps a name -> class table or a __module__ test
    classes = [cls for _, cls in ARCHITECTURES.items()]
    assert len(set(classes)) == len(classes)
    source = inspect.getsource(models)
    assert "__module__" not in source and "OVER_BACKBONE: dict" not in source
    for name, backbone in (("resnet18_dilated", "resnet18_dilated"), ("segnet", "segnet"), (None, None)):
        assert type(build_model("mtan", NYUV2, 0.125, backbone=backbone)) is MTAN, name
        assert type(build_model("cross_stitch", NYUV2, 0.125, backbone=backbone)) is CrossStitch
        assert type(build_model("single", NYUV2, 0.125, backbone=backbone)) is SingleTask
    # the 0.2 names still import, with a DeprecationWarning
    from mtlkit.models import hps, resnet_mtan, stitch

    with pytest.warns(DeprecationWarning):
        assert resnet_mtan.MTANOverBackbone is MTAN and resnet_mtan.ResNetMTAN is MTAN
    with pytest.warns(DeprecationWarning):
        assert stitch.StagedCrossStitch is CrossStitch
    with pytest.warns(DeprecationWarning):
        assert hps.SingleOverBackbone is SingleTask
    with pytest.warns(DeprecationWarning):
        assert models.OVER_BACKBONE == {"single": SingleTask, "mtan": MTAN, "cross_stitch": CrossStitch}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert type(build_model("hps", NYUV2, 0.0625)) is HPS


def test_paper_layout_on_segnet():
    """On ``segnet`` the three architectures keep the MTAN paper's parameter names (the checksums pin the rest)."""
    keys = {a: list(build_model(a, NYUV2, 0.0625).state_dict()) for a in ("single", "mtan", "cross_stitch")}
    assert keys["single"][0].startswith("nets.segmentation.trunk.") and any(
        k.startswith("nets.depth.heads.depth.") for k in keys["single"]
    )
    assert {k.split(".")[0] for k in keys["mtan"]} == {"trunk", "enc_f", "dec_f", "enc_att", "dec_att", "heads"}
    assert [k for k in keys["cross_stitch"] if k.startswith("stitches.")] == [
        f"stitches.{p}.alpha" for p in ("enc0", "enc1", "enc2", "enc3", "enc4", "dec4", "dec3", "dec2", "dec1")
    ]
    resnet = build_model("cross_stitch", NYUV2, 0.125, backbone="resnet18_dilated")
    assert [k for k in resnet.state_dict() if k.startswith("stitches.")] == [f"stitches.{i}.alpha" for i in range(4)]
    assert list(resnet.stitch_alphas()) == [f"stage{i}" for i in range(4)]


def test_hps_on_segnet_is_the_paper_split():
    from mtlkit.models.hps import HPS

    # hps on SegNet is the paper's standard split (SegNet class): same function for the same weights
    from mtlkit.models.segnet import SegNet

    torch.manual_seed(0)
    split = SegNet(NYUV2, 0.0625)
    hps = build_model("hps", NYUV2, 0.0625)
    assert type(hps) is HPS
    hps.load_state_dict({k.replace("trunk.", "backbone.trunk.", 1): v for k, v in split.state_dict().items()})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = split(x), hps(x)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


# ---- parameter counts by hand ---------------------------------------------------------------------


def conv(i: int, o: int, k: int = 1, bias: bool = False, bn: bool = True) -> int:
    return i * o * k * k + (o if bias else 0) + (2 * o if bn else 0)


def deeplab_by_hand(cin: int, out: int, c: int = 256) -> int:
    aspp = conv(cin, c) + 3 * conv(cin, c, 3) + conv(cin, c) + conv(5 * c, c)
    return aspp + conv(c, c, 3) + conv(c, out, 1, bias=True, bn=False)


def bottleneck_by_hand(cin: int, planes: int, project: bool) -> int:
    n = conv(cin, planes) + conv(planes, planes, 3) + conv(planes, 4 * planes)
    return n + (conv(cin, 4 * planes) if project else 0)


def test_resnet50_counts_by_hand():
    backbone = sum(p.numel() for p in build_backbone("resnet50_dilated", 0.0625).parameters())
    with torch.device("meta"):
        r50 = sum(p.numel() for p in build_backbone("resnet50_dilated").parameters())
    assert r50 == 23_508_032
    heads = sum(deeplab_by_hand(2048, t.channels) for t in NYUV2)
    assert count_model_parameters("hps", NYUV2, backbone="resnet50_dilated") == r50 + heads
    assert count_model_parameters("single", NYUV2, backbone="resnet50_dilated") == 3 * r50 + heads
    c = (256, 512, 1024, 2048)
    gates = sum(conv(c[j] if j == 0 else 2 * c[j], c[j] // 4) + conv(c[j] // 4, c[j]) for j in range(4))
    f = sum(bottleneck_by_hand(c[j], c[j + 1] // 4, True) for j in range(3))
    assert count_model_parameters("mtan", NYUV2, backbone="resnet50_dilated") == r50 + heads + 3 * gates + f
    # width 1/16: stem 4 channels, planes 4-8-16-32, ASPP 16 channels
    small_heads = sum(deeplab_by_hand(128, t.channels, 16) for t in NYUV2)
    grid_gate = 3 * 16 * 2 + 2  # image pooled to 4x4, two experts
    assert count_model_parameters("mmoe", NYUV2, 0.0625, backbone="resnet50_dilated") == (
        2 * backbone + 3 * grid_gate + small_heads
    )
    assert count_model_parameters("cross_stitch", NYUV2, 0.0625, backbone="resnet50_dilated") == (
        3 * backbone + 4 * 9 + small_heads
    )
    assert count_model_parameters("ltb", NYUV2, 0.0625, backbone="resnet50_dilated") == (
        3 * backbone + 3 * 9 + small_heads
    )
    gate = 3 * 16 * 2 + 2  # one task expert + one shared
    assert count_model_parameters("cgc", NYUV2, 0.0625, backbone="resnet50_dilated") == (
        4 * backbone + 3 * gate + small_heads
    )
    level_in = (3, 16, 32, 64)
    task_gates = sum(level_in[i] * 16 * 2 + 2 for i in range(4))
    shared_gates = sum(level_in[i] * 16 * 4 + 4 for i in range(3))
    assert count_model_parameters("ple", NYUV2, 0.0625, backbone="resnet50_dilated") == (
        4 * backbone + 3 * task_gates + shared_gates + small_heads
    )
    # DSelect-k, 4 experts, k = 2: z (k * 2 bits) and w (k) per task
    dsk = (48 + 1) * (2 * 2) + (48 + 1) * 2
    assert count_model_parameters("dselect_k", NYUV2, 0.0625, backbone="resnet50_dilated") == (
        4 * backbone + 3 * dsk + small_heads
    )


def test_libmtl_settings_in_shipped_configs():
    from pathlib import Path

    from mtlkit.config import load_config
    from mtlkit.sweep import load_sweep

    root = Path(__file__).resolve().parents[2] / "configs"
    for name, size in (("nyuv2_resnet50", (288, 384)), ("cityscapes_resnet50", (128, 256))):
        cfg = load_config(root / f"{name}.yaml")
        assert (cfg.model.backbone, cfg.model.pretrained) == ("resnet50_dilated", "imagenet")
        assert (cfg.dataset.height, cfg.dataset.width) == size
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", 1e-4, 1e-5)
        assert (cfg.optim.step_size, cfg.optim.gamma, cfg.train.batch_size, cfg.train.epochs) == (100, 0.5, 8, 200)
        assert cfg.train.amp == "off"
    runs = load_sweep(root / "sweeps" / "nyuv2_resnet50.yaml").runs()
    assert len(runs) == 8 * 6 + 1
    cpu = load_sweep(root / "sweeps" / "scenes_resnet18_cpu.yaml").runs()
    assert len(cpu) == len(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_weighting_in_both_modes(arch):
    """One trainer step with a gradient method: parameter mode always, representation mode where the
    architecture has a shared representation, a one-line ConfigError where it has none (and in both
    modes where it has no shared parameters at all: there is nothing to balance)."""
    from mtlkit.registry import WEIGHTINGS
    from mtlkit.train.step import StepRunner

    torch.manual_seed(0)
    model, h, w = small("resnet18_dilated", arch)
    batch = batch_for(NYUV2, h, w)
    names = [t.name for t in NYUV2]
    for mode in ("parameters", "representation"):
        weighting = WEIGHTINGS.get("mgda")(names)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        if not list(model.shared_parameters()):
            refused = "balances gradients of shared parameters|has no shared representation"
            with pytest.raises(ConfigError, match=refused):
                StepRunner(model, weighting, NYUV2, opt, mode)
            continue
        if mode == "representation" and not model.supports_representation:
            with pytest.raises(ConfigError, match="has no shared representation; use weighting.mode=parameters"):
                StepRunner(model, weighting, NYUV2, opt, mode)
            continue
        before = [p.detach().clone() for p in model.parameters()]
        losses = StepRunner(model, weighting, NYUV2, opt, mode)(batch)
        assert losses.shape == (3,) and torch.isfinite(losses).all()
        moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
        assert sum(moved) > 0.9 * len(moved)
        assert weighting.last_weights.shape == (3,) and (weighting.last_weights >= 0).all()


def test_trainer_runs_ltb_on_a_resnet_with_its_schedule(tiny_cfg, monkeypatch):
    """The trainer builds model.backbone, tells LTB each epoch and reports #P against a single-task ResNet."""
    import json

    from mtlkit.models.ltb import LTB
    from mtlkit.train.trainer import train

    seen = []
    original = LTB.set_epoch
    monkeypatch.setattr(LTB, "set_epoch", lambda self, e, n: (seen.append((e, n)), original(self, e, n)))
    run = train(
        tiny_cfg(
            model={"arch": "ltb", "backbone": "resnet18_dilated", "width": 0.125},
            train={"epochs": 2, "max_steps_per_epoch": 2},
        )
    )
    assert seen == [(0, 2), (1, 2)]
    results = json.loads((run / "results.json").read_text())
    # three ResNet columns and heads (the scenes' three tasks) + 27 branch logits
    assert results["status"] == "finished" and results["params_ratio"] == pytest.approx(3.0, abs=1e-3)
