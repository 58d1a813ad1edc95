"""LightningModules: the base task and the classification task."""

from unlearn.tasks.base import BaseTask
from unlearn.tasks.classification import ClassificationTask

__all__ = ["BaseTask", "ClassificationTask"]
