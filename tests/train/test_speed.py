"""Speed settings (AMP, channels-last, torch.compile, loaders) agree numerically with the plain path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mtlkit.config import config_from_dict
from mtlkit.errors import ConfigError
from mtlkit.models import build_model
from mtlkit.models.blocks import AttentionGate, ConvBNReLU, Head, pool, unpool
from mtlkit.tasks import depth_task, normal_task, segmentation_task
from mtlkit.train import distributed as dist
from mtlkit.train.speed import compile_unavailable, speed_settings
from mtlkit.train.step import StepRunner
from mtlkit.train.trainer import make_loader, make_optimizer, train
from mtlkit.weighting import Equal

TASKS = [segmentation_task(7), depth_task(), normal_task()]


def _cfg(**train):
    return config_from_dict({"train": train})


def _batch(seed: int = 0, n: int = 2, size: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    normal = torch.nn.functional.normalize(torch.randn(n, 3, size, size, generator=g), dim=1)
    return {
        "image": torch.rand(n, 3, size, size, generator=g),
        "segmentation": torch.randint(0, 7, (n, size, size), generator=g),
        "depth": torch.rand(n, 1, size, size, generator=g) + 0.5,
        "normal": normal,
    }


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mtan", TASKS, width=0.125)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _step(model: nn.Module, batch: dict, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One SGD(lr=0) step through StepRunner (so the autocast path is the trainer's); the K losses."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    return StepRunner(model, Equal([t.name for t in TASKS]), TASKS, opt, autocast_dtype=dtype)(batch)


# ----------------------------------------------------------------------------- settings


def test_cpu_defaults_are_all_off() -> None:
    s = speed_settings(_cfg(), torch.device("cpu"))
    assert (s.autocast_dtype, s.compile, s.channels_last) == (None, False, False)


def test_cuda_defaults_bf16_and_channels_last(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    s = speed_settings(_cfg(), torch.device("cuda"))
    assert (s.autocast_dtype, s.compile, s.channels_last) == (torch.bfloat16, False, True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert speed_settings(_cfg(), torch.device("cuda")).autocast_dtype is None  # no bf16: fp32 unless asked
    assert speed_settings(_cfg(amp="fp16"), torch.device("cuda")).autocast_dtype == torch.float16
    assert speed_settings(_cfg(channels_last=False), torch.device("cuda")).channels_last is False


def test_explicit_settings_on_cpu() -> None:
    s = speed_settings(_cfg(amp="bf16", channels_last=True), torch.device("cpu"))
    assert (s.autocast_dtype, s.channels_last) == (torch.bfloat16, True)
    with pytest.raises(ConfigError, match="train.amp=fp16 needs a CUDA device"):
        speed_settings(_cfg(amp="fp16"), torch.device("cpu"))


def test_compile_without_compiler_is_a_config_error(monkeypatch) -> None:
    import mtlkit.train.speed as speed

    monkeypatch.setattr(speed.shutil, "which", lambda name: None)
    assert "C++ compiler" in compile_unavailable(torch.device("cpu"))
    with pytest.raises(ConfigError, match="train.compile: .*C\\+\\+ compiler"):
        speed_settings(_cfg(compile=True), torch.device("cpu"))


# ----------------------------------------------------------------------------- numerical agreement


def test_channels_last_matches_contiguous() -> None:
    """Same outputs and losses (float32) and gradients (float64) with NHWC weights and inputs.

    Gradients are compared in float64: at initialisation, BatchNorm over near-constant channels
    of this tiny network divides rounding errors by sqrt(eps), so two float32 layouts differ by
    percents in the gradient (float64: 6e-8) although their losses agree to 1e-7.
    """
    batch = _batch(n=4)
    plain, fast = _model(), _model().to(memory_format=torch.channels_last)
    cl_batch = {**batch, "image": batch["image"].contiguous(memory_format=torch.channels_last)}
    assert fast.trunk.enc[0].layers[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref, got = plain.eval()(batch["image"]), fast.eval()(cl_batch["image"])
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5)
    plain.train(), fast.train()
    torch.testing.assert_close(_step(fast, cl_batch), _step(plain, batch), rtol=1e-5, atol=1e-6)
    double = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    plain, fast = _model().double(), _model().double().to(memory_format=torch.channels_last)
    _step(plain, double)
    _step(fast, {**double, "image": double["image"].contiguous(memory_format=torch.channels_last)})
    g_ref, g_got = _grads(plain), _grads(fast)
    assert g_ref.keys() == g_got.keys() and len(g_ref) == len(list(plain.parameters()))
    flat_ref = torch.cat([g.flatten() for g in g_ref.values()])
    flat_got = torch.cat([g_got[n].flatten() for n in g_ref])
    assert (flat_got - flat_ref).norm() <= 1e-6 * flat_ref.norm()


def _bf16_loss_rtol(model: nn.Module) -> float:
    """How far a bf16-autocast loss may be from float32: 3 u sqrt(L), u = 2^-8 bf16's unit roundoff.

    Each of the L convolutions a task's output passes (the shared trunk's plus that task's share of
    the rest: attention gates, head) rounds its output to bf16, a relative error of at most u, and
    independent roundings add like a random walk: a relative error ~u sqrt(L) (1 sigma), bounded
    here at 3 sigma. BatchNorm and the losses run in float32 and add nothing at this order.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    trunk = sum(isinstance(m, nn.Conv2d) for m in model.trunk.modules())
    path = trunk + (len(convs) - trunk) / len(TASKS)
    return 3 * 2.0**-8 * path**0.5


def test_bf16_autocast_is_close_to_float32() -> None:
    """bf16 (8-bit mantissa) losses within 3 u sqrt(L) (``_bf16_loss_rtol``: 8 % for this model);
    gradients in float32 and pointing the same way.

    The gradients are compared with BatchNorm on its running statistics: with batch statistics,
    the gradient of every conv feeding a BatchNorm is the small difference of large per-channel
    sums, which bf16 rounding (0.4%) swamps at initialisation on random targets (cosine ~0.2
    whatever the batch or image size), while the loss and the trained trajectory stay close
    (see ``test_trainer_channels_last_and_bf16_runs``).
    """
    batch = _batch()
    plain, amp = _model(), _model()
    ref = _step(plain, batch)
    got = _step(amp, batch, torch.bfloat16)
    assert got.dtype == torch.float32  # losses are computed in float32 from bf16 activations
    torch.testing.assert_close(got, ref, rtol=_bf16_loss_rtol(plain), atol=1e-3)
    plain, amp = _model().eval(), _model().eval()
    _step(plain, batch)
    _step(amp, batch, torch.bfloat16)
    g_ref, g_got = _grads(plain), _grads(amp)
    assert g_ref.keys() == g_got.keys()
    for name in g_ref:
        assert g_got[name].dtype == torch.float32  # parameters and their gradients stay float32
    flat_ref = torch.cat([g.flatten() for g in g_ref.values()])
    flat_got = torch.cat([g_got[n].flatten() for n in g_ref])
    assert torch.nn.functional.cosine_similarity(flat_ref, flat_got, dim=0) > 0.95
    big = [n for n in g_ref if g_ref[n].norm() > 1e-3 * flat_ref.norm()]
    assert len(big) >= 5
    for name in big:
        cos = torch.nn.functional.cosine_similarity(g_ref[name].flatten(), g_got[name].flatten(), dim=0)
        assert cos > 0.6, name


class _Blocks(nn.Module):
    """The real models' blocks (conv-BN-ReLU, max-pool with indices, unpool, attention gate, head)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = ConvBNReLU(3, 8), ConvBNReLU(8, 8)
        self.gate, self.head = AttentionGate(16, 8), Head(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.a(x)
        p, idx = pool(u)
        v = unpool(self.b(p), idx, u)
        return self.head(self.gate(torch.cat([u, v], dim=1)) * v)


@pytest.mark.slow
def test_torch_compile_matches_eager() -> None:
    """Inductor-compiled forward and backward = eager (float32 rounding) on the models' blocks.

    The whole width-0.125 MTAN takes ~10 minutes to compile cold on a 2-core CPU (20 s with a warm
    inductor cache), so the full network's compiled step is checked by bench/train_step.py
    (``--compile``), which reports the compiled-vs-eager difference; here: its building blocks.
    """
    reason = compile_unavailable(torch.device("cpu"))
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    eager = _Blocks()
    compiled_src = _Blocks()
    compiled_src.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_src)
    x = torch.randn(2, 3, 16, 16)
    for _ in range(2):  # the second call runs the cached compiled code
        for m in (eager, compiled_src):
            m.zero_grad(set_to_none=True)
        y_ref = eager(x)
        y_ref.square().mean().backward()
        y = compiled(x)
        y.square().mean().backward()
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
        for (name, p), q in zip(eager.named_parameters(), compiled_src.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
        torch.testing.assert_close(compiled_src.a[1].running_mean, eager.a[1].running_mean)


# ----------------------------------------------------------------------------- loaders


def _batches(loader, epochs) -> list[list[torch.Tensor]]:
    out = []
    for e in epochs:
        dist.set_epoch(loader, e)
        out.append([b["image"][:, 0, 0, 0].clone() for b in loader])
    return out


def test_persistent_workers_keep_the_seeded_order(tiny_cfg) -> None:
    """One long-lived loader with 2 persistent workers gives the (seed, epoch) batches of 0 workers."""
    from mtlkit.registry import DATASETS

    cfg = tiny_cfg(dataset={"augment": True}, train={"num_workers": 2})
    builder = DATASETS.get(cfg.dataset.name)(cfg.dataset)
    ds = builder.dataset("train", train=True)
    loader = make_loader(builder, ds, cfg, train=True)
    assert loader.persistent_workers and loader.num_workers == 2
    cfg0 = tiny_cfg(dataset={"augment": True}, train={"num_workers": 0})
    fresh = [_batches(make_loader(builder, ds, cfg0, train=True, epoch=e), [e])[0] for e in (0, 1, 2)]
    kept = _batches(loader, [0, 1, 2])
    assert len(kept[0]) == len(ds) // cfg.train.batch_size
    for a, b in zip(fresh, kept):
        torch.testing.assert_close(torch.stack(b), torch.stack(a), rtol=0, atol=0)
    assert not torch.equal(torch.stack(kept[0]), torch.stack(kept[1]))  # epochs are shuffled differently


# ----------------------------------------------------------------------------- whole runs


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_trainer_channels_last_and_bf16_runs(tiny_cfg) -> None:
    """channels-last = plain run (to rounding); bf16 autocast run close to it (loose); all on CPU.

    One plain-SGD step: training amplifies float rounding (the two layouts' losses agree to 1e-7
    before the first update, ~1e-3 after the second), and Adam's sign-like first steps more so.
    """
    base = {"epochs": 1, "max_steps_per_epoch": 1, "device": "cpu", "amp": "off"}
    sgd = {"name": "sgd", "lr": 2e-3, "momentum": 0.0}
    plain = _history(train(tiny_cfg(train=base, optim=sgd)))[0]
    nhwc = _history(train(tiny_cfg(train={**base, "channels_last": True}, optim=sgd)))[0]
    bf16 = _history(train(tiny_cfg(train={**base, "amp": "bf16"}, optim=sgd)))[0]
    for key, value in plain["train"].items():
        assert nhwc["train"][key] == pytest.approx(value, rel=1e-4)
        assert bf16["train"][key] == pytest.approx(value, rel=3e-2)
    for key in ("loss/depth", "depth/abs_err", "loss/normal", "normal/mean", "loss/segmentation"):
        assert nhwc["val"][key] == pytest.approx(plain["val"][key], rel=1e-5)
        assert bf16["val"][key] == pytest.approx(plain["val"][key], rel=5e-2)


# ----------------------------------------------------------------------------- optimizer


def test_fused_adam_is_used_and_matches_the_default_implementation() -> None:
    """The trainer's Adam is torch's fused kernel on CPU; five steps on the same gradients equal for-each Adam.

    The gradients are fixed random tensors, not a training run: training amplifies rounding
    (see ``test_trainer_channels_last_and_bf16_runs``), the optimizer itself does not.
    """
    cfg = config_from_dict({"optim": {"name": "adam", "lr": 1e-2, "weight_decay": 1e-4}})
    fused_model, plain_model = _model(), _model()
    fused = make_optimizer(cfg, fused_model, Equal([t.name for t in TASKS]))
    assert all(g["fused"] for g in fused.param_groups)
    plain = torch.optim.Adam(plain_model.parameters(), lr=1e-2, weight_decay=1e-4, foreach=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        for p, q in zip(plain_model.parameters(), fused_model.parameters()):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        plain.step()
        fused.step()
    start, moved = _model().state_dict(), 0
    for (name, p), q in zip(plain_model.named_parameters(), fused_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=name)
        moved += int(not torch.equal(p, start[name]))
    assert moved == len(list(plain_model.parameters()))
