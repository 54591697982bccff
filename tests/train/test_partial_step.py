"""A step on partially labelled batches: losses over the labelled samples, absent tasks dropped from the method."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers.nets import TinyNet, _batch
from mtlkit.balance import Balancer
from mtlkit.errors import TrainingError
from mtlkit.registry import WEIGHTINGS
from mtlkit.tasks import depth_task, normal_task, segmentation_task
from mtlkit.tasks.base import labelled_key
from mtlkit.train.step import StepRunner, present_tasks, task_loss
from mtlkit.weighting import GradVac

TASKS = [segmentation_task(3), depth_task(), normal_task()]


def test_loss_averages_over_the_labelled_samples_only() -> None:
    gen = torch.Generator().manual_seed(1)
    pred = torch.rand(4, 1, 3, 3, generator=gen)
    target = torch.rand(4, 1, 3, 3, generator=gen) + 0.5
    target[2, 0, 0, 0] = 0.0  # one missing depth pixel in a labelled sample
    labelled = torch.tensor([True, False, True, False])
    got = task_loss(TASKS[1], pred, {"depth": target, labelled_key("depth"): labelled})
    # by hand: mean |pred - target| over the valid pixels of samples 0 and 2 (9 + 8 pixels)
    total = sum(
        abs(float(pred[i, 0, r, c]) - float(target[i, 0, r, c])) for i in (0, 2) for r in range(3) for c in range(3)
    )
    total -= abs(float(pred[2, 0, 0, 0]))
    assert float(got) == pytest.approx(total / 17, rel=1e-6)
    # every sample labelled (or no flag): the plain loss
    assert float(task_loss(TASKS[1], pred, {"depth": target})) == pytest.approx(float(TASKS[1].loss(pred, target)))


def _partial_batch() -> dict[str, torch.Tensor]:
    batch = _batch()
    batch["segmentation"] = batch.pop("seg")
    batch["normal"] = torch.zeros_like(batch["normal"])  # no normals in this batch
    batch[labelled_key("normal")] = torch.zeros(2, dtype=torch.bool)
    batch[labelled_key("depth")] = torch.tensor([True, False])  # one depth label
    return batch


def test_present_tasks_reads_the_labelled_flags() -> None:
    assert present_tasks(["segmentation", "depth", "normal"], _partial_batch()) == ["segmentation", "depth"]


@pytest.mark.parametrize("name", ["uncertainty", "famo", "pcgrad", "mgda", "gradvac", "moco"])
def test_a_task_without_labels_gets_no_gradient_and_no_weight(name: str) -> None:
    """On loss-level and gradient-level methods, with and without per-task state: the step equals the method
    run on the present tasks alone."""
    torch.manual_seed(0)
    model = TinyNet(TASKS)
    twin = copy.deepcopy(model)
    weighting = WEIGHTINGS.get(name)([t.name for t in TASKS])
    runner = StepRunner(
        model, weighting, TASKS, torch.optim.SGD([*model.parameters(), *weighting.parameters()], lr=0.0)
    )
    batch = _partial_batch()
    values = runner(batch)
    assert runner.present == ["segmentation", "depth"]
    head = model.heads["normal"]
    assert all(p.grad is None or not p.grad.any() for p in head.parameters())
    assert float(weighting.last_weights[2]) == 0.0 and float(values[2]) == 0.0
    for p in weighting.parameters():  # uncertainty: the absent task's log-variance does not move
        assert p.grad is None or float(p.grad[2]) == 0.0

    # the method built for the two present tasks only, on the same network and batch
    alone = WEIGHTINGS.get(name)(["segmentation", "depth"])
    twin.train()
    out = twin(batch["image"])
    losses = [task_loss(t, out[t.name], batch) for t in TASKS[:2]]
    shared = [p for p in twin.shared_parameters() if p.requires_grad]
    ids = {id(p) for p in shared}
    own = [p for p in twin.parameters() if id(p) not in ids]
    Balancer(alone).backward(
        losses if alone.needs_gradients else torch.stack(losses),
        shared if alone.needs_gradients else None,
        task_params=own if alone.needs_gradients else None,
    )
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        if n.startswith("heads.normal"):
            continue
        assert p.grad is not None and q.grad is not None, n
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=n)
    torch.testing.assert_close(weighting.last_weights[:2], alone.last_weights.float(), rtol=1e-5, atol=1e-7)
    for p, q in zip(weighting.parameters(), alone.parameters()):
        torch.testing.assert_close(p.grad[:2], q.grad)


def test_a_method_that_cannot_drop_a_task_says_so() -> None:
    """A method (a plugin's: every built-in one can) that declares it cannot drop a task is refused, with its reason."""

    class Strict(GradVac):
        handles_absent_tasks = False
        absent_note = "it needs every task"

    model = TinyNet(TASKS)
    weighting = Strict([t.name for t in TASKS])
    runner = StepRunner(model, weighting, TASKS, torch.optim.SGD(model.parameters(), lr=0.0))
    with pytest.raises(TrainingError, match="Strict cannot drop a task from a step .it needs every task.*lacks normal"):
        runner(_partial_batch())


def test_evaluation_scores_the_labelled_samples_only() -> None:
    from torch.utils.data import DataLoader

    from mtlkit.train.evaluate import evaluate

    torch.manual_seed(0)
    model = TinyNet(TASKS[1:2])
    gen = torch.Generator().manual_seed(2)
    samples = [
        {
            "image": torch.randn(3, 8, 8, generator=gen),
            "depth": torch.rand(1, 8, 8, generator=gen) + 0.1,
            labelled_key("depth"): torch.tensor(i != 1),
        }
        for i in range(3)
    ]
    samples[1]["depth"] = torch.full((1, 8, 8), 5.0)  # a value no meter may read: the sample is unlabelled
    got = evaluate(model, TASKS[1:2], DataLoader(samples, batch_size=3), torch.device("cpu"))
    kept = [samples[0], samples[2]]
    want = evaluate(
        model,
        TASKS[1:2],
        DataLoader([{k: v for k, v in s.items() if k != labelled_key("depth")} for s in kept], batch_size=2),
        torch.device("cpu"),
    )
    assert got == pytest.approx(want, rel=1e-6)


def test_a_batch_without_any_label_makes_no_update() -> None:
    model = TinyNet(TASKS)
    before = [p.detach().clone() for p in model.parameters()]
    weighting = WEIGHTINGS.get("equal")([t.name for t in TASKS])
    runner = StepRunner(model, weighting, TASKS, torch.optim.SGD(model.parameters(), lr=1.0))
    batch = _partial_batch()
    for t in TASKS:
        batch[labelled_key(t.name)] = torch.zeros(2, dtype=torch.bool)
    assert runner(batch).tolist() == [0.0, 0.0, 0.0] and runner.present == []
    assert weighting.last_weights.tolist() == [0.0, 0.0, 0.0]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


# ----------------------------------------------------------------------------- two processes (gloo)

NAMES = [t.name for t in TASKS]


def _global_batch() -> dict[str, torch.Tensor]:
    """4 samples, every pixel valid; normal labelled on sample 0 only (rank 0's half), depth on 0, 1 and 3."""
    gen = torch.Generator().manual_seed(3)
    normal = torch.nn.functional.normalize(torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64), dim=1)
    return {
        "image": torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64),
        "segmentation": torch.randint(0, 3, (4, 8, 8), generator=gen),
        "depth": torch.rand(4, 1, 8, 8, generator=gen, dtype=torch.float64) + 0.1,
        "normal": normal,
        labelled_key("depth"): torch.tensor([True, True, False, True]),
        labelled_key("normal"): torch.tensor([True, False, False, False]),
    }


def _step_grads(model: torch.nn.Module, runner: StepRunner, batch: dict[str, torch.Tensor]) -> dict[str, object]:
    values = runner(batch)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"grads": grads, "values": values, "present": runner.present, "weights": runner.weighting.last_weights}


def _partial_worker(r: int, init_file: str, out_dir: str, method: str, mode: str) -> None:
    from mtlkit.train import distributed as dist

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=r, world_size=2)
    torch.manual_seed(0)
    model = dist.convert_sync_batchnorm(TinyNet(TASKS).double(), torch.device("cpu"))
    net = dist.wrap(model, torch.device("cpu"), partial_batches=True)
    weighting = WEIGHTINGS.get(method)(NAMES)
    runner = StepRunner(net, weighting, TASKS, torch.optim.SGD(model.parameters(), lr=0.0), mode=mode)
    half = {k: v[2 * r : 2 * r + 2] for k, v in _global_batch().items()}
    torch.save(_step_grads(model, runner, half), f"{out_dir}/{r}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("method,mode", [("equal", "parameters"), ("pcgrad", "parameters"), ("mgda", "representation")])
def test_two_processes_with_partial_labels_match_one(tmp_path, method: str, mode: str) -> None:
    """Two ranks, one of which has no normal label and fewer depth labels, apply one process's update.

    Normal is labelled on rank 0 only (its factor 2 x 1 / 1 = 2, rank 1's 0) and depth on 2 and 1
    samples (factors 4/3 and 2/3), so the ranks' mean loss is each task's mean over its labelled
    samples of the global batch: the single-process step on the 4 samples. Every pixel is valid
    and BatchNorm is synchronised, so in float64 the gradients agree to its rounding (1e-10 relative
    leaves a wide margin over the few hundred operations between them; a wrong factor, a rank's
    zero counted as a sample or a task missing on one rank moves them at O(1e-2)).
    """
    import torch.multiprocessing as mp

    mp.spawn(_partial_worker, args=(str(tmp_path / "init"), str(tmp_path), method, mode), nprocs=2)
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    model = TinyNet(TASKS).double()
    weighting = WEIGHTINGS.get(method)(NAMES)
    runner = StepRunner(model, weighting, TASKS, torch.optim.SGD(model.parameters(), lr=0.0), mode=mode)
    want = _step_grads(model, runner, _global_batch())
    assert want["present"] == parts[0]["present"] == parts[1]["present"] == NAMES  # the union of the ranks' tasks
    for part in parts:
        assert part["grads"].keys() == want["grads"].keys()
        for n, g in want["grads"].items():
            torch.testing.assert_close(part["grads"][n], g, rtol=1e-10, atol=1e-13, msg=lambda m, n=n: f"{n}: {m}")
        torch.testing.assert_close(part["weights"].double(), want["weights"].double(), rtol=1e-6, atol=1e-7)
    # the logged losses: the mean over the ranks of their scaled losses is the global one
    torch.testing.assert_close((parts[0]["values"] + parts[1]["values"]) / 2, want["values"], rtol=1e-10, atol=1e-13)
    assert float(parts[1]["values"][2]) == 0.0  # rank 1 has no normal label: its (scaled) normal loss is 0
