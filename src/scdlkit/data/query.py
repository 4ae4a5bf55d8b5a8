"""Apply a fitted preprocessing to new data (a query) for prediction: genes matched by name."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from .._errors import MissingKeyError, format_names
from .counts import Covariates, check_counts, count_inputs
from .encoders import CategoryEncoder
from .fields import ModSpec, get_obs_column, resolve_fields
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
        :attr:`PreparedData.preprocessing` (also stored in checkpoints).
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
