"""#P: parameter counts of the seven architectures against the MTAN paper's table and by hand."""

from __future__ import annotations

import pytest

from mtlkit.errors import ConfigError
from mtlkit.models.params import (
    PAPER_ARCHS,
    count_model_parameters,
    paper_ratio,
    parameter_report,
    parameter_table,
    single_task_parameters,
)
from mtlkit.tasks import depth_task, normal_task, segmentation_task

NYUV2 = [segmentation_task(13), depth_task(), normal_task()]
CITYSCAPES = [segmentation_task(7), depth_task()]


def conv(i: int, o: int, k: int = 3, bias: bool = False, bn: bool = True) -> int:
    """Parameters of one conv (+ BN scale and shift)."""
    return i * o * k * k + (o if bias else 0) + (2 * o if bn else 0)


def segnet_by_hand(c=(64, 128, 256, 512, 512), depths=(2, 2, 3, 3, 3), head_out=13) -> int:
    """A single-task SegNet counted layer by layer from its definition."""
    n = 0
    for j in range(5):
        cin = 3 if j == 0 else c[j - 1]
        n += conv(cin, c[j]) + (depths[j] - 1) * conv(c[j], c[j])  # encoder stage j
        cout = c[max(j - 1, 0)]
        n += conv(c[j], cout) + (depths[j] - 1) * conv(cout, cout)  # decoder stage j
    head = conv(c[0], c[0], 3, bias=True, bn=False) + conv(c[0], head_out, 1, bias=True, bn=False)
    return n + head


def test_single_task_segnet_matches_hand_count_and_official_figure():
    assert count_model_parameters("single", [segmentation_task(13)]) == segnet_by_hand()
    # the official MTAN code's SegNet has 24,981,069 parameters; its 7,168 conv biases before a BN
    # (redundant, with zero gradient in training) are left out here
    assert segnet_by_hand() == 24_981_069 - 7_168
    assert count_model_parameters("single", [depth_task()], 0.125) == segnet_by_hand((8, 16, 32, 64, 64), head_out=1)
    assert count_model_parameters("split_deep", [depth_task()]) == segnet_by_hand(depths=(4, 4, 6, 6, 6), head_out=1)
    assert count_model_parameters("split_wide", [depth_task()]) == segnet_by_hand((64, 128, 256, 512, 1024), head_out=1)


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_ratios_reproduce_the_mtan_table_within_3_percent(arch):
    report = parameter_report(NYUV2, arch, 1.0)
    assert report["paper_ratio"] == paper_ratio(arch)
    assert report["ratio"] == pytest.approx(paper_ratio(arch), rel=0.03)


def test_reference_is_the_mean_single_task_network():
    ref = single_task_parameters("mtan", NYUV2, 1.0)
    heads = [conv(64, 64, 3, True, False) + conv(64, k, 1, True, False) for k in (13, 1, 3)]
    body = segnet_by_hand() - heads[0]
    assert ref == pytest.approx(body + sum(heads) / 3)
    assert parameter_report(NYUV2, "single")["ratio"] == pytest.approx(3.0, abs=1e-12)
    assert parameter_report(CITYSCAPES, "cross_stitch")["ratio"] == pytest.approx(2.0, rel=1e-5)
    assert single_task_parameters("some_other_backbone", NYUV2) is None


def test_mtan_attention_overhead_by_hand():
    """MTAN = SegNet trunk + shared f blocks + per-task gates + heads, each counted by hand."""
    c = (64, 128, 256, 512, 512)
    dec_out = (64, 64, 128, 256, 512)
    enc_f = sum(conv(c[j], c[min(j + 1, 4)]) for j in range(5))
    dec_prev = (64, 128, 256, 512, 512)  # attended channels entering decoder level j
    dec_f = sum(conv(dec_prev[j], dec_out[j]) for j in range(5))

    def gate(i, o):
        return conv(i, o, 1) + conv(o, o, 1)

    per_task = sum(gate(c[j] * (1 if j == 0 else 2), c[j]) for j in range(5))
    per_task += sum(gate(c[j] + dec_out[j], dec_out[j]) for j in range(5))
    heads = sum(conv(64, 64, 3, True, False) + conv(64, t.channels, 1, True, False) for t in NYUV2)
    trunk = segnet_by_hand() - (conv(64, 64, 3, True, False) + conv(64, 13, 1, True, False))
    assert count_model_parameters("mtan", NYUV2) == trunk + enc_f + dec_f + 3 * per_task + heads
    assert count_model_parameters("stan", NYUV2) == sum(count_model_parameters("mtan", [t]) for t in NYUV2)


def test_cityscapes_counts_and_report_by_dataset_name():
    table = {r["arch"]: r for r in parameter_table("cityscapes")}
    assert list(table) == list(PAPER_ARCHS)
    r = table["mtan"]
    assert r["dataset"] == "cityscapes" and r["tasks"] == ["segmentation", "depth"]
    assert r["paper_ratio"] is None and r["width"] == 1.0
    assert r["params"] == count_model_parameters("mtan", CITYSCAPES)
    assert r["shared_params"] == segnet_by_hand() - conv(64, 64, 3, True, False) - conv(64, 13, 1, True, False)
    assert r["ratio"] == pytest.approx(1.65, abs=0.01)
    assert table["stan"]["ratio"] == pytest.approx(3.06, abs=0.01)
    normal_head = conv(64, 64, 3, True, False) + conv(64, 3, 1, True, False)
    seg_13_to_7 = 64 * 6 + 6
    for arch in ("split_wide", "split_deep"):  # one shared trunk: only the heads differ from NYUv2
        assert table[arch]["params"] == count_model_parameters(arch, NYUV2) - normal_head - seg_13_to_7
    assert table["single"]["ratio"] == pytest.approx(2.0, abs=1e-12)
    nyu = parameter_report("nyuv2", "dense", 0.125)
    assert nyu["tasks"] == ["segmentation", "depth", "normal"] and nyu["paper_ratio"] is None
    assert nyu["ratio"] == pytest.approx(4.95, rel=0.05)
    assert parameter_report("cityscapes", "mtan", num_classes=19)["params"] > r["params"]
    with pytest.raises(ConfigError, match="num_classes"):
        parameter_report(NYUV2, "mtan", num_classes=13)


def test_resnet_reports_are_relative_to_one_resnet50_deeplabv3(capsys):
    import json

    from mtlkit.cli.main import main

    one_net = (
        23_508_032
        + sum(  # ResNet-50 without classifier + one DeepLabV3 head per task, averaged
            count_model_parameters("hps", [t], backbone="resnet50_dilated") - 23_508_032 for t in NYUV2
        )
        / 3
    )
    report = parameter_report(NYUV2, "hps", backbone="resnet50_dilated")
    assert report["single_task_params"] == round(one_net) and report["backbone"] == "resnet50_dilated"
    assert report["ratio"] == pytest.approx(report["params"] / one_net) and report["paper_ratio"] is None
    assert parameter_report(NYUV2, "single", backbone="resnet50_dilated")["ratio"] == pytest.approx(3.0)
    # SegNet-generic architectures are relative to one single-task SegNet
    assert parameter_report(NYUV2, "hps")["ratio"] == pytest.approx(
        count_model_parameters("hps", NYUV2) / single_task_parameters("mtan", NYUV2)
    )
    assert main(["params", "--dataset", "nyuv2", "--arch", "mtan", "--backbone", "resnet50_dilated", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 92_333_521 and out["backbone"] == "resnet50_dilated"


def test_paper_ratios_come_from_the_shipped_reference_table():
    """#P of the paper's seven, read from report/references/mtan_paper.tsv through each class's label."""
    import warnings

    from mtlkit.models import params

    want = {
        "single": 3.0,
        "stan": 4.56,
        "split_wide": 1.75,
        "split_deep": 2.0,
        "dense": 4.95,
        "cross_stitch": 3.0,
        "mtan": 1.77,
    }
    assert {a: paper_ratio(a) for a in PAPER_ARCHS} == want
    assert paper_ratio("hps") is None and paper_ratio("not_an_arch") is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert params.PAPER_RATIOS_NYUV2 == want
    assert caught and caught[0].category is DeprecationWarning
