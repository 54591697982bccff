"""Parameter counts and the MTAN paper's #P: size relative to one single-task network.

Definition (the paper's #P column): ``count(model) / count(one single-task SegNet of the same
width)``. A single-task SegNet's size depends slightly on its head (13 classes vs 1 depth channel:
780 parameters out of 25 M), so the reference here is the mean size of the K single-task SegNets
of the task set, ``count(single) / K``; ``single`` then has #P exactly K. (The official MTAN code
divides by the 13-class segmentation SegNet, 24,981,069 parameters with conv biases; the two
references differ by < 0.003 %.) Counts are taken on the meta device: no memory, no time.

Measured at width 1 (NYUv2: 13-class segmentation, depth, normals; CityScapes: 7-class
segmentation, depth; references 24,973,424 and 24,973,316), against the paper's NYUv2 column:

============  ===========  =====  =====  ==========  =====
arch          NYUv2        #P     paper  CityScapes  #P
============  ===========  =====  =====  ==========  =====
single         74,920,273  3.000  3       49,946,632  2.000
stan          114,510,673  4.585  4.56    76,340,232  3.057
split_wide     43,925,457  1.759  1.75    43,887,944  1.757
split_deep     50,793,425  2.034  2.0     50,755,912  2.032
dense         123,443,921  4.943  4.95    90,583,112  3.627
cross_stitch   74,920,354  3.000  ≈3      49,946,668  2.000
mtan           44,203,985  1.770  1.77    41,186,888  1.649
============  ===========  =====  =====  ==========  =====

On another backbone the reference is one single-task network of that backbone: for
``resnet50_dilated``, one ResNet-50 (output stride 8) + DeepLabV3 head, as the ResNet papers
report #P; the ``single`` architecture then has #P exactly K there too.

Conv layers followed by BatchNorm have no bias here (the official code's 7,168 such biases per
SegNet are redundant and get exactly zero gradient in training), which moves no ratio by 0.1 %.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import cache
from typing import Any

import torch

from mtlkit.errors import ConfigError
from mtlkit.models import build_model, model_class
from mtlkit.models.base import MultiTaskModel, count_parameters
from mtlkit.models.over_backbone import BackboneModel
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task, depth_task, normal_task, segmentation_task

#: the MTAN paper's architectures, in its table's order
PAPER_ARCHS = ("single", "stan", "split_wide", "split_deep", "dense", "cross_stitch", "mtan")
#: the shipped table whose ``params_ratio`` column is the paper's #P (``report/references/mtan_paper.tsv``)
PAPER_REFERENCE = "mtan_paper"
#: the task set that #P column was measured on (NYUv2: 13-class segmentation, depth, normals)
PAPER_TASKS = (segmentation_task(13), depth_task(), normal_task())


@cache
def paper_ratio(arch: str) -> float | None:
    """The MTAN paper's #P of ``arch`` on NYUv2, read from the shipped reference table; None if it has none.

    A row belongs to ``arch`` when its ``arch`` column is the class's ``label``, its registered
    name or one of its ``reference_names`` (case and punctuation ignored).
    """
    from mtlkit.report.document import slug
    from mtlkit.report.reference import load_reference

    if arch not in ARCHITECTURES:
        return None
    cls: type[MultiTaskModel] = ARCHITECTURES.get(arch)
    names = {slug(n) for n in (cls.label or arch, arch, *cls.reference_names)}
    ratios = {r.params_ratio for r in load_reference(PAPER_REFERENCE).rows if slug(r.arch) in names}
    return ratios.pop() if len(ratios) == 1 else None


def __getattr__(name: str) -> dict[str, float | None]:
    """``PAPER_RATIOS_NYUV2`` (0.2), deprecated: :func:`paper_ratio` reads the shipped reference table."""
    if name == "PAPER_RATIOS_NYUV2":
        warnings.warn(
            "mtlkit.models.params.PAPER_RATIOS_NYUV2 is deprecated; use paper_ratio(arch)",
            DeprecationWarning,
            stacklevel=2,
        )
        return {a: paper_ratio(a) for a in PAPER_ARCHS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _meta_model(
    arch: str, tasks: Sequence[Task], width: float, backbone: str | None = None, **options: Any
) -> MultiTaskModel:
    """``arch`` built on the meta device: shapes only, so width-1 networks cost nothing."""
    with torch.device("meta"):
        return build_model(arch, tasks, width, backbone=backbone, **options)


def count_model_parameters(
    arch: str, tasks: Sequence[Task], width: float = 1.0, *, backbone: str | None = None, **options: Any
) -> int:
    """Number of parameters of ``arch`` (on ``backbone``) for ``tasks`` at ``width``, without allocating them."""
    return count_parameters(_meta_model(arch, tasks, width, backbone, **options))


def single_task_parameters(
    arch: str, tasks: Sequence[Task], width: float = 1.0, *, backbone: str | None = None, **options: Any
) -> float | None:
    """The #P reference: mean size of one single-task network per task; None when undefined.

    SegNet-family architectures and those written over a backbone use one single-task network of
    that backbone (declared: ``MultiTaskModel.single_task_reference``); another family (e.g. the
    decathlon's Wide-ResNets) states its own reference through ``single_task_parameters``, which
    gets the model options (a variant with conv biases counts them in the reference too).
    """
    if not tasks:
        return None
    if arch not in ARCHITECTURES:
        return None
    cls = model_class(arch, backbone)
    own = cls.single_task_parameters(list(tasks), width, **options)
    if own is not None:
        return own
    reference = cls.single_task_reference or ("single" if issubclass(cls, BackboneModel) else None)
    if reference is None:
        return None
    return count_model_parameters(reference, tasks, width, backbone=backbone) / len(tasks)


def _resolve_tasks(tasks_or_dataset: Sequence[Task] | str, num_classes: int | None) -> tuple[list[Task], str | None]:
    """The task list given, or the tasks of the registered dataset named (with its class count)."""
    if isinstance(tasks_or_dataset, str):
        from mtlkit.config import config_from_dict
        from mtlkit.registry import DATASETS

        cls = DATASETS.get(tasks_or_dataset)
        data = {"dataset": {"name": tasks_or_dataset, "num_classes": num_classes}}  # validated: one-line errors
        builder = cls(config_from_dict(data, f"{tasks_or_dataset} with num_classes={num_classes}").dataset)
        return builder.tasks(), tasks_or_dataset
    if num_classes is not None:
        raise ConfigError("num_classes applies to a dataset name, not to an explicit task list")
    return list(tasks_or_dataset), None


def parameter_report(
    tasks_or_dataset: Sequence[Task] | str,
    arch: str,
    width: float = 1.0,
    *,
    num_classes: int | None = None,
    backbone: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Parameter count of ``arch`` on a task set (or a dataset's) and its #P ratio, as a plain dict.

    Keys: arch, backbone (None: the arch's own), dataset (name or None), tasks (names), width, params, shared_params,
    single_task_params (the reference, rounded), ratio (params / reference; None for archs that
    are not SegNet-based) and paper_ratio (the MTAN table's #P for NYUv2's three tasks, else None).
    """
    tasks, dataset = _resolve_tasks(tasks_or_dataset, num_classes)
    model = _meta_model(arch, tasks, width, backbone, **options)
    params = count_parameters(model)
    shared = sum(p.numel() for p in model.shared_parameters())
    reference = single_task_parameters(arch, tasks, width, backbone=backbone, **options)
    nyuv2_like = [(t.kind, t.channels) for t in tasks] == [(t.kind, t.channels) for t in PAPER_TASKS]
    return {
        "arch": arch,
        "backbone": backbone,
        "dataset": dataset,
        "tasks": [t.name for t in tasks],
        "width": float(width),
        "params": params,
        "shared_params": shared,
        "single_task_params": None if reference is None else round(reference),
        "ratio": None if reference is None else params / reference,
        "paper_ratio": paper_ratio(arch) if nyuv2_like and width == 1 and backbone in (None, "segnet") else None,
    }


def parameter_table(
    tasks_or_dataset: Sequence[Task] | str,
    width: float = 1.0,
    archs: Sequence[str] = PAPER_ARCHS,
    *,
    num_classes: int | None = None,
    backbone: str | None = None,
) -> list[dict[str, Any]]:
    """:func:`parameter_report` for each of ``archs`` (default: the paper's seven) on ``backbone``."""
    return [parameter_report(tasks_or_dataset, a, width, num_classes=num_classes, backbone=backbone) for a in archs]
