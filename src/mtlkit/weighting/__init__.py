"""Task-weighting and gradient-balancing methods, registered by name in WEIGHTINGS.

Loss level (``combine``): equal, uncertainty, dwa, rlw, famo, imtl_l, gls, stch, go4align.
Gradient level (``aggregate``): gradnorm, mgda, pcgrad, graddrop, gradvac, cagrad, imtl, imtl_g,
nash_mtl, aligned_mtl, upgrad, db_mtl, moco, sdmgrad, modo, fairgrad, config, dualproj, krum,
trimmed_mean, excess_mtl. Bilevel: auto_lambda (lambda-weighted losses into any other method, lambda
learned on a meta split of the training set; ``meta_split`` is the trainer's hook).
Each gradient method has a pure function of the K x D gradient matrix (returning the update and
the weights on the rows) and, where the method only needs inner products, a
``*_weights(gramian)`` function of the K x K Gramian.
"""

from mtlkit.weighting.aligned_mtl import AlignedMTL, aligned_mtl, aligned_mtl_weights, balance_transform
from mtlkit.weighting.auto_lambda import AutoLambda, MetaSplit, meta_gradient, meta_split
from mtlkit.weighting.base import Weighting
from mtlkit.weighting.cagrad import CAGrad, cagrad, cagrad_weights
from mtlkit.weighting.config import ConFIG, config, config_weights
from mtlkit.weighting.db_mtl import DBMTL, db_mtl
from mtlkit.weighting.dualproj import DualProj, dualproj, dualproj_weights
from mtlkit.weighting.dwa import DWA, dwa_weights
from mtlkit.weighting.equal import Equal
from mtlkit.weighting.excess_mtl import ExcessMTL, excess_mtl_update, excess_risks
from mtlkit.weighting.fairgrad import FairGrad, fairgrad, fairgrad_weights
from mtlkit.weighting.famo import FAMO, famo_logit_gradient, famo_weights
from mtlkit.weighting.gls import GLS, gls_loss, gls_weights
from mtlkit.weighting.go4align import GO4Align, go4align_weights, kmeans_1d
from mtlkit.weighting.graddrop import GradDrop, graddrop
from mtlkit.weighting.gradients import gramian, per_task_gradients, unflatten_like, write_gradients
from mtlkit.weighting.gradnorm import GradNorm, gradnorm_targets, gradnorm_weight_gradient
from mtlkit.weighting.gradvac import GradVac, gradvac, gradvac_weights
from mtlkit.weighting.imtl import IMTL, IMTLG, IMTLL, imtl_g, imtl_g_weights, imtl_l_loss
from mtlkit.weighting.krum import Krum, krum, krum_weights
from mtlkit.weighting.mgda import MGDA, gradient_normalizers, mgda, mgda_weights
from mtlkit.weighting.moco import MoCo, moco_step
from mtlkit.weighting.modo import MoDo, modo, modo_step
from mtlkit.weighting.nash_mtl import NashMTL, nash_mtl, nash_mtl_weights
from mtlkit.weighting.pcgrad import PCGrad, pcgrad, pcgrad_weights
from mtlkit.weighting.rlw import RLW, rlw_weights
from mtlkit.weighting.sdmgrad import SDMGrad, sdmgrad, sdmgrad_inner, sdmgrad_weights
from mtlkit.weighting.stch import STCH, stch_loss, stch_weights
from mtlkit.weighting.trimmed_mean import TrimmedMean, trimmed_mean
from mtlkit.weighting.uncertainty import Uncertainty, uncertainty_loss
from mtlkit.weighting.upgrad import UPGrad, upgrad, upgrad_weights

__all__ = [
    "Weighting", "Equal", "Uncertainty", "DWA", "RLW", "FAMO", "IMTLL",
    "GradNorm", "MGDA", "PCGrad", "GradDrop", "GradVac", "CAGrad", "IMTL", "IMTLG", "NashMTL",
    "AlignedMTL", "UPGrad", "DBMTL", "GLS", "STCH", "GO4Align", "ExcessMTL", "MoCo", "SDMGrad", "MoDo",
    "FairGrad", "ConFIG", "DualProj", "Krum", "TrimmedMean", "AutoLambda", "MetaSplit", "meta_gradient", "meta_split",
    "per_task_gradients", "write_gradients", "unflatten_like", "gramian",
    "uncertainty_loss", "dwa_weights", "rlw_weights", "famo_weights", "famo_logit_gradient", "imtl_l_loss",
    "gradnorm_targets", "gradnorm_weight_gradient", "mgda", "mgda_weights", "gradient_normalizers",
    "pcgrad", "pcgrad_weights", "graddrop", "gradvac", "gradvac_weights", "cagrad", "cagrad_weights",
    "imtl_g", "imtl_g_weights", "nash_mtl", "nash_mtl_weights", "aligned_mtl", "aligned_mtl_weights",
    "balance_transform", "upgrad", "upgrad_weights", "db_mtl",
    "gls_loss", "gls_weights", "stch_loss", "stch_weights", "go4align_weights", "kmeans_1d",
    "excess_risks", "excess_mtl_update", "moco_step", "sdmgrad", "sdmgrad_inner", "sdmgrad_weights",
    "modo", "modo_step", "fairgrad", "fairgrad_weights", "config", "config_weights", "dualproj",
    "dualproj_weights", "krum", "krum_weights", "trimmed_mean",
]
