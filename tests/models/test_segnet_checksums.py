"""The SegNet architectures' outputs for given weights, pinned before the backbone refactor.

Weights come from a generator seeded by each state-dict key's name (not by creation order), so
the test pins the function each architecture computes and its state-dict layout (checkpoints of
earlier versions keep loading). Values were computed with the code as it stood before
``models/backbones/`` existed; a change here means the SegNet models changed.
"""

from __future__ import annotations

import hashlib
import zlib

import pytest
import torch

from mtlkit.models import build_model
from mtlkit.models.params import PAPER_ARCHS
from mtlkit.tasks import depth_task, normal_task, segmentation_task

NYUV2 = [segmentation_task(13), depth_task(), normal_task()]
WIDTH = 0.0625
#: probed output positions (batch, channel, row, col); channel wraps to the task's channel count
PROBES = ((0, 0, 0, 0), (1, 2, 7, 11), (0, 5, 31, 31), (1, 12, 16, 3))

# arch -> (sha256[:16] of "key:shape" lines, {task: (sum, abs-sum, probe values)}) in float64, eval mode
EXPECTED: dict[str, tuple[str, dict[str, tuple[float, float, tuple[float, ...]]]]] = {
    "single": (
        "5ea59c3c077baefb",
        {
            "segmentation": (
                -356.95940910296315,
                1450.6245680024879,
                (-0.2014503569320181, -0.05039883897706849, -0.012796611485293761, -0.01939088849341132),
            ),
            "depth": (
                428.76098912726735,
                428.76098912726735,
                (0.2163523270473011, 0.20648296335832314, 0.20647838093376603, 0.21705199427442057),
            ),
            "normal": (
                72.52272202301276,
                563.0547755916746,
                (0.12800497340852982, 0.030973573866499765, -0.006608165475151136, 0.12520039896373553),
            ),
        },
    ),
    "stan": (
        "05761352375d5e53",
        {
            "segmentation": (
                -449.87699651762,
                1580.378874198418,
                (-0.2055794017884976, 0.0734368380165351, 0.017130228821755234, -0.004563330619070327),
            ),
            "depth": (
                434.8351358035783,
                434.8351358035783,
                (0.2163523270473011, 0.2105796851350237, 0.21057067505427887, 0.21670791400830242),
            ),
            "normal": (
                -85.59119864036505,
                574.2154561201957,
                (0.12419287837984824, -0.014326915481008583, -0.029460051246814667, 0.11847763597844395),
            ),
        },
    ),
    "split_wide": (
        "305e512ebab76438",
        {
            "segmentation": (
                422.2097579223591,
                2982.281402087399,
                (0.10867824407168844, 0.14782963103777427, 0.10652559204781697, 0.04878039584575883),
            ),
            "depth": (
                -1502.3416712226576,
                1502.3416712226576,
                (-0.28397790731478156, -0.7837329782412764, -0.19592745849241588, -0.7939431785455933),
            ),
            "normal": (
                -1750.0366608997697,
                1779.27589143466,
                (-0.33469056946889114, -0.1318712930604419, 0.15226184065846232, -0.49679743741919064),
            ),
        },
    ),
    "split_deep": (
        "677053f22a62635d",
        {
            "segmentation": (
                1188.6979149570316,
                4144.851362815207,
                (0.19096096986380764, 0.19393260123053732, 0.02663955146778913, 0.12880843290457183),
            ),
            "depth": (
                121.39418912600213,
                124.87636221621065,
                (-0.028473336158156476, 0.05405213862213613, 0.11360662603839808, 0.06710476365694876),
            ),
            "normal": (
                27.802800614545763,
                315.9951567854901,
                (-0.061818342147910876, 0.07387399790573793, 0.10938463104549911, -0.022630943989061052),
            ),
        },
    ),
    "dense": (
        "ece30ac1b9b09262",
        {
            "segmentation": (
                962.351108831251,
                4257.844370787446,
                (0.21388091089616493, 0.26723547686824584, -0.04002382892956715, 0.12542283966240758),
            ),
            "depth": (
                -395.4194755120656,
                429.42253603125846,
                (-0.3446785734266187, -0.1613811297917063, 0.274021306418257, -0.23165060956432432),
            ),
            "normal": (
                -292.7358889115419,
                809.2392044641228,
                (-0.12477920284569295, 0.14276644744416095, 0.13060464745063338, -0.15861446107480295),
            ),
        },
    ),
    "cross_stitch": (
        "4d5384c007eadb86",
        {
            "segmentation": (
                912.1155214405071,
                4038.2661071492707,
                (0.19382927405320136, 0.1929341615841007, -0.04457517270108537, 0.14813051156644086),
            ),
            "depth": (
                -395.1702453045652,
                429.24108653634084,
                (-0.3384547609275542, -0.15293300019061506, 0.26796586711569936, -0.16140050448089394),
            ),
            "normal": (
                -278.84277584856653,
                810.2719184421974,
                (-0.1249127605679228, 0.12955848260165495, 0.135124916114681, -0.14814416366781807),
            ),
        },
    ),
    "mtan": (
        "758e13482933df00",
        {
            "segmentation": (
                637.1455866800211,
                3266.3787785603176,
                (0.13644857440459218, 0.15156110979276174, 0.07663048545493945, 0.07431581676947663),
            ),
            "depth": (
                -755.4450201293005,
                755.4450201293005,
                (-0.11770226690337227, -0.38830593587206585, -0.06848282301200363, -0.4019707186642461),
            ),
            "normal": (
                -973.7485188743123,
                1003.8976942414107,
                (-0.21692395055654928, -0.014877027546364129, 0.13696672926428194, -0.30440417952012716),
            ),
        },
    ),
}


def name_seeded_weights(model: torch.nn.Module) -> None:
    """Fill every state-dict entry from a generator seeded by its key, at a scale that keeps activations O(1)."""
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            if key.endswith("running_var"):
                new = torch.rand(value.shape, generator=g, dtype=torch.float64) + 0.5
            elif key.endswith("running_mean") or value.dim() == 1:
                new = 0.1 * torch.randn(value.shape, generator=g, dtype=torch.float64)
                if key.endswith(".weight"):
                    new += 1.0
            else:
                fan_in = value[0].numel()
                new = torch.randn(value.shape, generator=g, dtype=torch.float64) / fan_in**0.5
            value.copy_(new)


def layout_digest(model: torch.nn.Module) -> str:
    """A short digest of the state dict's keys and shapes, in order."""
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def checksums(arch: str) -> tuple[str, dict[str, tuple[float, float, tuple[float, ...]]]]:
    """Layout digest and per-task output checksums of ``arch`` at width 1/16 on a fixed 2x3x32x32 batch."""
    model = build_model(arch, NYUV2, WIDTH).double()
    name_seeded_weights(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
    sums = {}
    for t in NYUV2:
        y = out[t.name]
        probes = tuple(float(y[b, c % t.channels, i, j]) for b, c, i, j in PROBES)
        sums[t.name] = (float(y.sum()), float(y.abs().sum()), probes)
    return layout_digest(model), sums


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_segnet_outputs_unchanged(arch):
    digest, sums = checksums(arch)
    want_digest, want = EXPECTED[arch]
    assert digest == want_digest, "state-dict keys/shapes changed"
    for name, (s, a, probes) in want.items():
        got_s, got_a, got_probes = sums[name]
        assert got_s == pytest.approx(s, rel=1e-9, abs=1e-9)
        assert got_a == pytest.approx(a, rel=1e-9)
        assert got_probes == pytest.approx(probes, rel=1e-9, abs=1e-12)
