"""Multi-process training (torchrun + DDP, gloo on CPU) against one process with the same global batch.

The comparison is exact up to float rounding because (1) the 2-process sampler gives the ranks,
together, exactly the single-process batch of every step; (2) BatchNorm is synchronised, so its
statistics are those of the global batch; (3) every target pixel is valid, so the mean of the
ranks' mean losses is the global mean loss.

Float rounding itself is amplified by training: two single-process runs of this tiny network that
differ only in the number of CPU threads agree to ~1e-7 after one step, ~1e-6 after two and only
~1e-4 after three (plain SGD, lr 2e-3; ReLU/max-pool kinks and BatchNorm over a 4-sample batch
make the dynamics chaotic). So the runs are short (one step per epoch) and the record after e
steps is compared at 10 x that drift (``DRIFT``: 1e-6, 1e-5, 1e-3 relative after 1, 2, 3 steps):
a real discrepancy (unsynchronised BatchNorm, another data order, gradients summed instead of
averaged) moves the losses by 1e-3 to 1e-2 from the first step on, so the first two epochs catch
it with a margin of 100 or more. Metrics that
count pixels (accuracy, mIoU, angle thresholds, the median) of an untrained network flip on
near-ties, so they get an absolute tolerance of a few pixels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from torch import nn

from mtlkit.config import config_from_dict
from mtlkit.data import sampling
from mtlkit.data.npy import save_sample
from mtlkit.errors import ConfigError
from mtlkit.train import distributed as dist
from mtlkit.train.trainer import train
from mtlkit.weighting.base import Weighting

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def write_npy_set(root: Path, n_train: int = 8, n_val: int = 5, size: int = 32, seed: int = 0) -> Path:
    """A tiny NYUv2-layout set where every pixel is valid (labels 0..12, depth > 0, unit normals)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            normal = rng.normal(size=(size, size, 3)).astype(np.float32)
            save_sample(
                root,
                split,
                i,
                {
                    "image": rng.random((size, size, 3), dtype=np.float32),
                    "label": rng.integers(0, 13, (size, size)).astype(np.int64),
                    "depth": rng.uniform(0.5, 3.0, (size, size, 1)).astype(np.float32),
                    "normal": normal / np.linalg.norm(normal, axis=2, keepdims=True),
                },
            )
    return root


def run_config(data: Path, out: Path, **sections) -> dict:
    """A seconds-long run config: width-0.125 MTAN on 32x32 images, SGD, global batch 4, one step per epoch."""
    cfg = {
        "name": "ddp",
        "out_dir": str(out),
        "seed": 0,
        "dataset": {"name": "nyuv2", "root": str(data)},
        "model": {"arch": "mtan", "width": 0.125},
        "weighting": {"name": "equal"},
        "optim": {"name": "sgd", "lr": 2e-3, "momentum": 0.0},
        "train": {
            "epochs": 2,
            "batch_size": 4,
            "max_steps_per_epoch": 1,
            "device": "cpu",
            "progress": False,
            "loggers": [],
        },
    }
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value}
    return cfg


def torchrun(cfg: dict, run_dir: Path, nproc: int = 2, resume: bool = False) -> None:
    """``torchrun --nproc_per_node N -m mtlkit train CONFIG`` (or ``--resume``) in a subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    if resume:
        args = ["train", "--resume", str(run_dir)]
    else:
        path = run_dir.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(cfg))
        args = ["train", str(path), "--run-dir", str(run_dir)]
    cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", "-m", "mtlkit", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


#: absolute tolerances of metrics that count pixels (0.5% of the 5 x 32 x 32 validation pixels, in each unit)
COUNT_TOLERANCE = {
    "miou": 5e-3,
    "pix_acc": 5e-3,
    "macc": 5e-3,
    "fwiou": 5e-3,
    "median": 0.5,
    "within_11.25": 0.5,
    "within_22.5": 0.5,
    "within_30": 0.5,
}


#: relative drift between two runs that differ only in float rounding, after 1, 2, 3 SGD steps (above)
DRIFT = {1: 1e-7, 2: 1e-6, 3: 1e-4}


def assert_same_records(a: dict, b: dict, drift: float | None = None) -> None:
    """Same epoch record (train losses, validation losses and metrics, weights) within float rounding:
    10 x the stated drift after the record's number of steps (one per epoch), or after ``drift``."""
    rtol = 10 * (DRIFT[a["epoch"]] if drift is None else drift)
    for section in ("train", "val", "weights"):
        assert set(a[section]) == set(b[section]), section
        for key, value in a[section].items():
            atol = COUNT_TOLERANCE.get(key.split("/")[-1], 1e-6)
            got = b[section][key]
            assert got == pytest.approx(value, rel=rtol, abs=atol), f"{section}/{key}: {value} vs {got}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_npy_set(tmp_path_factory.mktemp("npyset"))


# ----------------------------------------------------------------------------- unit tests, one process


def _world(monkeypatch, size: int, rank: int = 0) -> None:
    """Pretend to be ``rank`` of ``size`` processes (sampling lives in mtlkit.data.sampling)."""
    for module in (dist, sampling):
        monkeypatch.setattr(module, "world_size", lambda: size)
        monkeypatch.setattr(module, "rank", lambda: rank)


def test_train_sampler_ranks_together_give_the_single_process_batches(monkeypatch) -> None:
    """For every epoch, the union of the ranks' step-i batches is the one-process step-i batch."""
    data = list(range(11))
    for epoch in (0, 3):
        _world(monkeypatch, 1)
        one, bs, drop = dist.train_sampler(data, 4, seed=5)
        one.set_epoch(epoch)
        order = list(one)
        assert (bs, drop) == (4, True) and sorted(order) == data
        single = [order[i : i + 4] for i in range(0, 8, 4)]  # 11 samples: the last partial batch dropped
        gen = torch.Generator().manual_seed(5 * dist.EPOCH_SEED_STRIDE + epoch)
        assert order == torch.randperm(11, generator=gen).tolist()  # = RandomSampler with that generator
        per_rank = []
        for r in range(2):
            _world(monkeypatch, 2, r)
            sampler, local, drop = dist.train_sampler(data, 4, seed=5)
            sampler.set_epoch(epoch)
            idx = list(sampler)
            assert local == 2 and drop
            per_rank.append([idx[i : i + 2] for i in range(0, len(idx) - len(idx) % 2, 2)])
        assert len(per_rank[0]) == len(per_rank[1]) == len(single) == 2
        for step, batch in enumerate(single):
            assert sorted(per_rank[0][step] + per_rank[1][step]) == sorted(batch)


def test_eval_shard_reads_every_sample_once_without_padding() -> None:
    shards = [list(dist.EvalShard(5, r, 2)) for r in range(2)]
    assert shards == [[0, 2, 4], [1, 3]]
    assert [len(dist.EvalShard(5, r, 2)) for r in range(2)] == [3, 2]


def test_epoch_batches_split_global_batches_for_training(monkeypatch) -> None:
    batches = {0: [[0, 1, 2, 3], [4, 5, 6], [7]], 1: [[8, 9], [10, 11, 12, 13]]}
    got = {}
    for r in range(2):
        _world(monkeypatch, 2, r)
        train_b = dist.EpochBatches(lambda e: batches[e], train=True)
        eval_b = dist.EpochBatches(lambda e: batches[e], train=False)
        got[r] = (list(train_b), list(eval_b))
        train_b.set_epoch(1)
        got[r, 1] = list(train_b)
    # training: each global batch split in contiguous parts; [7] (smaller than the world) skipped
    assert got[0][0] == [[0, 1], [4, 5]] and got[1][0] == [[2, 3], [6]]
    assert got[0, 1] == [[8], [10, 11]] and got[1, 1] == [[9], [12, 13]]
    # evaluation: whole batches, every batch exactly once
    assert got[0][1] == [[0, 1, 2, 3], [7]] and got[1][1] == [[4, 5, 6]]


def test_single_process_helpers_are_identities() -> None:
    t = torch.arange(3.0, requires_grad=True)
    assert dist.globalize(t) is t and dist.all_reduce_mean(t) is t and dist.all_gather_cat(t, 0) is t
    bn = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    assert dist.convert_sync_batchnorm(bn, torch.device("cpu")) is bn
    assert dist.wrap(bn, torch.device("cpu")) is bn and dist.unwrap_ddp(bn) is bn
    assert dist.local_batch_size(5) == 5


def test_convert_keeps_parameters_and_state_dict_keys(monkeypatch) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4)))
    before = {k: v for k, v in net.state_dict().items()}
    params = list(net.parameters())
    _world(monkeypatch, 2)
    conv = dist.convert_sync_batchnorm(net, torch.device("cpu"))
    assert isinstance(conv[1], dist.DistBatchNorm) and isinstance(conv[2][0], dist.DistBatchNorm)
    assert [id(p) for p in conv.parameters()] == [id(p) for p in params]
    assert conv.state_dict().keys() == before.keys()
    with pytest.raises(ConfigError, match="not divisible"):
        dist.local_batch_size(5)


def test_unsupported_weighting_is_refused_under_ddp(monkeypatch) -> None:
    class Local(Weighting):
        supports_distributed = False
        distributed_note = "its state is per process"

    dist.check_weighting(Local(["a", "b"]))  # one process: fine
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match="Local does not support multi-process training .its state is per"):
        dist.check_weighting(Local(["a", "b"]))
    dist.check_weighting(Weighting(["a", "b"]))


# ----------------------------------------------------------------------------- DistBatchNorm, 2 processes


def _bn_worker(r: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=r, world_size=2)
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 5, dtype=torch.float64)
    w = torch.randn(6, 3, 4, 5, dtype=torch.float64)
    bn = dist.DistBatchNorm(3, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    part = slice(3 * r, 3 * r + 3)
    xr = x[part].clone().requires_grad_(True)
    y = bn(xr)
    (y * w[part]).sum().backward()
    torch.save(
        {
            "y": y.detach(),
            "x_grad": xr.grad,
            "w_grad": bn.weight.grad,
            "b_grad": bn.bias.grad,
            "running_mean": bn.running_mean,
            "running_var": bn.running_var,
        },
        f"{out_dir}/{r}.pt",
    )
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_dist_batchnorm_equals_batchnorm_on_the_global_batch(tmp_path: Path) -> None:
    """Forward, input gradients, affine gradients (summed) and running stats of 2 ranks = one BN."""
    mp.spawn(_bn_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 3, 4, 5, dtype=torch.float64)
    bn = nn.BatchNorm2d(3, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    y = bn(x)
    (y * w).sum().backward()
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach())
    torch.testing.assert_close(torch.cat([p["x_grad"] for p in parts]), x.grad)
    torch.testing.assert_close(parts[0]["w_grad"] + parts[1]["w_grad"], bn.weight.grad)
    torch.testing.assert_close(parts[0]["b_grad"] + parts[1]["b_grad"], bn.bias.grad)
    for p in parts:
        torch.testing.assert_close(p["running_mean"], bn.running_mean)
        torch.testing.assert_close(p["running_var"], bn.running_var)


# ----------------------------------------------------------------------------- whole runs under torchrun


@pytest.mark.slow
def test_two_processes_match_one_and_resume_on_one(data: Path, tmp_path: Path) -> None:
    """2-process run = 1-process run (same global batch) for 2 epochs; resumed on 1 process for a 3rd.

    Each epoch takes the first global batch of its own shuffle, so epoch 2 also checks that both
    runs move their samplers to the same epoch.
    """
    one = train(config_from_dict(run_config(data, tmp_path, train={"epochs": 3})), run_dir=tmp_path / "one")
    two = tmp_path / "two"
    torchrun(run_config(data, tmp_path), two)
    ref, got = history(one), history(two)
    assert [h["epoch"] for h in got] == [1, 2]
    for a, b in zip(ref, got):
        assert_same_records(a, b)
    ckpt = torch.load(two / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") or "_orig_mod" in k for k in ckpt["model"])
    # continue the 2-process run in one process, one more epoch
    saved = yaml.safe_load((two / "config.yaml").read_text())
    saved["train"]["epochs"] = 3
    (two / "config.yaml").write_text(yaml.safe_dump(saved))
    (two / "results.json").unlink()
    train(resume=two)
    got = history(two)
    assert [h["epoch"] for h in got] == [1, 2, 3]
    assert_same_records(ref[2], got[2])
    assert json.loads((two / "results.json").read_text())["status"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("method,mode", [("pcgrad", "parameters"), ("mgda", "representation")])
def test_gradient_method_under_two_processes_matches_one(data: Path, tmp_path: Path, method: str, mode: str) -> None:
    """Per-task gradients averaged (parameters) or gathered (representation) across ranks = one process."""
    cfg = run_config(data, tmp_path, weighting={"name": method, "mode": mode}, train={"epochs": 1})
    one = train(config_from_dict(cfg), run_dir=tmp_path / "one")
    torchrun(cfg, tmp_path / "two")
    ref, got = history(one), history(tmp_path / "two")
    assert len(got) == 1
    # a gradient method's weights are a non-smooth function of the gradients (PCGrad's sign tests,
    # MGDA's active set), so one step already amplifies rounding as much as three plain steps do
    # (1.5e-6 measured for MGDA): compared at the three-step drift
    assert_same_records(ref[0], got[0], drift=DRIFT[3])
    assert not all(v == 1.0 for v in ref[0]["weights"].values())  # the method really reweighted


#: a seed whose first global batch splits the labels unevenly over the 2 ranks (checked in the test)
PARTIAL_SEED = 23


@pytest.mark.slow
@pytest.mark.parametrize("method", ["equal", "imtl_g"])
def test_partial_labels_under_two_processes_match_one(data: Path, tmp_path: Path, method: str) -> None:
    """dataset.label_fraction under torchrun: the ranks agree on the step's tasks and weigh their losses by
    their labelled samples (train.step.step_presence), so the step is the one-process step.

    Half the normals and half the depths are labelled (4 of the 8 training images each, the same
    seeded subset in every process). With seed 23 the first global batch of 4 puts its one normal
    label on rank 1 (rank 0 has none: factor 0 and 2) and its depth labels 2 and 1 (factors 4/3 and
    2/3). One step is compared (its training losses, then the validation after the update), at the
    module's one-step drift: later steps of this network amplify rounding chaotically (the module
    docstring). The gradient method is IMTL-G, whose weights are a continuous function of the
    gradients (a sign test such as PCGrad's turns a rounding difference into another projection),
    but its 2 x 2 solve amplifies float32 rounding: its weights differ by 1.3e-4 between one and two
    processes here with every label too, so its record is compared at the three-step drift as in
    test_gradient_method_under_two_processes_matches_one. The float64 step of each kind, loss-level,
    gradient-level and representation mode, is compared to 1e-10 in tests/train/test_partial_step.py.
    """
    from mtlkit.data.partial import labelled_indices

    perm = torch.randperm(8, generator=torch.Generator().manual_seed(sampling.epoch_seed(PARTIAL_SEED))).tolist()
    ranks = [perm[0:4:2], perm[1:4:2]]  # the ranks' halves of the first global batch (the sampler's split)
    split = {
        t: [len(set(r) & set(labelled_indices(8, 0.5, seed=PARTIAL_SEED, task=t))) for r in ranks]
        for t in ("normal", "depth")
    }
    assert split == {"normal": [0, 1], "depth": [2, 1]}
    cfg = run_config(
        data,
        tmp_path,
        dataset={"label_fraction": {"normal": 0.5, "depth": 0.5}},
        weighting={"name": method},
        train={"epochs": 1},
    )
    cfg["seed"] = PARTIAL_SEED
    one = train(config_from_dict(cfg), run_dir=tmp_path / "one")
    torchrun(cfg, tmp_path / "two")
    ref, got = history(one), history(tmp_path / "two")
    assert len(got) == 1
    assert_same_records(ref[0], got[0], drift=DRIFT[3] if method == "imtl_g" else None)
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["label_fraction"]["normal"]["labelled"] == 4
