"""Which cells a workflow scores, and the metric inputs a trained model gives for them.

Shared by :meth:`TaskRunner.evaluate <scdlkit.TaskRunner.evaluate>` and
:func:`~scdlkit.compare_models` (models and baselines alike), so that every
workflow scores the same held-out cells the same way: the test split (else the
validation split), with the kNN classifier of
:func:`~scdlkit.evaluation.knn_accuracy` learning from the training cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..data import CategoryEncoder, PreparedData, SplitData
from ..evaluation._probabilities import predicted_codes, softmax
from ..train import Trainer


def held_out(prepared: PreparedData) -> tuple[SplitData, SplitData | None]:
    """Return the split to score (test, else validation, else training) and the kNN reference.

    The reference is the training split, or ``None`` when the training cells
    themselves are scored (then the kNN accuracy is cross-validated).

    Examples
    --------
    >>> import scdlkit
    >>> prepared = scdlkit.prepare_data(scdlkit.datasets.pbmc68k_reduced(), use_raw=True)
    >>> evaluated, reference = held_out(prepared)
    >>> evaluated.name, reference.name
    ('test', 'train')
    """
    for evaluated in (prepared.test, prepared.val):
        if evaluated is not None:
            return evaluated, prepared.train
    return prepared.train, None


def decoded(encoder: CategoryEncoder | None, codes: np.ndarray | None) -> np.ndarray | None:
    """Return the category names (strings) of encoded labels or batches; ``None`` without them."""
    if encoder is None or codes is None:
        return None
    return np.asarray(encoder.decode(codes), dtype=str)


def class_predictions(
    logits: np.ndarray, classes: Sequence[str]
) -> tuple[np.ndarray, pd.Categorical]:
    """Return probabilities (the one softmax of :mod:`scdlkit.evaluation`) and predicted class names.

    Examples
    --------
    >>> probabilities, labels = class_predictions(np.array([[0.0, 2.0]]), ["a", "b"])
    >>> list(labels)
    ['b']
    """
    probabilities = softmax(logits)
    codes, _ = predicted_codes(probabilities)
    return probabilities, pd.Categorical.from_codes(codes, list(classes))


def output_inputs(outputs: dict[str, np.ndarray], classes: Sequence[str] | None) -> dict[str, Any]:
    """Return the metric inputs of a model's outputs (with ``x``), named as ``output_metrics`` takes them.

    Logits become probabilities and predicted class names (:func:`class_predictions`).
    """
    inputs: dict[str, Any] = {
        "observed": outputs.get("x"),
        "reconstruction": outputs.get("reconstruction"),
        "latent": outputs.get("latent"),
    }
    if "logits" in outputs and classes is not None:
        probabilities, predictions = class_predictions(outputs["logits"], classes)
        inputs["probabilities"] = probabilities
        inputs["predictions"] = np.asarray(predictions, dtype=object)
        inputs["classes"] = list(classes)
    return inputs


def held_out_inputs(trainer: Trainer, prepared: PreparedData) -> tuple[dict[str, Any], str]:
    """Return the metric inputs of the held-out cells of ``prepared`` and a description of them.

    The model's outputs on the held-out split (see :func:`held_out`), its true
    labels and batches, and the training cells' latent and labels as the kNN
    reference.
    """
    evaluated, reference = held_out(prepared)
    outputs = trainer.predict_dataset(evaluated, include_inputs=True)
    encoder = prepared.label_encoder
    inputs = output_inputs(outputs, None if encoder is None else list(encoder.categories))
    inputs["labels"] = decoded(encoder, evaluated.y)
    inputs["batches"] = decoded(prepared.batch_encoder, evaluated.batch)
    if reference is not None and reference.y is not None and inputs["latent"] is not None:
        latent = trainer.predict_dataset(reference, include_inputs=False, outputs=("latent",))
        inputs["reference_latent"] = latent["latent"]
        inputs["reference_labels"] = decoded(encoder, reference.y)
    return inputs, f"{evaluated.name} split"
