"""The seven SegNet architectures: shapes, gradients, sharing contract, cross-stitch, STAN == MTAN,
recording, and a few training steps. Tiny widths and images keep the whole file fast."""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.models import build_model
from mtlkit.models.blocks import SEGNET_CHANNELS, scale_channels
from mtlkit.models.cross_stitch import CrossStitchUnit
from mtlkit.models.mtan import MTAN
from mtlkit.models.params import PAPER_ARCHS
from mtlkit.models.stan import STAN
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import (
    classification_task,
    depth_task,
    normal_task,
    segmentation_task,
    stack_losses,
)

NYUV2 = [segmentation_task(13), depth_task(), normal_task()]
CITYSCAPES = [segmentation_task(7), depth_task()]
TASK_SETS = {"nyuv2": NYUV2, "cityscapes": CITYSCAPES}
W = 0.125
REPRESENTATION_ARCHS = ("split_wide", "split_deep", "dense", "mtan")


def make_batch(tasks, h=32, w=64, b=2, seed=0):
    """A fixed random image batch with a valid target for every task."""
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


def test_registry_has_the_papers_seven():
    assert set(PAPER_ARCHS) <= set(ARCHITECTURES.names())


@pytest.mark.parametrize("arch", PAPER_ARCHS)
@pytest.mark.parametrize("dataset", sorted(TASK_SETS))
@pytest.mark.parametrize("width", [0.0625, W])
def test_output_shapes(arch, dataset, width):
    tasks = TASK_SETS[dataset]
    model = build_model(arch, tasks, width)
    for h, w in [(32, 64), (64, 64)]:
        with torch.no_grad():
            out = model(torch.randn(2, 3, h, w))
        assert list(out) == [t.name for t in tasks]
        for t in tasks:
            assert out[t.name].shape == (2, t.channels, h, w)
            assert torch.isfinite(out[t.name]).all()


def test_width_scales_every_channel_count():
    assert scale_channels(SEGNET_CHANNELS, 0.125) == (8, 16, 32, 64, 64)
    assert scale_channels(SEGNET_CHANNELS, 0.001) == (1, 1, 1, 1, 1)
    m = build_model("mtan", NYUV2, 0.001)
    assert m(torch.randn(1, 3, 32, 32))["segmentation"].shape == (1, 13, 32, 32)
    # the attention gates scale with the width too: the level-4 encoder gate maps 2*64 -> 64 at width 1/8
    m_w = build_model("mtan", NYUV2, W)
    assert m_w.enc_att["depth"][4].g[0].weight.shape == (64, 128, 1, 1)
    assert m_w.heads["normal"][1].weight.shape == (3, 8, 1, 1)


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_gradients_reach_every_parameter(arch):
    torch.manual_seed(0)
    model = build_model(arch, NYUV2, W)
    batch = make_batch(NYUV2)
    stack_losses(NYUV2, model(batch["image"]), batch).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_encode_reaches_exactly_the_shared_parameters(arch):
    model = build_model(arch, CITYSCAPES, W)
    reps = [r for r in model.encode(torch.randn(2, 3, 32, 32)) if r.requires_grad]
    params = list(model.parameters())
    reached = set()
    if reps:
        grads = torch.autograd.grad(sum(r.sum() for r in reps), params, allow_unused=True)
        reached = {id(p) for p, g in zip(params, grads) if g is not None}
    assert reached == {id(p) for p in model.shared_parameters()}
    own = {id(p) for p in model.task_parameters()}
    assert own.isdisjoint(reached) and len(own) + len(reached) == len(params)


@pytest.mark.parametrize("arch", REPRESENTATION_ARCHS)
def test_representation_gradient_equals_plain_backward(arch):
    """decode reads the shared parameters only through encode's tensors (what MGDA-UB relies on)."""
    torch.manual_seed(0)
    model = build_model(arch, NYUV2, W)
    assert model.supports_representation
    batch = make_batch(NYUV2)
    stack_losses(NYUV2, model(batch["image"]), batch).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    reps = model.encode(batch["image"])
    leaves = [r.detach().requires_grad_(True) for r in reps]
    loss = stack_losses(NYUV2, model.decode(leaves), batch).sum()
    loss.backward()
    torch.autograd.backward(reps, [leaf.grad for leaf in leaves])
    for p, g in zip(model.parameters(), plain):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_decode_of_encode_is_forward_and_subsets(arch):
    torch.manual_seed(0)
    model = build_model(arch, NYUV2, W).eval()
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        full = model(x)
        again = model.decode(model.encode(x))
        sub = model(x, tasks=["normal", "segmentation"])
    assert list(full) == ["segmentation", "depth", "normal"]
    for name in full:
        torch.testing.assert_close(again[name], full[name], rtol=0, atol=0)
    assert list(sub) == ["normal", "segmentation"]
    for name in sub:
        torch.testing.assert_close(sub[name], full[name], rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="no task 'edges'"):
        model(x, tasks=["edges"])


def test_shared_parameter_sets():
    for arch in ("single", "stan"):
        m = build_model(arch, NYUV2, W)
        assert m.shared_parameters() == [] and not m.supports_representation
    split = build_model("split_wide", NYUV2, W)
    assert {id(p) for p in split.shared_parameters()} == {id(p) for p in split.trunk.parameters()}
    cs = build_model("cross_stitch", NYUV2, W)
    assert not cs.supports_representation
    heads = {id(p) for p in cs.heads.parameters()}
    assert {id(p) for p in cs.task_parameters()} == heads


def test_cross_stitch_initialisation_and_mixing():
    model = build_model("cross_stitch", NYUV2, W)
    alphas = model.stitch_alphas()
    assert list(alphas) == ["enc0", "enc1", "enc2", "enc3", "enc4", "dec4", "dec3", "dec2", "dec1"]
    expected = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    for a in alphas.values():
        torch.testing.assert_close(a, expected)
        torch.testing.assert_close(a.sum(dim=1), torch.ones(3))
    pc = build_model("cross_stitch", CITYSCAPES, W, per_channel=True, alpha_s=0.7)
    a = pc.stitch_alphas()["enc2"]
    assert a.shape == (2, 2, 32)
    torch.testing.assert_close(a[:, :, 5], torch.tensor([[0.7, 0.3], [0.3, 0.7]]))
    one = build_model("cross_stitch", [depth_task()], W)
    assert one.stitch_alphas()["dec1"].tolist() == [[1.0]]
    # Misra et al.'s two-task unit, by hand: x~A = aAA xA + aAB xB, x~B = aBA xA + aBB xB
    unit = CrossStitchUnit(2, 4, 0.9, per_channel=False)
    with torch.no_grad():
        unit.alpha.copy_(torch.tensor([[0.8, 0.2], [0.3, 0.7]]))
    xa, xb = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    ya, yb = unit([xa, xb])
    torch.testing.assert_close(ya, 0.8 * xa + 0.2 * xb)
    torch.testing.assert_close(yb, 0.3 * xa + 0.7 * xb)
    unit_c = CrossStitchUnit(2, 4, 0.5, per_channel=True)
    with torch.no_grad():
        unit_c.alpha[0, 1, 2] = 0.0
    ya, _ = unit_c([xa, xb])
    torch.testing.assert_close(ya[:, 2], 0.5 * xa[:, 2])
    torch.testing.assert_close(ya[:, 1], 0.5 * xa[:, 1] + 0.5 * xb[:, 1])


def test_cross_stitch_learning_rate_groups():
    model = build_model("cross_stitch", NYUV2, W)
    groups = model.param_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(0.1)]
    alpha_ids = {id(p) for p in groups[1]["params"]}
    assert alpha_ids == {id(u.alpha) for u in model.stitches.values()}
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())
    assert build_model("cross_stitch", NYUV2, W, alpha_lr_mult=1000).param_groups(1e-4)[1]["lr"] == pytest.approx(0.1)
    single_group = build_model("mtan", NYUV2, W).param_groups(1e-3)
    assert len(single_group) == 1 and single_group[0]["lr"] == 1e-3


@pytest.mark.parametrize("task", NYUV2, ids=lambda t: t.name)
def test_stan_equals_mtan_with_one_task(task):
    torch.manual_seed(1)
    mtan = MTAN([task], W)
    stan = STAN(NYUV2, W)
    n_mtan = sum(p.numel() for p in mtan.parameters())
    assert sum(p.numel() for p in stan.nets[task.name].parameters()) == n_mtan
    assert sum(p.numel() for p in stan.parameters()) == sum(
        sum(p.numel() for p in MTAN([t], W).parameters()) for t in NYUV2
    )
    stan.load_state_dict({**stan.state_dict(), **{f"nets.{task.name}.{k}": v for k, v in mtan.state_dict().items()}})
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad(), mtan.recording() as m_rec, stan.recording() as s_rec:
        a = mtan(x)[task.name]
        b = stan(x, tasks=[task.name])[task.name]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert list(m_rec) == list(s_rec)
    for k in m_rec:
        torch.testing.assert_close(m_rec[k], s_rec[k], rtol=0, atol=0)


def test_attention_masks_recorded_only_when_asked():
    model = build_model("mtan", NYUV2, W)
    x = torch.randn(2, 3, 32, 64)
    model(x)
    assert model.recorded == {}
    with model.recording() as rec:
        model(x, tasks=["depth", "normal"])
    c = scale_channels(SEGNET_CHANNELS, W)
    dec_c = [c[0], c[0], c[1], c[2], c[3]]
    assert len(rec) == 2 * 10
    for name in ("depth", "normal"):
        for j in range(5):
            enc, dec = rec[f"attention/{name}/enc{j}"], rec[f"attention/{name}/dec{j}"]
            assert enc.shape == (2, c[j], 32 >> j, 64 >> j)
            assert dec.shape == (2, dec_c[j], 32 >> j, 64 >> j)
            assert not enc.requires_grad and 0 < enc.min() and enc.max() < 1
    model(x)
    assert len(model.recorded) == 20 and "attention/segmentation/enc0" not in model.recorded
    stan = build_model("stan", CITYSCAPES, W)
    stan(x)
    assert stan.recorded == {}
    with stan.recording() as rec:
        stan(x)
    assert rec["attention/segmentation/dec0"].shape == (2, c[0], 32, 64) and len(rec) == 20
    cs = build_model("cross_stitch", CITYSCAPES, W)
    cs(x)
    assert cs.recorded == {}
    with cs.recording() as rec:
        cs(x)
    assert sorted(rec) == sorted(f"alpha/{k}" for k in cs.stitch_alphas())
    torch.testing.assert_close(rec["alpha/enc0"], cs.stitch_alphas()["enc0"])


def test_build_model_errors():
    with pytest.raises(ConfigError, match="unknown architecture 'segnet2'"):
        build_model("segnet2", NYUV2)
    with pytest.raises(ConfigError, match=r"model.options.alpha_s: unknown option for model.arch 'mtan'"):
        build_model("mtan", NYUV2, W, alpha_s=0.5)
    with pytest.raises(ConfigError, match="model.width"):
        build_model("mtan", NYUV2, 0)
    with pytest.raises(ConfigError, match="alpha_s"):
        build_model("cross_stitch", NYUV2, W, alpha_s=1.5)
    with pytest.raises(ConfigError, match="in_channels"):
        build_model("dense", NYUV2, W, in_channels=0)
    with pytest.raises(ConfigError, match="classification"):
        build_model("split_deep", [classification_task("cifar", 10)], W)
    with pytest.raises(ConfigError, match="multiples of 32"):
        build_model("single", NYUV2, W)(torch.randn(1, 3, 40, 64))
    gray = build_model("split_wide", CITYSCAPES, W, in_channels=1)
    assert gray(torch.randn(1, 1, 32, 32))["depth"].shape == (1, 1, 32, 32)


@pytest.mark.slow
@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_few_adam_steps_decrease_the_loss(arch):
    torch.manual_seed(0)
    model = build_model(arch, NYUV2, W)
    batch = make_batch(NYUV2, seed=3)
    opt = torch.optim.Adam(model.param_groups(1e-3))
    first = None
    for _ in range(5):
        loss = stack_losses(NYUV2, model(batch["image"]), batch).sum()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = stack_losses(NYUV2, model(batch["image"]), batch).sum().item()
    assert last < first
