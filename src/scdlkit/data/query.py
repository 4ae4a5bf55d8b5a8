"""Apply a fitted preprocessing to new data (a query) for prediction: genes matched by name."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from mudata import MuData

from .._errors import MissingKeyError, format_names
from .counts import Covariates, check_counts, count_inputs
from .encoders import CategoryEncoder
from .fields import Fields, ModSpec, get_obs_column, resolve_fields
from .matrix import iter_row_blocks
from .prepare import validate_values
from .spec import Preprocessing
from .split_data import SplitData
from .transform import FeatureTransform

#: Marks a ``transform_adata`` argument that defaults to what ``prepare_data`` used.
_FROM_PREPROCESSING: Any = object()


def transform_from_preprocessing(
    preprocessing: Preprocessing, source_feature_names: pd.Index, *, source: str = "the data"
) -> FeatureTransform:
    """Rebuild the feature transform for a matrix whose columns are ``source_feature_names``.

    Features are matched by name: reordered as needed, extra columns ignored.

    Raises
    ------
    ValueError
        Model features missing from ``source_feature_names`` (lists up to 20 and the count).
    """
    expected = pd.Index(preprocessing["feature_names"])
    columns = pd.Index(source_feature_names).get_indexer(expected)
    missing = expected[columns < 0]
    if len(missing):
        msg = (
            f"{source} lacks {len(missing)} of the {len(expected)} features the model was trained on: "
            f"{format_names(missing)}. Add them (for example as zero columns) or train on the "
            "shared features."
        )
        raise ValueError(msg)
    mean, std = preprocessing.get("scale_mean"), preprocessing.get("scale_std")
    identity = columns.shape[0] == len(source_feature_names) and np.array_equal(
        columns, np.arange(columns.shape[0])
    )
    return FeatureTransform(
        len(source_feature_names),
        columns=None if identity else columns.astype(np.int64),
        normalize=bool(preprocessing["normalize"]),
        target_sum=float(preprocessing["target_sum"]),
        log1p=bool(preprocessing["log1p"]),
        mean=None if mean is None else np.asarray(mean, dtype=np.float32),
        std=None if std is None else np.asarray(std, dtype=np.float32),
        max_value=preprocessing.get("scale_max_value"),
    )


def zero_filled(fields: Fields, features: Sequence[str], min_overlap: float) -> Fields:
    """Return ``fields`` with exactly ``features`` as columns: missing ones filled with zeros (CSR).

    The present columns are read block by block (backed files too) into a
    sparse matrix of the query's cells and the model's features; a warning
    gives the number of missing features.

    Raises
    ------
    ValueError
        Fewer than ``min_overlap`` (a fraction) of ``features`` in the data.
    """
    expected = pd.Index([str(name) for name in features])
    columns = pd.Index(fields.feature_names).get_indexer(expected)
    present = np.flatnonzero(columns >= 0)
    overlap = present.shape[0] / max(expected.shape[0], 1)
    if overlap < min_overlap:
        msg = (
            f"{fields.source} has {present.shape[0]} of the {expected.shape[0]} genes of the "
            f"reference model ({overlap:.0%}), below min_gene_overlap={min_overlap:g}. Check that "
            "the gene names use the same convention (symbols vs Ensembl IDs) and the species, or "
            "lower min_gene_overlap if so few shared genes are expected."
        )
        raise ValueError(msg)
    missing = expected.shape[0] - present.shape[0]
    if missing:
        warnings.warn(
            f"{missing} of the {expected.shape[0]} reference genes are missing from "
            f"{fields.source}; they are filled with zeros.",
            UserWarning,
            stacklevel=3,
        )
    blocks = []
    for _, block in iter_row_blocks(fields.matrix):
        sub = sp.csr_matrix(block)[:, columns[present]]
        blocks.append(
            sp.csr_matrix(
                (sub.data, present[sub.indices], sub.indptr),
                shape=(sub.shape[0], expected.shape[0]),
            )
        )
    matrix = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, expected.shape[0]))
    return replace(fields, matrix=matrix, feature_names=expected)


def transform_adata(
    adata: AnnData | MuData,
    preprocessing: Preprocessing,
    *,
    label_encoder: CategoryEncoder | None = None,
    batch_encoder: CategoryEncoder | None = None,
    layer: str | None = _FROM_PREPROCESSING,
    mod: ModSpec = _FROM_PREPROCESSING,
    use_raw: bool = _FROM_PREPROCESSING,
) -> SplitData:
    """Apply a fitted preprocessing to new data (a query), for prediction.

    Parameters
    ----------
    adata
        AnnData or MuData with the cells to transform.
    preprocessing
        :attr:`PreparedData.preprocessing` (also stored in checkpoints). With
        ``min_feature_overlap`` in it (bundles of :func:`scdlkit.tl.map_query`),
        missing features are filled with zeros (see :func:`zero_filled`).
    label_encoder, batch_encoder
        Fitted encoders. When the encoder's column exists in ``.obs`` it is
        encoded (values the encoder never saw raise); when it does not, the
        result simply has no ``y``/``batch``.
    layer, mod, use_raw
        Where to read the matrix; default to what ``prepare_data`` used.

    Returns
    -------
    :class:`SplitData` over all cells in their original order (name ``"all"``).

    Raises
    ------
    ValueError
        Model features missing from the data (up to 20 listed, plus the count),
        unseen labels or batches, NaN/Inf or negative values where counts are needed.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> prepared = scdlkit.prepare_data(adata, label_key="bulk_labels")
    >>> query = adata[:, ::-1].copy()  # same genes, reversed order
    >>> data = transform_adata(query, prepared.preprocessing, label_encoder=prepared.label_encoder)
    >>> len(data), data.n_features
    (700, 765)
    """
    layer = preprocessing.get("layer") if layer is _FROM_PREPROCESSING else layer
    mod = preprocessing.get("mod") if mod is _FROM_PREPROCESSING else mod
    use_raw = bool(preprocessing.get("use_raw")) if use_raw is _FROM_PREPROCESSING else use_raw
    if isinstance(adata, AnnData) and mod is not None:
        mod = None  # trained on one modality of a MuData, applied to that modality's AnnData
    fields = resolve_fields(adata, layer=layer, mod=mod, use_raw=use_raw)
    min_overlap = preprocessing.get("min_feature_overlap")
    if min_overlap is not None:
        fields = zero_filled(fields, preprocessing["feature_names"], float(min_overlap))
    summary = validate_values(
        fields,
        normalize=bool(preprocessing["normalize"]),
        log1p=bool(preprocessing["log1p"]),
        use_hvg=False,
    )
    counts = bool(preprocessing.get("counts"))
    if counts:
        check_counts(summary, fields.source)
    transform = transform_from_preprocessing(
        preprocessing, fields.feature_names, source=fields.source
    )
    encoded = {}
    for role, encoder in (("y", label_encoder), ("batch", batch_encoder)):
        if encoder is None:
            continue
        try:
            column = get_obs_column(adata, encoder.key, fields.obs_names, mod=mod)
        except KeyError:
            continue
        encoded[role] = encoder.encode(column)
    covariates = {}
    if counts:
        covs = Covariates.from_dict(preprocessing.get("covariates"))
        covariates = count_inputs(adata, fields, covs, transform.columns, mod=mod)
        if batch_encoder is not None and "batch" not in encoded:
            msg = (
                f"The count model was trained with batch_key={batch_encoder.key!r}; the query has "
                f"no such .obs column. Add it (one of the trained batches: "
                f"{format_names(batch_encoder.categories)})."
            )
            raise MissingKeyError(msg)
    rows = np.arange(fields.matrix.shape[0])
    return SplitData(
        fields.matrix, rows, transform, name="all", obs_names=fields.obs_names,
        covariates=covariates, **encoded,
    )  # fmt: skip
