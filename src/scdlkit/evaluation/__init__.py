"""Evaluation: reconstruction, representation and classification metrics, and model comparison.

The maths is done by scikit-learn and scanpy; these functions choose the
inputs (which cells, which reference) and name the results. Each group of
metrics is also reachable on an AnnData through :func:`scdlkit.tl.evaluate`.
"""

from ._classification import classification_metrics
from ._compare import compare_models
from ._reconstruction import reconstruction_metrics
from ._representation import (
    batch_silhouette,
    cluster_labels,
    ilisi,
    knn_accuracy,
    label_silhouette,
    representation_metrics,
)
from ._tables import metrics_table

__all__ = [
    "batch_silhouette",
    "classification_metrics",
    "cluster_labels",
    "compare_models",
    "ilisi",
    "knn_accuracy",
    "label_silhouette",
    "metrics_table",
    "reconstruction_metrics",
    "representation_metrics",
]
