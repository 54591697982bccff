"""AlexNet (the cross-stitch paper's network): torchvision's keys, shapes and count; fc6/fc7 as
dense layers equal to the classifier; pretrained loading; the five stitch points; the Split baselines
(``hps`` ``branch_at``) counted by hand on two backbones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlkit.errors import ConfigError
from mtlkit.models import build_model
from mtlkit.models.backbones import build_backbone
from mtlkit.models.base import count_parameters
from mtlkit.tasks import normal_task, segmentation_task

TASKS = [segmentation_task(13), normal_task()]

#: torchvision's ``alexnet`` (torchvision/models/alexnet.py), written from its definition:
#: features = Conv(3,64,11,s4,p2) ReLU Pool Conv(64,192,5,p2) ReLU Pool Conv(192,384,3) ReLU
#: Conv(384,256,3) ReLU Conv(256,256,3) ReLU Pool; classifier = Dropout Linear(9216,4096) ReLU
#: Dropout Linear(4096,4096) ReLU Linear(4096,1000)
TORCHVISION_ALEXNET = {
    "features.0.weight": (64, 3, 11, 11),
    "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5),
    "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3),
    "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3),
    "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3),
    "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216),
    "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096),
    "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096),
    "classifier.6.bias": (1000,),
}
#: torchvision's published count (``AlexNet_Weights.IMAGENET1K_V1.meta["num_params"]``)
TORCHVISION_PARAMS = 61_100_840


def meta_alexnet(width: float = 1.0):
    with torch.device("meta"):
        return build_backbone("alexnet", width)


def test_keys_shapes_and_count_equal_torchvision_without_fc8():
    net = meta_alexnet()
    expected = {k: v for k, v in TORCHVISION_ALEXNET.items() if not k.startswith("classifier.6.")}
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected
    # by hand: conv1 64*3*121+64 = 23,296; conv2 192*64*25+192 = 307,392; conv3 384*192*9+384 = 663,936;
    # conv4 256*384*9+256 = 884,992; conv5 256*256*9+256 = 590,080; fc6 4096*9216+4096 = 37,752,832;
    # fc7 4096*4096+4096 = 16,781,312; fc8 1000*4096+1000 = 4,097,000 (dropped)
    by_hand = 23_296 + 307_392 + 663_936 + 884_992 + 590_080 + 37_752_832 + 16_781_312
    assert by_hand + 4_097_000 == TORCHVISION_PARAMS
    assert count_parameters(net) == by_hand == 57_003_840


def test_fc6_fc7_equal_the_classifier_on_a_224_image():
    """At the centre of a 224 x 224 image's 6 x 6 pool5 map, dense fc6/fc7 equal torchvision's linear layers."""
    torch.manual_seed(0)
    net = build_backbone("alexnet", 0.25).eval()
    x = torch.randn(1, 3, 224, 224)
    h, ctx = net.begin(x)
    for i in range(5):
        h = net.stage(i, h, ctx)
    assert h.shape[-2:] == (6, 6)
    fc6, fc7 = net.classifier[1], net.classifier[4]
    ref6 = F.relu(F.linear(torch.flatten(h, 1), fc6.weight, fc6.bias))  # torchvision: flatten (c, y, x)
    ref7 = F.relu(F.linear(ref6, fc7.weight, fc7.bias))
    out6 = net.stage(5, h, ctx)
    out7 = net.stage(6, out6, ctx)
    # padding (2, 3): output (2, 2) reads rows and columns 0..5, the whole map; float32 sums of 2,304 terms
    torch.testing.assert_close(out6[0, :, 2, 2], ref6[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out7[0, :, 2, 2], ref7[0], rtol=1e-4, atol=1e-5)


def test_pretrained_state_dict_loads_and_fc8_is_dropped(tmp_path):
    torch.manual_seed(0)
    state = {k: torch.randn(shape) for k, shape in TORCHVISION_ALEXNET.items()}
    path = tmp_path / "alexnet.pth"
    torch.save(state, path)
    net = build_backbone("alexnet", pretrained=str(path))
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    bad = dict(state, **{"features.0.weight": torch.zeros(96, 3, 11, 11)})
    torch.save(bad, path)
    with pytest.raises(ConfigError, match=r"features\.0\.weight has shape \(96, 3, 11, 11\)"):
        build_backbone("alexnet", pretrained=str(path))
    with pytest.raises(ConfigError, match="model.width 1"):
        build_backbone("alexnet", 0.5, pretrained=str(path))


def test_maps_and_head_resolution():
    net = build_backbone("alexnet", 0.125)
    h, ctx = net.begin(torch.randn(2, 3, 96, 128))
    sizes = []
    for i in range(net.num_stages):
        h = net.stage(i, h, ctx)
        sizes.append(tuple(h.shape[1:]))
    # 32m x 32n in: pool1 (4m-1, 4n-1), pool2 .. conv4 (2m-1, 2n-1), pool5 .. fc7 (m-1, n-1)
    assert sizes == [(8, 11, 15), (24, 5, 7), (48, 5, 7), (32, 5, 7), (32, 2, 3), (512, 2, 3), (512, 2, 3)]
    assert net.make_head(13)(h).shape == (2, 13, 96, 128)
    with pytest.raises(ConfigError, match="multiples of 32"):
        net.check_input(torch.randn(1, 3, 96, 100))


def test_cross_stitch_on_alexnet_has_the_papers_five_units():
    model = build_model("cross_stitch", TASKS, 0.125, backbone="alexnet", alpha_s=0.7, alpha_lr_mult=1000)
    assert model.point_labels == ("pool1", "pool2", "pool5", "fc6", "fc7")
    assert model.stitch_at == (0, 1, 4, 5, 6)
    expected = torch.tensor([[0.7, 0.3], [0.3, 0.7]])  # alpha_S on the diagonal, alpha_D = 1 - alpha_S off it
    for unit in model.units():
        torch.testing.assert_close(unit.alpha.detach(), expected)
    with model.recording() as rec:
        out = model(torch.randn(2, 3, 64, 96))
    assert list(rec) == [f"alpha/{p}" for p in model.point_labels]
    assert out["segmentation"].shape == (2, 13, 64, 96) and out["normal"].shape == (2, 3, 64, 96)
    sum(o.square().mean() for o in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())  # every layer and unit is reached
    # what each unit mixes: pool1, pool2, pool5, fc6, fc7 of both networks
    net = next(iter(model.nets.values()))
    h, ctx = net.begin(torch.randn(1, 3, 64, 96))
    shapes = []
    for i in range(net.num_stages):
        h = net.stage(i, h, ctx)
        if i in model.stitch_at:
            shapes.append(tuple(h.shape[1:]))
    assert shapes == [(8, 7, 11), (24, 3, 5), (32, 1, 2), (512, 1, 2), (512, 1, 2)]
    weights, alphas = model.param_groups(1e-4)
    assert alphas["name"] == "cross_stitch_alphas" and alphas["lr"] == pytest.approx(0.1) and weights["lr"] == 1e-4
    assert {id(p) for p in alphas["params"]} == {id(u.alpha) for u in model.units()}
    assert len(weights["params"]) + len(alphas["params"]) == len(list(model.parameters()))


def test_split_alexnet_counts_by_hand():
    # width 1/8: channels 8, 24, 48, 32, 32, 512, 512. Per stage: conv1 8*3*121+8 = 2,912;
    # conv2 24*8*25+24 = 4,824; conv3 48*24*9+48 = 10,416; conv4 32*48*9+32 = 13,856;
    # conv5 32*32*9+32 = 9,248; fc6 512*32*36+512 = 590,336; fc7 512*512+512 = 262,656.
    stage = [2_912, 4_824, 10_416, 13_856, 9_248, 590_336, 262_656]
    heads = (512 * 13 + 13) + (512 * 3 + 3)  # FCN-32s scores: 6,669 + 1,539
    for name, shared in [("conv1", 1), ("conv5", 5), ("fc6", 6), ("fc7", 7), (None, 7)]:
        model = build_model("hps", TASKS, 0.125, backbone="alexnet", branch_at=name)
        by_hand = sum(stage[:shared]) + 2 * sum(stage[shared:]) + heads
        assert count_parameters(model) == by_hand, name
        assert sum(p.numel() for p in model.shared_parameters()) == sum(stage[:shared])
    assert count_parameters(build_model("hps", TASKS, 0.125, backbone="alexnet", branch_at="fc6")) == 1_165_112


def test_split_resnet18_counts_by_hand():
    base = build_model("hps", TASKS, 0.25, backbone="resnet18_dilated")
    split = build_model("hps", TASKS, 0.25, backbone="resnet18_dilated", branch_at="layer3")
    # layer4 at width 1/4 (planes 128, from 64): block 1 conv 128*64*9 = 73,728, conv 128*128*9 = 147,456,
    # downsample 128*64 = 8,192, three BNs 3*256; block 2 two convs 2*147,456, two BNs 2*256: 525,568
    layer4 = 73_728 + 147_456 + 8_192 + 3 * 256 + 2 * 147_456 + 2 * 256
    assert layer4 == 525_568
    assert count_parameters(split) == count_parameters(base) + layer4  # one more copy of layer4
    assert sum(p.numel() for p in split.shared_parameters()) == count_parameters(base.backbone) - layer4


def test_branch_at_default_is_todays_hps_and_the_last_stage_builds_the_same():
    torch.manual_seed(0)
    today = build_model("hps", TASKS, 0.125, backbone="segnet")
    torch.manual_seed(0)
    last = build_model("hps", TASKS, 0.125, backbone="segnet", branch_at="dec0")
    a, b = today.state_dict(), last.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_split_segnet_trains_each_tower_with_its_own_pooling_indices():
    model = build_model("hps", TASKS, 0.125, backbone="segnet", branch_at="enc2")
    out = model(torch.randn(2, 3, 32, 32))
    sum(o.square().mean() for o in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert not any(k.startswith("towers.segmentation.trunk.enc.0") for k in model.state_dict())
    with pytest.raises(ConfigError, match=r"branch_at: 'pool5' is not a stage of the segnet backbone \(one of enc0"):
        build_model("hps", TASKS, 0.125, backbone="segnet", branch_at="pool5")
