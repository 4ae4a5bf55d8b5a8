"""Evaluation: reconstruction, representation, classification and integration (scIB) metrics.

Metric maths only, on arrays: the maths is done by scikit-learn and scanpy;
these functions check the inputs and name the results. Each group of metrics
is also reachable on an AnnData through :func:`scdlkit.tl.evaluate`; the
workflows that train and score models (:class:`scdlkit.TaskRunner`,
:func:`scdlkit.compare_models`) sit above and call these functions.
"""

from ._calibration import calibrated_probabilities, expected_calibration_error, fit_temperature
from ._classification import classification_metrics
from ._integration import (
    BATCH_CORRECTION,
    BIO_CONSERVATION,
    SCIB_COLUMNS,
    integration_metrics,
    integration_table,
)
from ._integration_scores import (
    bras,
    clisi_knn,
    graph_connectivity,
    ilisi_knn,
    isolated_labels,
    kbet_per_label,
    nmi_ari_cluster_labels,
    pcr_comparison,
    silhouette_label,
)
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
    "BATCH_CORRECTION",
    "BIO_CONSERVATION",
    "COMPARISON_COLUMNS",
    "SCIB_COLUMNS",
    "batch_silhouette",
    "bras",
    "calibrated_probabilities",
    "classification_metrics",
    "clisi_knn",
    "cluster_labels",
    "comparison_rows",
    "expected_calibration_error",
    "fit_temperature",
    "graph_connectivity",
    "ilisi",
    "ilisi_knn",
    "integration_metrics",
    "integration_table",
    "isolated_labels",
    "kbet_per_label",
    "knn_accuracy",
    "label_silhouette",
    "metrics_table",
    "nmi_ari_cluster_labels",
    "pcr_comparison",
    "reconstruction_metrics",
    "representation_metrics",
    "silhouette_label",
]
