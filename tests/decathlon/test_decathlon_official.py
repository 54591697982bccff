"""The official decathlon WRN variant (the MTAN authors' conventions) and BN-refreshed evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.config import DatasetConfig, load_config
from mtlkit.decathlon.data import DOMAIN_CLASSES, DOMAINS
from mtlkit.decathlon.evaluate import bn_buffers, evaluate_refresh_bn, refresh_bn
from mtlkit.decathlon.wrn import WRN, WRNMTAN
from mtlkit.errors import ConfigError
from mtlkit.models import build_model
from mtlkit.models.params import parameter_report
from mtlkit.registry import DATASETS
from mtlkit.tasks import classification_task
from mtlkit.train.evaluate import evaluate


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tasks() -> list:
    return [classification_task("aircraft", 5), classification_task("svhn", 3)]


def _official_model(seed: int = 0) -> WRNMTAN:
    """Width 1/8, depth 10, float64: PyTorch-default init from ``seed``, then seeded BN statistics."""
    torch.manual_seed(seed)
    model = WRNMTAN(_tasks(), width=0.125, depth=10, variant="official").double()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g, dtype=torch.float64))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g, dtype=torch.float64))
            m.weight.data.copy_(1 + 0.2 * torch.randn(c, generator=g, dtype=torch.float64))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g, dtype=torch.float64))
    return model.eval()


def _bn(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)


def _reference(model: WRNMTAN, x: Tensor, domain: str) -> Tensor:
    """The MTAN code's forward written out (eval mode): floor-mode max-pool, avg_pool2d(x, 8) as a slice."""
    bb = model.backbone
    feats = [_conv(x, bb.stem)]
    for stage in bb.stages:
        h = feats[-1]
        for blk in stage:
            out = _conv(F.relu(_bn(_conv(F.relu(_bn(h, blk.bn1)), blk.conv1), blk.bn2)), blk.conv2)
            h = out + (h if isinstance(blk.shortcut, nn.Identity) else _conv(h, blk.shortcut))
        feats.append(h)
    feats[-1] = F.relu(_bn(feats[-1], bb.bn))
    prev = None
    for j, f in enumerate(feats):
        att = model.attention[domain][j]
        inp = f if prev is None else torch.cat([f, prev], dim=1)
        mask = torch.sigmoid(_bn(_conv(F.relu(_bn(_conv(inp, att[0]), att[1])), att[3]), att[4]))
        prev = F.relu(_bn(_conv(mask * f, model.blocks[j][0]), model.blocks[j][1]))
        if j < 3:
            prev = F.max_pool2d(prev, kernel_size=2, stride=2)
    assert prev.shape[-2:] == (9, 9)
    pooled = prev[:, :, :8, :8].mean(dim=(2, 3))  # the top-left 8x8 of the 9x9 map
    return F.linear(pooled, model.heads[domain].weight, model.heads[domain].bias)


# regression lock for the seeded model at 72x72: float64 sum of all logits, and logits[0] of each domain
CHECKSUMS = {
    "aircraft": (
        0.2379261532322164,
        [-0.013276560166267541, 0.19845686331539864, 0.10311805547120165, -0.27323626269161577, 0.061607565158065564],
    ),
    "svhn": (0.1300473550021169, [-0.09844299801254242, 0.07999383445196945, 0.06249833187319261]),
}


def test_official_outputs_match_the_written_out_reference_and_checksums() -> None:
    model = _official_model()
    x = torch.randn(3, 3, 72, 72, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        for d in ("aircraft", "svhn"):
            torch.testing.assert_close(out[d], _reference(model, x, d), rtol=1e-12, atol=1e-12)
    for d, (total, first) in CHECKSUMS.items():
        assert float(out[d].sum()) == pytest.approx(total, rel=1e-10, abs=1e-12)
        torch.testing.assert_close(out[d][0], torch.tensor(first, dtype=torch.float64), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("where", "changes"), [((8, slice(None)), False), ((slice(None), 8), False), ((0, 0), True)])
def test_official_pooling_reads_the_top_left_8x8_only(where: tuple, changes: bool) -> None:
    model = _official_model()
    x = torch.randn(2, 3, 72, 72, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        before = model(x, ["svhn"])["svhn"]

        def poke(_module: nn.Module, _inp: tuple, out: Tensor) -> Tensor:
            out = out.clone()
            out[(..., *where)] += 5.0
            return out

        handle = model.blocks[3].register_forward_hook(poke)
        after = model(x, ["svhn"])["svhn"]
        handle.remove()
    assert (not torch.equal(before, after)) is changes


@torch.no_grad()
def test_official_conventions_biases_init_and_final_bn_momentum() -> None:
    torch.manual_seed(0)
    official, clean = WRNMTAN(_tasks(), 0.125, 10), WRNMTAN(_tasks(), 0.125, 10, variant="clean")
    assert official.variant == "official"  # the default
    convs = [m for m in official.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.bias is not None for m in convs)
    assert all(m.bias is None for m in clean.modules() if isinstance(m, nn.Conv2d))
    # PyTorch's default init: weights and biases uniform within 1/sqrt(fan_in) (He-normal would exceed it)
    for m in convs:
        bound = 1 / (m.weight[0].numel() ** 0.5)
        w, b = m.weight.detach(), m.bias.detach()
        assert float(w.abs().max()) <= bound and float(b.abs().max()) <= bound
        assert float(b.abs().max()) > 0
    wide = clean.backbone.stages[2][0].conv2.weight.detach()  # clean: He-normal, std sqrt(2 / fan_out)
    assert float(wide.std()) == pytest.approx((2 / (9 * wide.shape[0])) ** 0.5, rel=0.1)
    assert all(float(h.bias.abs().max()) == 0 for h in clean.heads.values())
    # the plain wrn's heads follow the variant's init too (zero biases in clean)
    clean_wrn = WRN(_tasks(), 0.125, 10, variant="clean")
    assert all(float(net.head.bias.abs().max()) == 0 for net in clean_wrn.nets.values())
    assert float(WRN(_tasks(), 0.125, 10).nets["svhn"].head.bias.abs().max()) > 0
    # momentum 0.9 on the final shared BN only: after one training batch it holds 0.9 x the batch mean
    assert official.backbone.bn.momentum == 0.9 and clean.backbone.bn.momentum == 0.1
    assert official.backbone.stages[0][0].bn1.momentum == 0.1
    seen: list[Tensor] = []
    official.backbone.bn.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach()))
    official.train()(torch.randn(4, 3, 64, 64), ["aircraft"])
    torch.testing.assert_close(official.backbone.bn.running_mean, 0.9 * seen[0].mean(dim=(0, 2, 3)))


def test_official_variant_errors() -> None:
    with pytest.raises(ConfigError, match="model.options.variant"):
        build_model("wrn_mtan", _tasks(), 0.125, depth=10, variant="paper")
    with pytest.raises(ConfigError, match="avg_pool2d.*57 to 120"):
        WRNMTAN(_tasks(), 0.125, 10)(torch.randn(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="avg_pool2d"):
        WRN(_tasks(), 0.125, 10)(torch.randn(1, 3, 128, 128))


def test_params_count_the_official_biases() -> None:
    """14,032 conv biases over the ten domains, counted by hand; #P 1.726 (the paper reports 1.74)."""
    official = parameter_report("decathlon", "wrn_mtan")
    clean = parameter_report("decathlon", "wrn_mtan", variant="clean")
    c = [16, 64, 128, 256]
    attention = c[0] + c[0] + sum(2 * ch for ch in c[1:])  # two 1x1 convs per level, per domain
    blocks = c[1] + c[2] + c[3] + c[3]
    backbone = c[0] + sum(3 * ch + 3 * 2 * ch for ch in c[1:])  # 4 blocks per stage; the first has a shortcut
    assert official["params"] - clean["params"] == 10 * attention + blocks + backbone == 14_032
    assert official["params"] == 10_237_656
    assert official["single_task_params"] - clean["single_task_params"] == backbone == 4_048
    assert official["ratio"] == pytest.approx(1.726, abs=0.001)
    assert [t for t in official["tasks"]] == list(DOMAINS) and len(DOMAIN_CLASSES) == 10


# ----------------------------------------------------------------------------- refreshed BN evaluation


def _synthetic(size: int = 64):
    cfg = load_config(
        None,
        [
            "dataset.name=decathlon_synthetic",
            f"dataset.height={size}",
            f"dataset.width={size}",
            "dataset.n_train=12",
            "dataset.n_val=6",
            "model.arch=wrn_mtan",
            "model.width=0.125",
            "model.options.depth=10",
            "train.batch_size=4",
            "train.eval_batch_size=3",
            "train.num_workers=0",
        ],
    )
    builder = DATASETS.get("decathlon_synthetic")(DatasetConfig(**cfg.dataset.model_dump()))
    torch.manual_seed(0)
    model = WRNMTAN(builder.tasks(), 0.125, 10, variant="official")
    return cfg, builder, model


def test_refresh_bn_is_the_running_average_of_the_domains_batches() -> None:
    """Final shared BN after the pass: r <- 0.1 r + 0.9 m_b over the domain's batches, weights unchanged."""
    cfg, builder, model = _synthetic()
    domain = builder.tasks()[1].name
    ds = builder.dataset("train", train=False)
    one = type(ds)([(domain, ds.parts[ds.domains.index(domain)])])
    loader = torch.utils.data.DataLoader(one, batch_size=4)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "batches" not in k}
    bn = model.backbone.bn
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    inputs: list[Tensor] = []
    bn.register_forward_pre_hook(lambda _m, inp: inputs.append(inp[0].detach()))
    assert refresh_bn(model, domain, loader, torch.device("cpu")) == 3 and len(inputs) == 3
    for x in inputs:
        n = x.numel() / x.shape[1]
        mean = 0.1 * mean + 0.9 * x.mean(dim=(0, 2, 3))
        var = 0.1 * var + 0.9 * x.var(dim=(0, 2, 3), unbiased=False) * n / (n - 1)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert not model.training
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k


def test_evaluate_refresh_bn_tests_each_domain_with_its_own_statistics() -> None:
    cfg, builder, model = _synthetic()
    device = torch.device("cpu")
    before = bn_buffers(model)
    out = evaluate_refresh_bn(model, builder.tasks(), builder, cfg, device)
    after = bn_buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the checkpoint's statistics are restored
    plain = evaluate(
        model,
        builder.tasks(),
        torch.utils.data.DataLoader(
            builder.dataset("val", train=False),
            batch_sampler=builder.batch_sampler(builder.dataset("val", train=False), 3, False, 0, 0),
        ),
        device,
    )
    assert set(out) == set(plain)
    # by hand, for the last domain: refresh on its training split from the saved statistics, then evaluate
    task = builder.tasks()[-1]
    train_ds, val_ds = builder.dataset("train", train=True), builder.dataset("val", train=False)
    pick = lambda ds: type(ds)([(task.name, ds.parts[ds.domains.index(task.name)])])  # noqa: E731
    from mtlkit.decathlon.data import domain_batches

    refresh_bn(
        model,
        task.name,
        torch.utils.data.DataLoader(pick(train_ds), batch_sampler=domain_batches(pick(train_ds), 4, True, cfg.seed, 0)),
        device,
    )
    by_hand = evaluate(model, [task], torch.utils.data.DataLoader(pick(val_ds), batch_size=3), device)
    assert out[f"loss/{task.name}"] == pytest.approx(by_hand[f"loss/{task.name}"], rel=1e-6)
    assert out[f"loss/{task.name}"] != pytest.approx(plain[f"loss/{task.name}"], rel=1e-3)


# ----------------------------------------------------------------------------- wrn_mtan = mtan on wrn28


def _seed_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g, dtype=m.running_mean.dtype))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g, dtype=m.running_var.dtype))


@torch.no_grad()
def test_wrn_mtan_is_mtan_built_on_the_wrn28_backbone() -> None:
    """``model.arch: mtan`` + ``model.backbone: wrn28`` (WRN-28-4 at width 1/8) is wrn_mtan, weight for weight."""
    from mtlkit.models.mtan import MTAN as MTANOverBackbone

    torch.manual_seed(0)
    generic = build_model("mtan", _tasks(), 0.125, backbone="wrn28").double()
    assert type(generic) is MTANOverBackbone
    _seed_bn(generic, 1)
    torch.manual_seed(5)
    own = build_model("wrn_mtan", _tasks(), 0.125).double()
    assert isinstance(own, MTANOverBackbone) and type(own).decode is MTANOverBackbone.decode
    assert own.state_dict().keys() == generic.state_dict().keys()
    assert not torch.equal(own.heads["svhn"].weight, generic.heads["svhn"].weight)
    own.load_state_dict(generic.state_dict())
    generic.eval(), own.eval()
    x = torch.randn(2, 3, 72, 72, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with generic.recording() as rec_g, own.recording() as rec_o:
        out_g, out_o = generic(x), own(x)
    for d in ("aircraft", "svhn"):
        torch.testing.assert_close(out_o[d], out_g[d], rtol=0, atol=0)
        torch.testing.assert_close(out_g[d], _reference(generic, x, d), rtol=1e-12, atol=1e-12)
    assert rec_g.keys() == rec_o.keys() and len(rec_g) == 8
    assert [id(p) for p in own.shared_parameters()] == [id(p) for p in own.backbone.parameters()] + [
        id(p) for p in own.blocks.parameters()
    ]
    assert len(generic.shared_parameters()) == len(own.shared_parameters())
    assert parameter_report(_tasks(), "mtan", 0.125, backbone="wrn28")["params"] == sum(
        p.numel() for p in generic.parameters()
    )


def test_wrn_mtan_refuses_another_backbone() -> None:
    with pytest.raises(ConfigError, match="'wrn_mtan' is built on wrn28 only"):
        build_model("wrn_mtan", _tasks(), 0.125, backbone="resnet18_dilated")
    with pytest.raises(ConfigError, match="wrn28 backbone has no pretrained weights"):
        build_model("mtan", _tasks(), 0.125, backbone="wrn28", pretrained="imagenet")
