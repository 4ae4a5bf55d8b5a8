"""Tasks: what a model is trained for (its loss) and what it predicts.

=====================  ==================================================
``representation``     :class:`RepresentationTask` (latent + reconstruction loss)
``reconstruction``     :class:`ReconstructionTask`
``classification``     :class:`ClassificationTask` (logits, cross-entropy)
``annotation``         :class:`AnnotationTask` (count-model ELBO + labelled cross-entropy)
=====================  ==================================================
"""

from .annotation import AnnotationTask, labelled_cross_entropy
from .base import Task, unwrap_model
from .classification import ClassificationTask
from .reconstruction import ReconstructionTask, reconstruction_loss
from .registry import get_task, list_tasks, register_task
from .representation import RepresentationTask

__all__ = [
    "AnnotationTask",
    "ClassificationTask",
    "ReconstructionTask",
    "RepresentationTask",
    "Task",
    "get_task",
    "labelled_cross_entropy",
    "list_tasks",
    "reconstruction_loss",
    "register_task",
    "unwrap_model",
]
