"""Evaluation: reconstruction, representation and classification metrics.

Metric maths only, on arrays: the maths is done by scikit-learn and scanpy;
these functions check the inputs and name the results. Each group of metrics
is also reachable on an AnnData through :func:`scdlkit.tl.evaluate`; the
workflows that train and score models (:class:`scdlkit.TaskRunner`,
:func:`scdlkit.compare_models`) sit above and call these functions.
"""

from ._classification import classification_metrics
from ._reconstruction import reconstruction_metrics
from ._representation import (
    batch_silhouette,
    cluster_labels,
    ilisi,
    knn_accuracy,
    label_silhouette,
    representation_metrics,
)
from ._tables import COMPARISON_COLUMNS, comparison_rows, metrics_table

__all__ = [
    "COMPARISON_COLUMNS",
    "batch_silhouette",
    "classification_metrics",
    "cluster_labels",
    "comparison_rows",
    "ilisi",
    "knn_accuracy",
    "label_silhouette",
    "metrics_table",
    "reconstruction_metrics",
    "representation_metrics",
]
