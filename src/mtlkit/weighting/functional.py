"""The pure functions of the weighting methods: tensors in, tensors out, no state, no network.

Each gradient-level method has a function of the K x D task-gradient matrix returning
``(update, weights)`` (``pcgrad(G)``, ``mgda(G)``, ...) and, where the method needs only inner
products, a ``*_weights(gramian)`` function of the K x K Gramian ``G G^T`` (:func:`gramian`);
the update is then ``weights @ G``. Loss-level methods have their formula as a function of the
losses (``uncertainty_loss``, ``dwa_weights``, ``stch_loss``, ...). The classes in
:mod:`mtlkit.weighting` call exactly these; each lives next to its class in the method's private
module (``mtlkit.weighting._pcgrad``, ...), and this module is where to import them from::

    from mtlkit.weighting import functional as F

    d, w = F.pcgrad(G)                 # G: K x D
    w = F.mgda_weights(F.gramian(G))   # K x K in, K weights out
"""

from mtlkit.weighting._aligned_mtl import aligned_mtl, aligned_mtl_weights, balance_transform
from mtlkit.weighting._auto_lambda import meta_gradient
from mtlkit.weighting._cagrad import cagrad, cagrad_weights
from mtlkit.weighting._config import config, config_weights
from mtlkit.weighting._db_mtl import db_mtl
from mtlkit.weighting._dualproj import dualproj, dualproj_weights
from mtlkit.weighting._dwa import dwa_weights
from mtlkit.weighting._excess_mtl import excess_mtl_update, excess_risks
from mtlkit.weighting._fairgrad import fairgrad, fairgrad_weights
from mtlkit.weighting._famo import famo_logit_gradient, famo_weights
from mtlkit.weighting._gls import gls_loss, gls_weights
from mtlkit.weighting._go4align import go4align_weights, kmeans_1d
from mtlkit.weighting._graddrop import graddrop
from mtlkit.weighting._gradnorm import gradnorm_targets, gradnorm_weight_gradient
from mtlkit.weighting._gradvac import gradvac, gradvac_weights
from mtlkit.weighting._imtl import imtl_g, imtl_g_weights, imtl_l_loss
from mtlkit.weighting._krum import krum, krum_weights
from mtlkit.weighting._mgda import gradient_normalizers, mgda, mgda_weights
from mtlkit.weighting._moco import moco_step
from mtlkit.weighting._modo import modo, modo_step
from mtlkit.weighting._nash_mtl import nash_mtl, nash_mtl_weights
from mtlkit.weighting._pcgrad import pcgrad, pcgrad_weights
from mtlkit.weighting._rlw import rlw_weights
from mtlkit.weighting._sdmgrad import sdmgrad, sdmgrad_inner, sdmgrad_weights
from mtlkit.weighting._stch import stch_loss, stch_weights
from mtlkit.weighting._trimmed_mean import trimmed_mean
from mtlkit.weighting._uncertainty import uncertainty_loss
from mtlkit.weighting._upgrad import upgrad, upgrad_weights
from mtlkit.weighting.gradients import gramian

__all__ = [
    # the Gramian every *_weights function takes
    "gramian",
    # loss level
    "uncertainty_loss",
    "dwa_weights",
    "rlw_weights",
    "famo_weights",
    "famo_logit_gradient",
    "imtl_l_loss",
    "gls_loss",
    "gls_weights",
    "stch_loss",
    "stch_weights",
    "go4align_weights",
    "kmeans_1d",
    # gradient level: update and weights from the K x D matrix, weights from the K x K Gramian
    "gradnorm_targets",
    "gradnorm_weight_gradient",
    "mgda",
    "mgda_weights",
    "gradient_normalizers",
    "pcgrad",
    "pcgrad_weights",
    "graddrop",
    "gradvac",
    "gradvac_weights",
    "cagrad",
    "cagrad_weights",
    "imtl_g",
    "imtl_g_weights",
    "nash_mtl",
    "nash_mtl_weights",
    "aligned_mtl",
    "aligned_mtl_weights",
    "balance_transform",
    "upgrad",
    "upgrad_weights",
    "db_mtl",
    "excess_risks",
    "excess_mtl_update",
    "moco_step",
    "sdmgrad",
    "sdmgrad_inner",
    "sdmgrad_weights",
    "modo",
    "modo_step",
    "fairgrad",
    "fairgrad_weights",
    "config",
    "config_weights",
    "dualproj",
    "dualproj_weights",
    "krum",
    "krum_weights",
    "trimmed_mean",
    # bilevel
    "meta_gradient",
]
