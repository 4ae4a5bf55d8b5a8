"""What an annotation run writes into AnnData: predictions, keys and the staged write.

``key_added`` is a prefix here as on every scdlkit writer: the prediction goes
to ``.obs[f"{key}_prediction"]``, the confidence to ``.obs[f"{key}_confidence"]``,
the probabilities to ``.obsm[f"{key}_probabilities"]``, the adapted embedding to
``.obsm[f"X_{key}"]`` and the record to ``.uns[key]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scanpy import logging as logg

from ..data.fields import ModSpec
from ..data.handler import DataHandler
from ..data.record import align_rows, check_key_added, latent_key

#: Default ``key_added`` of :meth:`AnnotationRunner.annotate_adata`.
DEFAULT_ANNOTATION_KEY = "scgpt_annotation"


class AnnotationPrediction(NamedTuple):
    """Predictions of :meth:`AnnotationRunner.predict` (unpacks as a 4-tuple).

    Attributes
    ----------
    label_codes
        int64 class code per cell.
    labels
        Class names, categorical with the training categories.
    probabilities
        float32 ``(n_cells, n_classes)`` softmax probabilities.
    latent
        float32 ``(n_cells, embsize)`` L2-normalised ``<cls>`` embeddings of the adapted encoder.
    """

    label_codes: np.ndarray
    labels: pd.Categorical
    probabilities: np.ndarray
    latent: np.ndarray


@dataclass(frozen=True)
class AnnotationKeys:
    """Where :meth:`AnnotationRunner.annotate_adata` writes each result.

    Examples
    --------
    >>> annotation_keys("celltype")
    AnnotationKeys(key='celltype', prediction='celltype_prediction', confidence='celltype_confidence', probabilities='celltype_probabilities', latent='X_celltype')
    """

    key: str
    prediction: str
    confidence: str
    probabilities: str
    latent: str


def annotation_keys(
    key_added: str, *, obs_key: str | None = None, embedding_key: str | None = None
) -> AnnotationKeys:
    """Resolve the keys of an annotation from ``key_added`` (and the deprecated full-key options).

    Parameters
    ----------
    key_added
        Prefix of every key.
    obs_key
        Deprecated: the prediction column itself, also the prefix of the other
        keys (as before ``key_added``). Its old layout is kept, with a ``FutureWarning``.
    embedding_key
        Deprecated: the full ``.obsm`` key of the embedding, kept with a ``FutureWarning``.

    Raises
    ------
    ValueError
        A key that is empty or contains ``/``.
    """
    key = check_key_added(key_added)
    prediction = f"{key}_prediction"
    if obs_key is not None:
        warnings.warn(
            "annotate_adata: obs_key= is deprecated; pass key_added= (a prefix: the prediction "
            f"goes to .obs['{{key_added}}_prediction']). Writing the prediction to .obs[{obs_key!r}].",
            FutureWarning,
            stacklevel=3,
        )
        key = check_key_added(obs_key)
        prediction = key
    latent = latent_key(key)
    if embedding_key is not None:
        warnings.warn(
            "annotate_adata: embedding_key= is deprecated; the embedding goes to "
            f".obsm['X_{{key_added}}']. Writing it to .obsm[{embedding_key!r}].",
            FutureWarning,
            stacklevel=3,
        )
        latent = check_key_added(embedding_key)
    return AnnotationKeys(
        key=key,
        prediction=prediction,
        confidence=f"{key}_confidence",
        probabilities=f"{key}_probabilities",
        latent=latent,
    )


def write_annotation(
    adata: AnnData | MuData,
    prediction: AnnotationPrediction,
    *,
    rows: pd.Index,
    keys: AnnotationKeys,
    record: Mapping[str, Any],
    mod: ModSpec = None,
) -> None:
    """Write a prediction into ``adata`` in one staged commit (nothing is written if a step fails).

    Parameters
    ----------
    adata
        AnnData or MuData (results go into modality ``mod`` of a MuData).
    prediction
        The prediction of the cells named ``rows``.
    rows
        Cell names of the prediction's rows; other cells of the target get NaN.
    keys
        Where each result goes (:func:`annotation_keys`).
    record
        The ``.uns[keys.key]`` record.
    mod
        The modality of a MuData.
    """
    handler = DataHandler(adata, mod)
    target = handler.target.obs_names
    existing = handler.clear_previous(keys.key)
    if keys.key in handler.target.uns:
        existing.append(f"uns[{keys.key!r}]")
    confidence = prediction.probabilities.max(axis=1).astype(np.float64)
    handler.stage("obs", keys.prediction, pd.Series(prediction.labels, index=rows))
    handler.stage("obs", keys.confidence, pd.Series(confidence, index=rows))
    handler.stage("obsm", keys.probabilities, align_rows(prediction.probabilities, rows, target))
    handler.stage("obsm", keys.latent, align_rows(prediction.latent, rows, target))
    handler.stage("uns", keys.key, dict(record))
    handler.log_overwrite(keys.key, existing)
    handler.commit()
    logg.info(
        f"    added {keys.prediction!r}, {keys.confidence!r} (obs), {keys.probabilities!r}, "
        f"{keys.latent!r} (obsm), {keys.key!r} (uns)"
    )
