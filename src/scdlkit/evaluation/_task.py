"""Which metrics a task gets, computed from a model's outputs in one call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._errors import format_names
from ._classification import classification_metrics
from ._integration import integration_metrics
from ._reconstruction import reconstruction_metrics
from ._representation import representation_metrics

#: Metric groups computed by default for each task.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "representation": ("reconstruction", "representation"),
    "reconstruction": ("reconstruction", "representation"),
    "classification": ("classification",),
    "annotation": ("classification", "representation"),
}
#: Every metric group; ``integration`` (scIB, slower) is computed only on request.
METRIC_GROUPS = ("reconstruction", "representation", "classification", "integration")


def metric_groups(task: str, groups: str | Sequence[str] | None) -> tuple[str, ...]:
    """Return the metric groups to compute: ``groups`` checked, or the task's defaults."""
    if groups is None:
        if task not in TASK_METRICS:
            msg = (
                f"No default metrics for task {task!r}; pass metrics= with any of "
                f"{format_names(METRIC_GROUPS)}."
            )
            raise ValueError(msg)
        return TASK_METRICS[task]
    requested = (groups,) if isinstance(groups, str) else tuple(groups)
    unknown = [name for name in requested if name not in METRIC_GROUPS]
    if unknown:
        msg = f"Unknown metrics {format_names(unknown)}; choose from {format_names(METRIC_GROUPS)}."
        raise ValueError(msg)
    return requested


def output_metrics(
    groups: Sequence[str],
    *,
    observed: Any = None,
    reconstruction: Any = None,
    latent: Any = None,
    labels: Any = None,
    batches: Any = None,
    reference_latent: Any = None,
    reference_labels: Any = None,
    predictions: Any = None,
    probabilities: Any = None,
    classes: Sequence[str] | None = None,
    unintegrated: Any = None,
    n_neighbors: int = 15,
    clustering: str = "leiden",
    resolution: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute the metric ``groups`` from a model's outputs and merge them into one dictionary.

    A group whose inputs are missing is an error, except that representation
    metrics without labels (and without batches) reduce to ``n_cells``. The
    ``integration`` group is stored as one sub-dictionary under
    ``"integration"`` (the names of :func:`~scdlkit.evaluation.integration_metrics`,
    some of which, such as ``silhouette_label``, mean something else in the
    representation group); it uses the scib-metrics ``Benchmarker`` settings,
    not ``n_neighbors``/``clustering``/``resolution``, and ``unintegrated`` for
    ``pcr_comparison``.
    """
    metrics: dict[str, Any] = {}
    if "reconstruction" in groups:
        if observed is None or reconstruction is None:
            msg = "Reconstruction metrics need the model input and its reconstruction."
            raise ValueError(msg)
        metrics.update(reconstruction_metrics(observed, reconstruction))
    if "representation" in groups:
        if latent is None:
            msg = "Representation metrics need a latent space."
            raise ValueError(msg)
        metrics.update(
            representation_metrics(
                latent,
                labels,
                batches=batches,
                reference_latent=reference_latent,
                reference_labels=reference_labels,
                n_neighbors=n_neighbors,
                clustering=clustering,
                resolution=resolution,
                seed=seed,
            )
        )
    if "classification" in groups:
        if labels is None or predictions is None:
            msg = "Classification metrics need true labels (label_key) and predictions."
            raise ValueError(msg)
        metrics.update(
            classification_metrics(
                labels, predictions, probabilities=probabilities, classes=classes
            )
        )
    if "integration" in groups:
        if latent is None or labels is None or batches is None:
            msg = "Integration metrics need a latent space, cell-type labels and batches."
            raise ValueError(msg)
        metrics["integration"] = integration_metrics(
            latent, labels, batches, unintegrated=unintegrated, seed=seed
        )
    return metrics


def finite_rows(*arrays: Any) -> np.ndarray:
    """Mask of the rows that are finite in every given (2-D, float) array."""
    mask = None
    for array in arrays:
        if array is None:
            continue
        values = np.asarray(array)
        finite = np.isfinite(values).all(axis=1) if values.ndim == 2 else np.isfinite(values)
        mask = finite if mask is None else mask & finite
    return mask
