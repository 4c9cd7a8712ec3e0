"""Datasets held in memory as uint8 tensors (or image folders streamed from disk), and a loader that batches them.

- :func:`load_dataset` -- ``"fmnist"``, ``"cifar10"``, ``"svhn"`` (torchvision), ``"fer2013"``
  (Kaggle csv or image folders), ``"digits"`` (scikit-learn, offline) or ``"npz:PATH"``;
  returns :class:`DataSplits` (train / test / optional val :class:`ArrayDataset` + provenance).
- :class:`DeviceLoader` -- shuffles (seeded per epoch), augments and normalises on the device.

Modules: :mod:`~adact.data.arrays` (containers, stratified carving), :mod:`~adact.data.loader`,
:mod:`~adact.data.registry`, and one per source: :mod:`~adact.data.torchvision_sets`,
:mod:`~adact.data.fer2013`, :mod:`~adact.data.digits`, :mod:`~adact.data.npz`,
:mod:`~adact.data.imagefolder` (``"imagefolder:PATH"``, parsed with :class:`adact.dataspec.DatasetSpec`;
which files are its images: :mod:`~adact.data.listing`).
"""

from adact.data.arrays import ArrayDataset, DataSplits, stratified_split
from adact.data.fer2013 import EMOTIONS
from adact.data.imagefolder import FileSplit
from adact.data.loader import DeviceLoader
from adact.data.npz import NPZ_KEYS
from adact.data.registry import DATASETS, FER_SPLITS, load_dataset

__all__ = [
    "DATASETS",
    "EMOTIONS",
    "FER_SPLITS",
    "NPZ_KEYS",
    "ArrayDataset",
    "DataSplits",
    "DeviceLoader",
    "FileSplit",
    "load_dataset",
    "stratified_split",
]
