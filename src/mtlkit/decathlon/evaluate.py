"""Decathlon evaluation with the shared BatchNorm statistics refitted to each domain before testing it.

With one domain per training batch, the running statistics of the shared BatchNorm layers are an
average dominated by the last batches, i.e. by whichever domains came last (the official final
BN, ``momentum=0.9``, is 90 % the very last batch). The MTAN authors' ``model_wrn_eval.py``
therefore passes, for each domain in turn, over that domain's training split in training mode
before predicting its test images, so every BatchNorm has that domain's statistics when it is
tested. Their pass also takes SGD steps (and a second epoch on the val split, which then serves
as training data for the test submission); here the pass is forward-only under ``no_grad``:
it refits exactly the statistics, changes no weight, and lets ``val`` stay an evaluation split.
Each domain starts from the checkpoint's statistics (restored afterwards), so the result does
not depend on the order of the domains. The passes use the training pipeline (augmentation,
``train.batch_size``, shuffled by the run's seed) and each BatchNorm's own momentum, as theirs do.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtlkit.config import Config
from mtlkit.data.base import DatasetBuilder
from mtlkit.decathlon.data import MultiDomainDataset, domain_batches
from mtlkit.errors import ConfigError
from mtlkit.tasks import Task
from mtlkit.train.evaluate import evaluate, move_batch


def _one_domain(dataset: MultiDomainDataset, domain: str) -> MultiDomainDataset:
    return MultiDomainDataset([(domain, dataset.parts[dataset.domains.index(domain)])])


def _loader(dataset: MultiDomainDataset, batch_size: int, shuffle: bool, cfg: Config) -> DataLoader:
    batches = domain_batches(dataset, batch_size, shuffle=shuffle, seed=cfg.seed, epoch=0)
    return DataLoader(dataset, batch_sampler=batches, num_workers=cfg.train.num_workers)


def bn_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Copies of every BatchNorm running statistic (and batch counter) of ``model``, by name."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for key, buf in module.named_buffers(recurse=False):
                out[f"{name}.{key}"] = buf.detach().clone()
    return out


def restore_bn_buffers(model: nn.Module, saved: dict[str, Tensor]) -> None:
    """Put back the statistics saved by :func:`bn_buffers`."""
    buffers = dict(model.named_buffers())
    for key, value in saved.items():
        buffers[key].copy_(value)


@torch.no_grad()
def refresh_bn(model: nn.Module, domain: str, loader: DataLoader, device: torch.device) -> int:
    """Training-mode forward passes of ``domain``'s branch over ``loader``; returns the batch count."""
    model.train()
    n = 0
    for batch in loader:
        model(move_batch(batch, device)["image"], [domain])
        n += 1
    model.eval()
    return n


def evaluate_refresh_bn(
    model: nn.Module,
    tasks: list[Task],
    builder: DatasetBuilder,
    cfg: Config,
    device: torch.device,
    split: str = "val",
) -> dict[str, float]:
    """Metrics of ``split``, each domain tested right after :func:`refresh_bn` on its training split."""
    if builder.batch_sampler is None:
        raise ConfigError(
            f"--refresh-bn: dataset {cfg.dataset.name!r} does not batch one domain at a time (decathlon datasets do)"
        )
    train_ds, eval_ds = builder.dataset("train", train=True), builder.dataset(split, train=False)
    if not isinstance(train_ds, MultiDomainDataset) or not isinstance(eval_ds, MultiDomainDataset):
        raise ConfigError(f"--refresh-bn: dataset {cfg.dataset.name!r} is not a multi-domain dataset")
    saved = bn_buffers(model)
    eval_bs = cfg.train.eval_batch_size or cfg.train.batch_size
    out: dict[str, float] = {}
    try:
        for task in tasks:
            restore_bn_buffers(model, saved)
            refresh_bn(
                model, task.name, _loader(_one_domain(train_ds, task.name), cfg.train.batch_size, True, cfg), device
            )
            out.update(evaluate(model, [task], _loader(_one_domain(eval_ds, task.name), eval_bs, False, cfg), device))
    finally:
        restore_bn_buffers(model, saved)
        model.eval()
    return out
