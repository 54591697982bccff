"""Task-weighting and gradient-balancing methods, registered by name in WEIGHTINGS.

Loss level (``combine``): equal, uncertainty, dwa, rlw, famo, imtl_l, gls, stch, go4align.
Gradient level (``aggregate``): gradnorm, mgda, pcgrad, graddrop, gradvac, cagrad, imtl, imtl_g,
nash_mtl, aligned_mtl, upgrad, db_mtl, moco, sdmgrad, modo, fairgrad, config, dualproj, krum,
trimmed_mean, excess_mtl. Bilevel: auto_lambda (lambda-weighted losses into any other method, lambda
learned on a meta split of the training set; ``meta_split`` is the trainer's hook).

Layout: one private module per method (``_pcgrad.py``: its pure functions and its class), the
contract in :mod:`~mtlkit.weighting.base`, per-task gradients in :mod:`~mtlkit.weighting.gradients`,
and the pure functions gathered in :mod:`mtlkit.weighting.functional`: each gradient method's
function of the K x D gradient matrix (returning the update and the weights on the rows) and,
where the method only needs inner products, its ``*_weights(gramian)`` function of the K x K
Gramian. This package exports the classes and what a training loop needs; ``WEIGHTINGS.get(name)``
looks a class up by its config name.
"""

from typing import Any

from mtlkit.registry import WEIGHTINGS
from mtlkit.weighting import functional
from mtlkit.weighting._aligned_mtl import AlignedMTL
from mtlkit.weighting._auto_lambda import AutoLambda, MetaSplit, meta_split
from mtlkit.weighting._cagrad import CAGrad
from mtlkit.weighting._config import ConFIG
from mtlkit.weighting._db_mtl import DBMTL
from mtlkit.weighting._deprecated import install as _install_old_paths
from mtlkit.weighting._deprecated import package_getattr as _package_getattr
from mtlkit.weighting._dualproj import DualProj
from mtlkit.weighting._dwa import DWA
from mtlkit.weighting._equal import Equal
from mtlkit.weighting._excess_mtl import ExcessMTL
from mtlkit.weighting._fairgrad import FairGrad
from mtlkit.weighting._famo import FAMO
from mtlkit.weighting._gls import GLS
from mtlkit.weighting._go4align import GO4Align
from mtlkit.weighting._graddrop import GradDrop
from mtlkit.weighting._gradnorm import GradNorm
from mtlkit.weighting._gradvac import GradVac
from mtlkit.weighting._imtl import IMTL, IMTLG, IMTLL
from mtlkit.weighting._krum import Krum
from mtlkit.weighting._mgda import MGDA
from mtlkit.weighting._moco import MoCo
from mtlkit.weighting._modo import MoDo
from mtlkit.weighting._nash_mtl import NashMTL
from mtlkit.weighting._pcgrad import PCGrad
from mtlkit.weighting._rlw import RLW
from mtlkit.weighting._sdmgrad import SDMGrad
from mtlkit.weighting._stch import STCH
from mtlkit.weighting._trimmed_mean import TrimmedMean
from mtlkit.weighting._uncertainty import Uncertainty
from mtlkit.weighting._upgrad import UPGrad
from mtlkit.weighting.base import Weighting
from mtlkit.weighting.gradients import gramian, per_task_gradients, unflatten_like, write_gradients

__all__ = [
    # the contract, the registry, the pure functions
    "Weighting",
    "WEIGHTINGS",
    "functional",
    # loss level
    "Equal",
    "Uncertainty",
    "DWA",
    "RLW",
    "FAMO",
    "IMTLL",
    "GLS",
    "STCH",
    "GO4Align",
    # gradient level
    "GradNorm",
    "MGDA",
    "PCGrad",
    "GradDrop",
    "GradVac",
    "CAGrad",
    "IMTL",
    "IMTLG",
    "NashMTL",
    "AlignedMTL",
    "UPGrad",
    "DBMTL",
    "MoCo",
    "SDMGrad",
    "MoDo",
    "FairGrad",
    "ConFIG",
    "DualProj",
    "Krum",
    "TrimmedMean",
    "ExcessMTL",
    # bilevel
    "AutoLambda",
    "MetaSplit",
    "meta_split",
    # for a loop of one's own: the K x D matrix of per-task gradients, its Gramian, writing the update
    "per_task_gradients",
    "gramian",
    "write_gradients",
    "unflatten_like",
]

_install_old_paths()


def __getattr__(name: str) -> Any:
    """The old names of the namespace (pure functions, method modules), with a DeprecationWarning."""
    return _package_getattr(name)
