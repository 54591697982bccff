"""Datasets: the builder interface, the shared ``.npy`` layout loader and the registered datasets.

Importing this package registers ``scenes``, ``nyuv2``, ``cityscapes`` and ``folder`` in ``DATASETS``.
"""

from mtlkit.data import cityscapes, folder, nyuv2, scenes_dataset  # noqa: F401  (registration)
from mtlkit.data.augment import DenseAugment
from mtlkit.data.base import DatasetBuilder
from mtlkit.data.npy import NpyBuilder, NpyDenseDataset

__all__ = ["DatasetBuilder", "DenseAugment", "NpyBuilder", "NpyDenseDataset"]
