"""Wide Residual Networks for the Visual Decathlon: one network per domain, and the shared MTAN.

Both are built on the ``wrn28`` backbone (:mod:`mtlkit.models.backbones.wrn`, MTAN section 4.2):
WRN-28 with widening factor 4, pre-activation basic blocks, channels ``[16, 16k, 32k, 64k]``
(times ``width``), four blocks per stage, every stage striding by 2 (72x72 inputs end at 9x9), a
final BN-ReLU, average pooling and one linear classifier per domain.

``model.options.variant`` says which conventions the networks follow:

* ``official`` (default): as the MTAN authors' ``visual_decathlon/model_wrn_mtan.py`` runs.
  Every convolution has a bias; PyTorch's default initialisation (their ``conv_init`` is never
  applied); the final shared BatchNorm has ``momentum=0.9`` (PyTorch convention: the running
  statistics are 90 % the last batch); the last map is pooled by ``avg_pool2d(x, 8)``, which at
  their 72x72 input (9x9 map) averages the top-left 8x8 only, so inputs must end at 8..15 pixels
  (57..120 pixels per side). With equal weights the outputs equal theirs.
* ``clean``: no conv biases (those before a BN are redundant, the others barely matter), He-normal
  convolutions and zero classifier biases, BN momentum 0.1 everywhere, global average pooling of
  the whole map. Choose it for inputs of any size (the CPU configs use 32x32), for statistics that
  do not hinge on the last batch's domain (with one domain per batch, ``momentum=0.9`` leaves the
  final BN fitted to whichever domain came last, see ``decathlon.evaluate.refresh_bn``), and for a
  translation-symmetric pooling.

* ``wrn``: an independent WRN per domain (the "scratch/finetune" baseline shape, #P = number of
  domains). Nothing is shared; ``encode`` passes the image through.
* ``wrn_mtan``: MTAN over ``wrn28`` (:class:`~mtlkit.models.mtan.MTAN`, the
  same model as ``model.arch: mtan`` with ``model.backbone: wrn28``, plus the options ``depth``,
  ``widen_factor`` and ``variant``): the four feature levels (after the stem and after each stage)
  feed per-domain soft-attention gates (two 1x1 conv-BN layers, ReLU then sigmoid); level ``j``'s
  mask reads the shared features concatenated with the domain's previous attended output,
  multiplies the shared features, and goes through a shared 3x3 conv-BN-ReLU block (max-pooled
  between levels). Only the domains asked for are computed. Under ``model.recording()`` the masks
  are stored as ``attention/<domain>/<level>``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.models.backbones.wrn import (  # noqa: F401  (re-exported: the decathlon's names)
    OFFICIAL_FINAL_BN_MOMENTUM,
    OFFICIAL_POOL,
    VARIANTS,
    WideBasic,
    WideResNet,
    check_variant,
    pool_features,
    wrn_channels,
)
from mtlkit.models.base import MultiTaskModel
from mtlkit.models.mtan import MTAN
from mtlkit.models.mtan import WRN_LEVELS as LEVELS  # noqa: F401  (re-exported)
from mtlkit.registry import ARCHITECTURES
from mtlkit.tasks import Task


def WRNBackbone(width: float = 1.0, depth: int = 28, widen_factor: int = 4, variant: str = "official") -> WideResNet:  # noqa: N802
    """The ``wrn28`` backbone, WRN-``depth``-``widen_factor`` at ``width`` (the decathlon's argument order)."""
    return WideResNet(width, 3, depth, widen_factor, variant)


def _check_tasks(tasks: list[Task]) -> None:
    """The heads predict one label per image: a per-pixel (dense) task is refused."""
    for t in tasks:
        if t.dense:
            raise ConfigError(f"WRN decathlon models classify images; task {t.name!r} is {t.kind}")


def wrn_single_task_parameters(
    tasks: list[Task],
    width: float = 1.0,
    depth: int = 28,
    widen_factor: int = 4,
    variant: str = "official",
    **_: object,
) -> float:
    """Parameters of one single-domain WRN (same variant) with the mean classifier size of ``tasks``."""
    with torch.device("meta"):
        backbone = sum(p.numel() for p in WRNBackbone(width, depth, widen_factor, variant).parameters())
    c = wrn_channels(width, widen_factor)[3]
    mean_head = sum(c * t.channels + t.channels for t in tasks) / len(tasks)
    return backbone + mean_head


class WRNClassifier(nn.Module):
    """One whole single-domain network: WRN backbone, then its pooled linear classifier."""

    def __init__(
        self, num_classes: int, width: float = 1.0, depth: int = 28, widen_factor: int = 4, variant: str = "official"
    ) -> None:
        super().__init__()
        self.variant = variant
        self.backbone = WRNBackbone(width, depth, widen_factor, variant)
        self.head = self.backbone.make_head(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


@ARCHITECTURES.register("wrn")
class WRN(MultiTaskModel):
    """One independent WRN-28-4 per domain (the decathlon's scratch/finetune baseline shape)."""

    supports_representation = False

    def __init__(
        self, tasks: list[Task], width: float = 1.0, depth: int = 28, widen_factor: int = 4, variant: str = "official"
    ) -> None:
        super().__init__(tasks)
        _check_tasks(tasks)
        check_variant(variant)
        self.width, self.depth, self.widen_factor, self.variant = width, depth, widen_factor, variant
        self.task_names = [t.name for t in tasks]
        self.nets = nn.ModuleDict(
            {t.name: WRNClassifier(t.channels, width, depth, widen_factor, variant) for t in tasks}
        )

    def encode(self, x: Tensor) -> list[Tensor]:
        """Nothing is shared: the 'representation' is the image itself."""
        return [x]

    def decode(self, reps: list[Tensor], tasks: list[str] | None = None) -> dict[str, Tensor]:
        """Logits of each requested domain from its own network."""
        if tasks is None:
            tasks = list(self.task_names)
        unknown = [t for t in tasks if t not in self.task_names]
        if unknown:
            raise KeyError(f"unknown task(s) {unknown}; the model has {self.task_names}")
        return {name: self.nets[name](reps[0]) for name in tasks}

    def shared_parameters(self) -> list[nn.Parameter]:
        """None: every parameter belongs to one domain."""
        return []

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters of the linear classifiers (the decathlon's #P leaves them out)."""
        return [p for net in self.classifiers() for p in net.head.parameters()]

    def classifiers(self) -> list[WRNClassifier]:
        """The domains' networks, in task order."""
        return [net for net in self.nets.values() if isinstance(net, WRNClassifier)]

    single_task_parameters = staticmethod(wrn_single_task_parameters)


@ARCHITECTURES.register("wrn_mtan")
class WRNMTAN(MTAN):
    """Shared WRN-28-4 with per-domain attention at the stem and every residual stage (MTAN 4.2)."""

    arch_name = "wrn_mtan"
    default_backbone = "wrn28"

    def __init__(
        self,
        tasks: list[Task],
        width: float = 1.0,
        depth: int = 28,
        widen_factor: int = 4,
        variant: str = "official",
        *,
        backbone: str = "wrn28",
        in_channels: int = 3,
        pretrained: str = "none",
    ) -> None:
        if backbone != "wrn28":
            raise ConfigError(
                f"model.backbone {backbone!r}: model.arch 'wrn_mtan' is built on wrn28 only "
                f"(use model.arch: mtan for other backbones)"
            )
        _check_tasks(tasks)
        check_variant(variant)
        self._wrn_options = (width, in_channels, depth, widen_factor, variant)  # read by new_backbone
        super().__init__(tasks, width, backbone=backbone, in_channels=in_channels, pretrained=pretrained)
        self.width, self.depth, self.widen_factor, self.variant = width, depth, widen_factor, variant
        self.task_names = [t.name for t in tasks]

    def new_backbone(self) -> WideResNet:
        """``wrn28`` with this model's depth, widening factor and variant."""
        width, in_channels, depth, widen_factor, variant = self._wrn_options
        return WideResNet(float(width), in_channels, depth, widen_factor, variant)

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters of the linear classifiers (the decathlon's #P leaves them out)."""
        return list(self.heads.parameters())

    single_task_parameters = staticmethod(wrn_single_task_parameters)
