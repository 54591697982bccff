"""Backbones: torchvision-equal ResNet layouts and counts, dilation, DeepLabV3 heads, SegNet
stages, pretrained loading (from a file the test writes; nothing is downloaded)."""

from __future__ import annotations

import sys

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.models import build_model
from mtlkit.models.backbones import BACKBONES, build_backbone
from mtlkit.models.blocks import SEGNET_CHANNELS, SEGNET_DEPTHS, SegNetTrunk, scale_channels
from mtlkit.models.heads import DeepLabHead
from mtlkit.tasks import classification_task, depth_task

#: torchvision's published parameter counts (``weights.meta["num_params"]``), classifier included
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "deeplabv3_resnet50": 42_004_074,
}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_backbone(name: str, width: float = 1.0):
    with torch.device("meta"):
        return build_backbone(name, width)


def torchvision_resnet_keys(depth: int) -> list[str]:
    """torchvision's ResNet state-dict keys without ``fc``, written from its layer naming."""
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}[depth]
    convs = 3 if depth == 50 else 2
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in bn]
    for layer, n in enumerate(blocks, start=1):
        for b in range(n):
            p = f"layer{layer}.{b}"
            for c in range(1, convs + 1):
                keys += [f"{p}.conv{c}.weight"] + [f"{p}.bn{c}.{s}" for s in bn]
            if b == 0 and (layer > 1 or depth == 50):
                keys += [f"{p}.downsample.0.weight"] + [f"{p}.downsample.1.{s}" for s in bn]
    return keys


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_resnet_layout_and_count_equal_torchvision(depth):
    b = meta_backbone(f"resnet{depth}_dilated")
    assert list(b.state_dict()) == torchvision_resnet_keys(depth)
    expansion = 4 if depth == 50 else 1
    fc = 512 * expansion * 1000 + 1000
    assert n_params(b) + fc == TORCHVISION_PARAMS[f"resnet{depth}"]
    assert b.channels == tuple(c * expansion for c in (64, 128, 256, 512))
    assert b.strides == (4, 8, 8, 8) and b.output_stride == 8


def test_deeplab_head_equals_torchvision():
    head = DeepLabHead(2048, 21)
    # torchvision's deeplabv3_resnet50 = ResNet-50 (no fc) + DeepLabHead(2048, 21) + FCNHead(1024, 21)
    fcn_aux = 1024 * 256 * 9 + 2 * 256 + 256 * 21 + 21
    resnet50_no_fc = TORCHVISION_PARAMS["resnet50"] - (2048 * 1000 + 1000)
    assert n_params(head) == TORCHVISION_PARAMS["deeplabv3_resnet50"] - resnet50_no_fc - fcn_aux
    keys = [k for k in head.state_dict() if k.endswith("weight") and "bn" not in k]
    assert keys[:3] == ["0.convs.0.0.weight", "0.convs.0.1.weight", "0.convs.1.0.weight"]
    assert "0.convs.4.1.weight" in keys and "0.project.0.weight" in keys and keys[-1] == "4.weight"
    assert [head[0].convs[i][0].dilation for i in (1, 2, 3)] == [(12, 12), (24, 24), (36, 36)]


def test_dilation_replaces_strides_in_layer3_and_layer4():
    b = build_backbone("resnet50_dilated", 0.0625)
    # torchvision replace_stride_with_dilation=[False, True, True]: the first block keeps the
    # previous dilation, the others use the layer's
    assert b.layer2[0].conv2.stride == (2, 2) and b.layer2[0].downsample[0].stride == (2, 2)
    assert [blk.conv2.dilation for blk in b.layer3] == [(1, 1)] + [(2, 2)] * 5
    assert [blk.conv2.dilation for blk in b.layer4] == [(2, 2), (4, 4), (4, 4)]
    assert all(
        m.stride == (1, 1) for layer in (b.layer3, b.layer4) for m in layer.modules() if isinstance(m, torch.nn.Conv2d)
    )
    r18 = build_backbone("resnet18_dilated", 0.125)
    assert [(blk.conv1.dilation, blk.conv2.dilation) for blk in r18.layer4] == [((2, 2), (4, 4)), ((4, 4), (4, 4))]
    x = torch.randn(2, 3, 40, 56)
    h, ctx = r18.begin(x)
    assert h.shape[-2:] == (10, 14)
    for i, (c, s) in enumerate(zip(r18.channels, r18.strides)):
        h = r18.stage(i, h, ctx)
        assert h.shape == (2, c, 40 // s, 56 // s)
    torch.testing.assert_close(r18(x), h)


def test_deeplab_head_upsamples_to_the_input():
    b = build_backbone("resnet18_dilated", 0.125)
    head = b.make_head(5)
    assert head(b(torch.randn(2, 3, 32, 48))).shape == (2, 5, 32, 48)


def test_segnet_backbone_is_the_segnet_trunk():
    torch.manual_seed(0)
    b = build_backbone("segnet", 0.125)
    c = scale_channels(SEGNET_CHANNELS, 0.125)
    trunk = SegNetTrunk(3, c, SEGNET_DEPTHS)
    trunk.load_state_dict({k.removeprefix("trunk."): v for k, v in b.state_dict().items()})
    x = torch.randn(2, 3, 32, 64)
    torch.testing.assert_close(b(x), trunk(x), rtol=0, atol=0)
    assert b.channels == (8, 16, 32, 64, 64, 64, 32, 16, 8, 8)
    assert b.strides == (2, 4, 8, 16, 32, 16, 8, 4, 2, 1)
    assert b.make_head(3)(b(x)).shape == (2, 3, 32, 64)
    with pytest.raises(ConfigError, match="multiples of 32"):
        b.check_input(torch.randn(1, 3, 40, 64))


def test_registry():
    assert set(BACKBONES.names()) == {
        "segnet",
        "resnet18_dilated",
        "resnet34_dilated",
        "resnet50_dilated",
        "wrn28",
        "alexnet",
    }
    with pytest.raises(ConfigError, match="unknown backbone 'vgg'"):
        build_model("hps", [depth_task()], 0.125, backbone="vgg")


def test_pretrained_from_a_file(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("resnet18_dilated")
    state = {**source.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "r18.pt"
    torch.save(state, path)
    torch.manual_seed(1)
    model = build_model("hps", [depth_task()], backbone="resnet18_dilated", pretrained=str(path))
    for k, v in source.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[k], v, rtol=0, atol=0)
    target = model.backbone
    broken = dict(state)
    broken.pop("layer3.1.bn2.weight")
    torch.save(broken, path)
    with pytest.raises(ConfigError, match=r"keys do not match.*1 missing.*layer3\.1\.bn2\.weight"):
        target.load_pretrained(str(path))
    torch.save({**state, "conv1.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(ConfigError, match=r"conv1.weight has shape \(64, 3, 3, 3\)"):
        target.load_pretrained(str(path))
    with pytest.raises(ConfigError, match="neither 'none', 'imagenet' nor an existing file"):
        target.load_pretrained(str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="not a loadable state dict"):
        target.load_pretrained(str(tmp_path / "junk.pt"))
    with pytest.raises(ConfigError, match="need model.width 1"):
        build_backbone("resnet18_dilated", 0.125).load_pretrained(str(path))
    with pytest.raises(ConfigError, match="segnet backbone has no pretrained"):
        build_model("hps", [depth_task()], 0.125, backbone="segnet", pretrained="imagenet")
    with pytest.raises(ConfigError, match="segnet backbone has no pretrained"):  # mtan's own backbone is segnet
        build_model("mtan", [depth_task()], 0.125, pretrained="imagenet")
    with pytest.raises(ConfigError, match="'stan' on its own backbone has no pretrained"):
        build_model("stan", [depth_task()], 0.125, pretrained="imagenet")


def test_imagenet_without_torchvision_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ConfigError, match=r"needs torchvision.*resnet50-0676ba61\.pth.*model\.pretrained"):
        with torch.device("meta"):
            build_model("hps", [depth_task()], backbone="resnet50_dilated", pretrained="imagenet")


def test_wrn28_stages_heads_and_counts():
    """WRN-28-4 at width 1/8 (channels 2, 8, 16, 32): four stages at strides 1, 2, 4, 8, classifier heads."""
    torch.manual_seed(0)
    b = build_backbone("wrn28", 0.125)
    assert (b.channels, b.strides, b.out_channels, b.variant) == ((2, 8, 16, 32), (1, 2, 4, 8), 32, "official")
    x = torch.randn(2, 3, 72, 72)
    levels = b.levels(x)
    assert [tuple(h.shape) for h in levels] == [(2, 2, 72, 72), (2, 8, 36, 36), (2, 16, 18, 18), (2, 32, 9, 9)]
    torch.testing.assert_close(b(x), levels[-1], rtol=0, atol=0)
    assert float(levels[-1].detach().min()) >= 0  # the last stage ends with the final BN-ReLU
    stage_params = [id(p) for i in range(4) for p in b.stage_module(i).parameters()]
    assert sorted(stage_params) == sorted(id(p) for p in b.parameters())  # the stages partition the backbone
    assert b.make_head(7)(b(x)).shape == (2, 7)
    # clean: any input size (global average pooling); #P by hand at width 1 in tests/decathlon/test_decathlon.py
    clean = type(b)(0.125, variant="clean")
    assert clean.make_head(3)(clean(torch.randn(1, 3, 20, 28))).shape == (1, 3)
    # 28 = 6n + 4: n = 4 blocks per residual stage; 3x3 conv weights of the stem + 2 per block + shortcuts
    convs = [m for m in b.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 3 * 4 * 2 + 3


def test_architectures_on_wrn28_classify_and_refuse_dense_tasks():
    tasks = [classification_task("a", 5), classification_task("b", 3)]
    torch.manual_seed(0)
    model = build_model("hps", tasks, 0.125, backbone="wrn28")
    out = model(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"a": (2, 5), "b": (2, 3)}
    (out["a"].sum() + out["b"].sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ConfigError, match="model.backbone 'wrn28' classifies images; task 'depth'"):
        build_model("hps", [depth_task()], 0.125, backbone="wrn28")
    with pytest.raises(ConfigError, match="predicts dense maps; task 'a'"):
        build_model("hps", tasks, 0.125, backbone="resnet18_dilated")
    with pytest.raises(ConfigError, match="segnet backbone has no pretrained weights"):
        build_model("hps", [depth_task()], 0.125, backbone="segnet", pretrained="imagenet")


def test_a_new_backbone_declares_its_capabilities_on_its_class(monkeypatch):
    """A backbone registered outside mtlkit needs no list edited: heads, pretrained weights and the
    paper layout are read from its class."""
    from mtlkit.models.backbones import BACKBONES, SegNetBackbone, check_pretrained, head_kind

    class PlainSegNet(SegNetBackbone):
        name = "plain_segnet"
        paper_segnet = False

    monkeypatch.setitem(BACKBONES._items, "plain_segnet", PlainSegNet)
    assert head_kind("plain_segnet") == "dense" and head_kind("wrn28") == "image"
    with pytest.raises(ConfigError, match="plain_segnet backbone has no pretrained weights"):
        check_pretrained("plain_segnet", "imagenet")
    tasks = [depth_task()]
    generic = build_model("single", tasks, 0.0625, backbone="plain_segnet")
    paper = build_model("single", tasks, 0.0625, backbone="segnet")
    assert type(generic) is type(paper)
    assert any(k.startswith("heads.depth.") for k in generic.state_dict())  # the generic layout
    assert any(k.startswith("nets.depth.heads.depth.") for k in paper.state_dict())  # the paper's
    assert build_model("hps", tasks, 0.0625, backbone="plain_segnet")(torch.randn(1, 3, 32, 32))["depth"].shape == (
        1,
        1,
        32,
        32,
    )
