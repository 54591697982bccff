"""Visual Decathlon family: score, organiser-layout loader, one-domain batches, WRN models, training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtlkit.catalog import PRESET_DIR
from mtlkit.cli.main import main
from mtlkit.config import DatasetConfig
from mtlkit.decathlon import (
    DOMAINS,
    MultiDomainDataset,
    decathlon_score,
    default_baselines,
    domain_batches,
    write_decathlon_folder,
)
from mtlkit.decathlon.data import DOMAIN_CLASSES, read_annotations
from mtlkit.decathlon.synthetic import SYNTHETIC_CLASSES, generate_domain
from mtlkit.decathlon.wrn import WRN, WRNMTAN, WRNBackbone
from mtlkit.errors import ConfigError, DataError
from mtlkit.models import build_model
from mtlkit.registry import ARCHITECTURES, DATASETS
from mtlkit.tasks import classification_task

TINY_DOMAINS = ["aircraft", "dtd", "svhn"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread (threads only contend on the shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- score


def test_score_at_baseline_is_250_per_domain() -> None:
    total, per = decathlon_score(default_baselines())
    assert per == {d: pytest.approx(250.0) for d in DOMAINS}
    assert total == pytest.approx(2500.0)


def test_score_hand_computed_cases() -> None:
    base = {"a": 80.0, "b": 90.0, "c": 50.0}
    # a: E_b = 20, E_max = 40, alpha = 1000 / 40^2; acc 90 -> E = 10: 0.625 * 30^2 = 562.5
    # b: acc 100 -> zero error -> 1000; c: E_max = 100, acc 0 -> E = 100 = E_max -> 0
    total, per = decathlon_score({"a": 90.0, "b": 100.0, "c": 0.0}, base)
    assert per == {"a": pytest.approx(562.5), "b": pytest.approx(1000.0), "c": pytest.approx(0.0)}
    assert total == pytest.approx(1562.5)
    # worse than twice the baseline error is clamped at 0, never negative
    assert decathlon_score({"b": 75.0}, base)[1]["b"] == 0.0
    assert decathlon_score({"b": 80.0}, base)[1]["b"] == 0.0
    # one point better than baseline on svhn (E_b = 3.45): 1000 * (1 - 2.45 / 6.9)^2
    expected = 1000 * (1 - (100 - 97.55) / (2 * (100 - 96.55))) ** 2
    assert decathlon_score({"svhn": 97.55})[0] == pytest.approx(expected)


def test_shipped_baselines_are_the_finetune_row() -> None:
    base = default_baselines()
    assert list(base) == list(DOMAINS)
    assert base["imagenet12"] == 59.87 and base["aircraft"] == 60.34 and base["ucf101"] == 51.20
    assert sum(base.values()) == pytest.approx(765.06)


def test_score_errors() -> None:
    with pytest.raises(ConfigError, match="no baseline accuracy for domain 'mnist'"):
        decathlon_score({"mnist": 99.0})
    with pytest.raises(ConfigError, match="accuracy of svhn"):
        decathlon_score({"svhn": 101.0})
    with pytest.raises(ConfigError, match="no domain accuracies"):
        decathlon_score({})


def test_score_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["decathlon-score", "--acc", "svhn=96.55", "gtsrb=100"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert "svhn" in out and "250.0" in out and "1000.0" in out and lines[-2].endswith("1250.0")
    assert lines[-1].startswith("note: the total covers 2 of 10 domains; no accuracy for imagenet12")
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"final": {"dtd/accuracy": 55.53, "loss/dtd": 1.0}, "best": {}}))
    assert main(["decathlon-score", "--json", str(results), "--as-json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert set(scored.pop("missing")) == set(default_baselines()) - {"dtd"}
    assert scored == {"total": pytest.approx(250.0), "domains": {"dtd": pytest.approx(250.0)}}
    assert main(["decathlon-score", "--acc", "svhn"]) == 2
    assert "DOMAIN=ACCURACY" in capsys.readouterr().err


# ----------------------------------------------------------------------------- loader


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """Three domains in the organisers' layout: 6 train, 4 val, 2 (stripped) test PNGs each, 40x48."""
    return write_decathlon_folder(tmp_path / "decathlon-1.0")


def _builder(root: Path, **kw):
    cfg = DatasetConfig(name="decathlon", root=str(root), tasks=kw.pop("tasks", TINY_DOMAINS), **kw)
    return DATASETS.get("decathlon")(cfg)


def test_loader_reads_the_organiser_layout(tiny_root: Path) -> None:
    builder = _builder(tiny_root)
    tasks = builder.tasks()
    assert [(t.name, t.kind, t.channels) for t in tasks] == [(d, "classification", 4) for d in TINY_DOMAINS]
    ds = builder.dataset("train", train=False)
    assert isinstance(ds, MultiDomainDataset) and len(ds) == 18 and ds.domains == TINY_DOMAINS
    # labels: each domain's categories (global ids) sorted, numbered from 0
    ann = json.loads((tiny_root / "annotations" / "dtd_train.json").read_text())
    cats = sorted(c["id"] for c in ann["categories"])
    by_image = {a["image_id"]: a["category_id"] for a in ann["annotations"]}
    for j, image in enumerate(ann["images"]):
        sample = ds[ds.domain_range(1)[j]]
        assert set(sample) == {"image", "dtd"}
        assert sample["image"].shape == (3, 72, 72) and sample["image"].dtype == torch.float32
        assert sample["dtd"].dtype == torch.int64 and int(sample["dtd"]) == cats.index(by_image[image["id"]])
    # per-domain normalisation from the (here: all) training images: zero mean, unit std per channel
    images = torch.stack([ds[i]["image"] for i in ds.domain_range(0)])
    assert images.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (images.std(dim=(0, 2, 3)) - 1).abs().max() < 0.02
    assert len(builder.dataset("val", train=False)) == 12
    # augmentation: random crops (and mirrors, except for svhn) of the same image differ
    aug = _builder(tiny_root, augment=True).dataset("train", train=True)
    assert [part.flip for part in aug.parts] == [True, True, False]
    torch.manual_seed(0)
    views = torch.stack([aug[0]["image"] for _ in range(6)])
    assert views.shape == (6, 3, 72, 72) and (views - views[0]).abs().amax(dim=(1, 2, 3)).max() > 0.1
    assert len(_builder(tiny_root, n_train=2).dataset("train", train=False)) == 6


def test_loader_errors_name_the_file(tiny_root: Path) -> None:
    with pytest.raises(DataError, match=r"data/gtsrb: domain folder missing"):
        _builder(tiny_root, tasks=["aircraft", "gtsrb"]).tasks()
    with pytest.raises(DataError, match=r"data/imagenet12: domain folder missing"):
        _builder(tiny_root, tasks=None).tasks()
    with pytest.raises(ConfigError, match="'mnist'|mnist not a Visual Decathlon domain"):
        _builder(tiny_root, tasks=["mnist"]).tasks()
    with pytest.raises(DataError, match="aircraft_test_stripped.json: no annotations"):
        _builder(tiny_root).dataset("test", train=False)

    bad = tiny_root / "annotations" / "dtd_val.json"
    bad.write_text(bad.read_text()[:-20])
    with pytest.raises(DataError, match=r"dtd_val\.json: malformed JSON \(line 1 column"):
        _builder(tiny_root).dataset("val", train=False)
    (tiny_root / "annotations" / "svhn_train.json").unlink()
    with pytest.raises(DataError, match=r"svhn_train\.json: annotation file missing"):
        _builder(tiny_root).tasks()


def test_missing_image_is_named(tiny_root: Path) -> None:
    ds = _builder(tiny_root, tasks=["aircraft"]).dataset("val", train=False)
    ann = json.loads((tiny_root / "annotations" / "aircraft_val.json").read_text())
    gone = tiny_root / ann["images"][2]["file_name"]
    gone.unlink()
    ds[1]
    with pytest.raises(DataError, match=rf"{gone.name}: image file missing"):
        ds[2]


def test_annotation_structure_errors(tmp_path: Path) -> None:
    path = tmp_path / "x_train.json"
    cases = [
        ({"images": [], "annotations": []}, "'categories' is missing"),
        ({"images": [{"id": 1}], "categories": [], "annotations": []}, r"images\[0\] has no valid 'file_name'"),
        (
            {
                "images": [{"id": 1, "file_name": "a.png"}],
                "categories": [{"id": 5}],
                "annotations": [{"image_id": 2, "category_id": 5}],
            },
            "unknown image id 2",
        ),
        (
            {
                "images": [{"id": 1, "file_name": "a.png"}],
                "categories": [{"id": 5}],
                "annotations": [{"image_id": 1, "category_id": 6}],
            },
            "unknown category id 6",
        ),
        (
            {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 5}], "annotations": []},
            "image id 1 has no annotation",
        ),
    ]
    for doc, message in cases:
        path.write_text(json.dumps(doc))
        with pytest.raises(DataError, match=message):
            read_annotations(path)


# ----------------------------------------------------------------------------- batching


def _fake_multi(sizes: list[int]) -> MultiDomainDataset:
    return MultiDomainDataset([(f"d{k}", list(range(n))) for k, n in enumerate(sizes)])


def test_round_robin_batches_hold_one_domain() -> None:
    ds = _fake_multi([10, 3, 7])
    batches = domain_batches(ds, 3, shuffle=True, seed=0, epoch=0)
    owner = [{ds.locate(i)[0] for i in b} for b in batches]
    assert all(len(o) == 1 for o in owner)
    # round-robin: d0 d1 d2 | d0 d2 (d1 exhausted) | d0 d2 | d0
    assert [o.pop() for o in owner] == [0, 1, 2, 0, 2, 0, 2, 0]
    assert sorted(i for b in batches for i in b) == list(range(20))
    assert batches == domain_batches(ds, 3, shuffle=True, seed=0, epoch=0)
    assert batches != domain_batches(ds, 3, shuffle=True, seed=0, epoch=1)
    # two processes: turns of two batches per domain, counts cut to even; rank r takes batches r::2
    grouped = domain_batches(ds, 2, shuffle=True, seed=0, epoch=0, group=2)
    owners = [ds.locate(b[0])[0] for b in grouped]
    assert owners == [0, 0, 1, 1, 2, 2, 0, 0, 2, 2]
    assert owners[0::2] == owners[1::2]
    assert domain_batches(ds, 4, shuffle=False, seed=0, epoch=0) == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
        [10, 11, 12],
        [13, 14, 15, 16],
        [17, 18, 19],
    ]


def test_builder_batch_sampler_feeds_a_dataloader(tiny_root: Path) -> None:
    builder = _builder(tiny_root)
    ds = builder.dataset("train", train=True)
    loader = DataLoader(ds, batch_sampler=builder.batch_sampler(ds, 4, shuffle=True, seed=0, epoch=0))
    keys = [tuple(sorted(k for k in batch if k != "image")) for batch in loader]
    assert keys == [("aircraft",), ("dtd",), ("svhn",), ("aircraft",), ("dtd",), ("svhn",)]
    assert len(loader) == 6


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_domains_are_deterministic_and_balanced() -> None:
    a_img, a_lab = generate_domain("counts", "train", 12, 24, 24, seed=3)
    b_img, b_lab = generate_domain("counts", "train", 12, 24, 24, seed=3)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, generate_domain("counts", "val", 12, 24, 24, seed=3)[0])
    assert np.bincount(a_lab).tolist() == [3, 3, 3, 3]
    builder = DATASETS.get("decathlon_synthetic")(DatasetConfig(name="decathlon_synthetic", n_train=8, n_val=4))
    assert [(t.name, t.channels) for t in builder.tasks()] == [(d, len(c)) for d, c in SYNTHETIC_CLASSES.items()]
    ds = builder.dataset("val", train=False)
    assert len(ds) == 16 and ds[5]["image"].shape == (3, 32, 32) and set(ds[5]) == {"image", "stripes"}


# ----------------------------------------------------------------------------- models


def _tasks() -> list:
    return [classification_task("aircraft", 5), classification_task("svhn", 3), classification_task("dtd", 4)]


def _wrn_params(width_factor: int, depth: int = 28, bias: bool = False) -> int:
    """WRN backbone size by hand: convs (with or without bias), BN (2 per channel), 1x1 projection shortcuts."""
    n = (depth - 4) // 6
    c = [16, 16 * width_factor, 32 * width_factor, 64 * width_factor]
    total = 3 * 16 * 9 + bias * 16
    for cin, cout in zip(c[:-1], c[1:]):
        total += 2 * cin + 9 * cin * cout + 2 * cout + 9 * cout * cout + cin * cout + bias * 3 * cout
        total += (n - 1) * (2 * cout + 9 * cout * cout + 2 * cout + 9 * cout * cout + bias * 2 * cout)
    return total + 2 * c[3]


def test_parameter_counts_and_ratio() -> None:
    """The clean variant (no conv biases); the official one's biases are counted in test_decathlon_official."""
    tasks = [classification_task(d, DOMAIN_CLASSES[d]) for d in DOMAINS]
    backbone, mtan = WRNBackbone(1.0, 28, 4, "clean"), WRNMTAN(tasks, variant="clean")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(backbone) == _wrn_params(4) == 5_846_480
    heads = sum(256 * k + k for k in DOMAIN_CLASSES.values())
    single = WRNMTAN.single_task_parameters(tasks, variant="clean")
    assert single == pytest.approx(5_846_480 + heads / 10, abs=1)
    # one network per domain: #P = number of domains (checked at width 1/8 to stay small)
    for variant in ("clean", "official"):
        wrn = WRN(tasks, width=0.125, variant=variant)
        assert count(wrn) / WRN.single_task_parameters(tasks, 0.125, variant=variant) == pytest.approx(10.0)
    # per-domain attention: 1x1 convs [16-16-16], [128-64-64], [256-128-128], [512-256-256] + BN
    att = (16 * 16 + 16 * 16 + 4 * 16) + sum(2 * c * c + c * c + 4 * c for c in (64, 128, 256))
    blocks = sum(9 * a * b + 2 * b for a, b in [(16, 64), (64, 128), (128, 256), (256, 256)])
    assert count(mtan) == 5_846_480 + blocks + 10 * att + heads
    ratio = count(mtan) / single
    assert ratio == pytest.approx(1.725, abs=0.001)  # the MTAN paper reports 1.74
    assert (count(mtan) - heads) / count(backbone) == pytest.approx(1.611, abs=0.001)


@pytest.mark.parametrize("arch", ["wrn", "wrn_mtan"])
@pytest.mark.parametrize(("variant", "size"), [("clean", 32), ("official", 72)])
def test_forward_computes_only_the_requested_domain(arch: str, variant: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, _tasks(), width=0.125, depth=10, variant=variant)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"aircraft": (2, 5), "svhn": (2, 3), "dtd": (2, 4)}
    calls: list[str] = []
    branches = model.nets if arch == "wrn" else model.attention
    for name, module in branches.items():
        module.register_forward_hook(lambda *_, name=name: calls.append(name))
    heads = model.heads if arch == "wrn_mtan" else {n: net.head for n, net in model.nets.items()}
    for name, head in heads.items():
        head.register_forward_hook(lambda *_, name=name: calls.append(name))
    only = model(x, tasks=["svhn"])
    assert list(only) == ["svhn"] and set(calls) == {"svhn"}
    only["svhn"].sum().backward()
    for name in ("aircraft", "dtd"):
        assert all(p.grad is None for p in (branches[name].parameters()))
        assert all(p.grad is None for p in heads[name].parameters())
    model.eval()
    torch.testing.assert_close(model(x, tasks=["dtd"])["dtd"], model.decode(model.encode(x), ["dtd"])["dtd"])


def test_mtan_attention_and_shared_parameters() -> None:
    model = WRNMTAN(_tasks(), width=0.125, depth=10)
    with model.recording() as rec:
        model(torch.randn(2, 3, 72, 72), tasks=["aircraft"])
    shapes = {k: tuple(v.shape) for k, v in rec.items()}
    # width 0.125: channels 2, 8, 16, 32 at 72, 36, 18, 9 pixels
    assert shapes == {
        "attention/aircraft/stem": (2, 2, 72, 72),
        "attention/aircraft/stage1": (2, 8, 36, 36),
        "attention/aircraft/stage2": (2, 16, 18, 18),
        "attention/aircraft/stage3": (2, 32, 9, 9),
    }
    assert all(0 <= float(v.min()) and float(v.max()) <= 1 for v in rec.values())
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for p in [*model.backbone.parameters(), *model.blocks.parameters()]}
    assert not shared & {id(p) for p in [*model.attention.parameters(), *model.heads.parameters()]}
    assert WRN(_tasks(), width=0.125, depth=10).shared_parameters() == []
    assert set(ARCHITECTURES.names()) >= {"wrn", "wrn_mtan"}
    with pytest.raises(ConfigError, match="6n\\+4"):
        WRNMTAN(_tasks(), depth=12)
    with pytest.raises(ConfigError, match="model.options.dropout"):
        build_model("wrn_mtan", _tasks(), 0.125, dropout=0.3)


# ----------------------------------------------------------------------------- training


def test_wrn_mtan_trains_on_the_tiny_folder_through_the_cli(
    tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    rc = main(
        [
            "train",
            "dataset.name=decathlon",
            f"dataset.root={tiny_root}",
            f"dataset.tasks=[{','.join(TINY_DOMAINS)}]",
            "dataset.height=32",
            "dataset.width=32",
            "model.arch=wrn_mtan",
            "model.width=0.125",
            "model.options.depth=10",
            "model.options.variant=clean",
            "train.epochs=2",
            "train.batch_size=4",
            "train.progress=false",
            "train.loggers=[]",
            "optim.lr=1e-3",
            "--run-dir",
            str(run_dir),
        ]
    )
    assert rc == 0
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2
    for record in history:
        assert set(record["train"]) == {f"loss/{d}" for d in TINY_DOMAINS}
        assert all(math.isfinite(v) and v > 0 for v in record["train"].values())
        for d in TINY_DOMAINS:
            assert 0 <= record["val"][f"{d}/accuracy"] <= 100
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "finished" and results["arch"] == "wrn_mtan"
    capsys.readouterr()
    assert main(["decathlon-score", "--json", str(run_dir / "results.json"), "--as-json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert set(scored["domains"]) == set(TINY_DOMAINS)
    expected = decathlon_score({d: results["final"][f"{d}/accuracy"] for d in TINY_DOMAINS})[0]
    assert scored["total"] == pytest.approx(expected)
    # evaluation with per-domain BN statistics: its own file, every domain's metrics
    assert main(["evaluate", str(run_dir), "--checkpoint", "last", "--device", "cpu", "--refresh-bn"]) == 0
    refreshed = json.loads((run_dir / "eval-val-last-refresh-bn.json").read_text())
    assert set(refreshed) == {f"{k}/{d}" for d in TINY_DOMAINS for k in ("loss",)} | {
        f"{d}/accuracy" for d in TINY_DOMAINS
    }


def test_cpu_config_builds() -> None:
    from mtlkit.config import load_config
    from mtlkit.train.trainer import build

    root = PRESET_DIR
    setup = build(
        load_config(root / "decathlon_cpu.yaml", ["dataset.n_train=4", "dataset.n_val=4"]), torch.device("cpu")
    )
    assert [t.name for t in setup.tasks] == list(SYNTHETIC_CLASSES)
    assert type(setup.model).__name__ == "WRNMTAN" and hasattr(setup.builder, "batch_sampler")
    full = load_config(root / "decathlon.yaml")
    assert (full.model.arch, full.dataset.name, full.dataset.height) == ("wrn_mtan", "decathlon", 72)


def test_params_without_a_dataset_folder_uses_the_official_class_counts() -> None:
    """``mtlkit params --dataset decathlon`` needs no data: the ten domains' release class counts."""
    builder = DATASETS.get("decathlon")(DatasetConfig(name="decathlon"))
    assert {t.name: t.channels for t in builder.tasks()} == DOMAIN_CLASSES
    with pytest.raises(ConfigError, match="dataset.root: set it"):
        builder.dataset("train", train=True)
