"""Data sets and LightningDataModules."""

from unlearn.data.base import BaseDataModule, DataNotFoundError, DatasetInfo
from unlearn.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from unlearn.data.classification import ImageClassificationDataModule
from unlearn.data.datasets import IndexedImageDataset, PoisonOverlay, TensorImageSource
from unlearn.data.digits import DigitsDataModule
from unlearn.data.fashion_mnist import FashionMNISTDataModule
from unlearn.data.folder import ImageFolderDataModule
from unlearn.data.mnist import MNISTDataModule
from unlearn.data.svhn import SVHNDataModule
from unlearn.data.taskonomy import TINY_SPLIT, TaskonomyDataModule, TaskonomyDataset

__all__ = [
    "TINY_SPLIT",
    "BaseDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DataNotFoundError",
    "DatasetInfo",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageClassificationDataModule",
    "ImageFolderDataModule",
    "IndexedImageDataset",
    "MNISTDataModule",
    "PoisonOverlay",
    "SVHNDataModule",
    "TaskonomyDataModule",
    "TaskonomyDataset",
    "TensorImageSource",
]
