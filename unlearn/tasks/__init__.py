"""LightningModules: the base task, classification, segmentation and multi-task."""

from unlearn.tasks.base import BaseTask
from unlearn.tasks.classification import ClassificationTask
from unlearn.tasks.multitask import MultiTaskTask, SegmentationTask

__all__ = ["BaseTask", "ClassificationTask", "MultiTaskTask", "SegmentationTask"]
