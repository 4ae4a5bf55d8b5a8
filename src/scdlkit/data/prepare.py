"""``prepare_data`` and ``transform_adata``: from AnnData/MuData to model-ready splits."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from mudata import MuData

from .._defaults import DEFAULT_SEED
from .._errors import format_names
from .._threads import keep_torch_threads
from .counts import (
    Covariates,
    check_counts,
    check_nonzero_cells,
    check_transforms,
    count_inputs,
    select_hvg_counts,
)
from .encoders import CategoryEncoder
from .fields import Fields, ModSpec, resolve_fields
from .matrix import SCAN_BLOCK_ROWS, MatrixSummary, summarize_matrix
from .spec import DataSpec, Preprocessing, resolve_seed
from .split_data import SplitData
from .splits import (
    SPLIT_NAMES,
    check_split_sizes,
    draw_split,
    parse_split_column,
    split_categorical,
)
from .transform import FeatureTransform, fit_scaling, iter_selected_rows


@dataclass
class PreparedData:
    """The result of :func:`prepare_data`.

    Attributes
    ----------
    train, val, test
        The splits (``val``/``test`` are ``None`` when their size was 0 or the
        ``split_key`` column has no such cells).
    input_dim
        Number of model input features.
    feature_names
        Names of the model input features, in order.
    label_encoder, batch_encoder
        Encoders of ``label_key``/``batch_key`` (``None`` when not given).
    preprocessing
        Everything needed to redo the transform on new data, as plain JSON-able
        types; pass it to :func:`transform_adata`.
    split
        Per-cell split (``train``/``val``/``test``) in the original cell order.
    obs_names
        Cell names in the original order.
    source
        Where the matrix was read from, e.g. ``"adata.layers['counts']"``.
    spec
        The :class:`~scdlkit.data.DataSpec` the data was prepared with.
    seed
        Seed of the split.
    raw_counts
        Whether the model input is untransformed integer counts (no normalize/log1p).
    covariates
        The fitted count-model covariates (empty unless ``counts=True``).
    """

    train: SplitData
    val: SplitData | None
    test: SplitData | None
    input_dim: int
    feature_names: list[str]
    label_encoder: CategoryEncoder | None
    batch_encoder: CategoryEncoder | None
    preprocessing: Preprocessing
    split: pd.Categorical
    obs_names: pd.Index
    source: str = ""
    spec: DataSpec = field(default_factory=DataSpec)
    seed: int = DEFAULT_SEED
    raw_counts: bool = False
    covariates: Covariates = field(default_factory=Covariates)
    splits: dict[str, SplitData] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        candidates = {"train": self.train, "val": self.val, "test": self.test}
        self.splits = {name: split for name, split in candidates.items() if split is not None}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(split)}" for name, split in self.splits.items())
        return f"PreparedData({self.source}: {self.input_dim} features; {sizes})"

    def bundle_fields(self) -> dict[str, Any]:
        """Return what a checkpoint bundle stores about the data, so new data can be prepared alike."""
        return {
            "feature_names": list(self.feature_names),
            "preprocessing": self.preprocessing,
            "data_spec": self.spec.to_dict(),
            "label_encoder": None if self.label_encoder is None else self.label_encoder.to_dict(),
            "batch_encoder": None if self.batch_encoder is None else self.batch_encoder.to_dict(),
        }


def feature_columns(fields: Fields, features: Sequence[str]) -> np.ndarray:
    """Source columns of ``features`` (by name).

    Raises
    ------
    ValueError
        Features missing from the data.
    """
    wanted = pd.Index([str(name) for name in features])
    columns = pd.Index(fields.feature_names).get_indexer(wanted)
    if wanted.empty:
        msg = "features= is empty; pass the feature names to use (or leave it out)."
        raise ValueError(msg)
    if (columns < 0).any():
        missing = wanted[columns < 0]
        msg = (
            f"{fields.source} lacks {len(missing)} of the {len(wanted)} requested features: "
            f"{format_names(missing)}."
        )
        raise ValueError(msg)
    return columns.astype(np.int64)


def raw_counts_message(source: str) -> str:
    """Return the advice given when raw counts meet a squared-error model (``pp.inspect``, ``tl.fit``)."""
    return (
        f"{source} looks like raw counts, but normalize=False and log1p=False; models with "
        "a squared-error loss train poorly on raw counts. Pass normalize=True, log1p=True."
    )


def validate_values(
    fields: Fields, *, normalize: bool, log1p: bool, use_hvg: bool
) -> MatrixSummary:
    """Refuse NaN/Inf and negative values where counts are needed; return the matrix summary."""
    summary = summarize_matrix(fields.matrix)
    if summary.n_nonfinite:
        msg = (
            f"{fields.source} has {summary.n_nonfinite} NaN or infinite values (first in cell "
            f"{fields.obs_names[summary.first_nonfinite_row]!r}, row {summary.first_nonfinite_row}). "
            "Remove or impute them before training."
        )
        raise ValueError(msg)
    if summary.min_value < 0 and (normalize or log1p):
        steps = " and ".join(s for s, on in (("normalize", normalize), ("log1p", log1p)) if on)
        msg = (
            f"{fields.source} has negative values (minimum {summary.min_value:g}), but {steps} "
            "need non-negative counts. Use a layer holding counts (layer=...) or turn "
            f"{steps} off."
        )
        raise ValueError(msg)
    if use_hvg and summary.is_integer and not log1p:
        warnings.warn(
            f"{fields.source} looks like raw counts, but highly variable genes are ranked on "
            "log-normalised values. Pass normalize=True, log1p=True.",
            UserWarning,
            stacklevel=3,
        )
    return summary


def _select_hvg(
    base: FeatureTransform,
    fields: Fields,
    train_rows: np.ndarray,
    batches: pd.Series | None,
    n_top_genes: int,
) -> np.ndarray:
    """Source columns of the highly variable genes, ranked on the training cells only."""
    import scipy.sparse as sp

    n_features = base.n_source_features
    if n_top_genes >= n_features:
        warnings.warn(
            f"n_top_genes={n_top_genes} is not below the {n_features} features available; "
            "keeping all of them.",
            UserWarning,
            stacklevel=3,
        )
        return np.arange(n_features)
    rows = np.sort(train_rows)
    blocks = [
        base.sparse_rows(block, local)
        for _, block, local in iter_selected_rows(fields.matrix, rows, block_rows=SCAN_BLOCK_ROWS)
    ]
    training = AnnData(sp.vstack(blocks, format="csr"))
    training.var_names = fields.feature_names
    hvg_batch_key = None
    if batches is not None:
        # categorical: scanpy reads .cat.categories (a string column stays one when all unique)
        training.obs["batch"] = pd.Categorical(batches.iloc[rows].astype(str).to_numpy())
        hvg_batch_key = "batch"
    try:
        with keep_torch_threads():
            sc.pp.highly_variable_genes(
                training,
                n_top_genes=n_top_genes,
                flavor="seurat",
                batch_key=hvg_batch_key,
                subset=False,
            )
    except (IndexError, ValueError) as err:
        # scanpy fails obscurely when no gene varies (IndexError) or when expm1 of
        # un-logged counts overflows to inf (ValueError from pandas.cut).
        msg = (
            f"Could not rank highly variable genes on the training cells of {fields.source} "
            f"({type(err).__name__}: {err}). flavor='seurat' needs log-normalised values in which "
            "some genes vary (within every batch when batch_key is given): pass normalize=True, "
            "log1p=True, or use_hvg=False."
        )
        raise ValueError(msg) from err
    return np.flatnonzero(training.var["highly_variable"].to_numpy())


def _assign_split(
    fields: Fields,
    labels: np.ndarray | None,
    batches: np.ndarray | None,
    *,
    split_key: str | None,
    val_size: float,
    test_size: float,
    batch_aware_split: bool,
    stratify: bool,
    seed: int,
) -> np.ndarray:
    if split_key is not None:
        assignment = parse_split_column(fields.split, key=split_key)
        if not np.any(assignment == "train"):
            msg = f"split_key {split_key!r} marks no cell as 'train'; there is nothing to train on."
            raise ValueError(msg)
        return assignment
    return draw_split(
        fields.matrix.shape[0],
        labels=labels,
        batches=batches,
        val_size=val_size,
        test_size=test_size,
        stratify=stratify,
        batch_aware=batch_aware_split,
        seed=seed,
    )


def prepare_data(
    adata: AnnData | MuData,
    *,
    layer: str | None = None,
    mod: ModSpec = None,
    use_raw: bool = False,
    use_hvg: bool = False,
    n_top_genes: int = 2000,
    normalize: bool = False,
    target_sum: float = 1e4,
    log1p: bool = False,
    scale: bool = False,
    scale_max_value: float | None = 10.0,
    label_key: str | None = None,
    batch_key: str | None = None,
    split_key: str | None = None,
    unlabeled_category: str | None = None,
    val_size: float = 0.15,
    test_size: float = 0.15,
    batch_aware_split: bool = False,
    stratify: bool = True,
    counts: bool = False,
    categorical_covariate_keys: Sequence[str] = (),
    continuous_covariate_keys: Sequence[str] = (),
    seed: int = DEFAULT_SEED,
    random_state: int | None = None,
    features: Sequence[str] | None = None,
) -> PreparedData:
    """Build train/validation/test splits and the feature transform from an AnnData or MuData.

    The matrix is read where it lives (dense, CSR or backed) and is never copied
    or densified whole: normalisation, log1p and scaling are applied to each
    minibatch as it is loaded. Data-dependent steps (highly variable genes,
    scaling statistics) are fitted on the training split only. The input object
    is never modified.

    Parameters
    ----------
    adata
        AnnData or MuData with cells as rows.
    layer
        Layer to read; ``None`` reads ``.X``.
    mod
        MuData modality (required for a MuData), or a list of modalities to use side by side.
    use_raw
        Read ``.raw.X`` instead of ``.X``.
    use_hvg
        Keep only the ``n_top_genes`` highly variable genes, ranked with
        :func:`scanpy.pp.highly_variable_genes` (``flavor="seurat"``, per batch
        when ``batch_key`` is given) on the training cells after normalize/log1p.
    n_top_genes
        Number of highly variable genes to keep with ``use_hvg=True``.
    normalize
        Scale each cell to ``target_sum`` total counts (like :func:`scanpy.pp.normalize_total`).
    target_sum
        Total counts per cell after normalisation.
    log1p
        Apply ``log(1 + x)`` (like :func:`scanpy.pp.log1p`).
    scale
        Z-score every feature with the training split's mean and standard deviation.
    scale_max_value
        Clip z-scores to this absolute value (``None`` keeps them as they are).
    label_key
        ``.obs`` column with cell labels (classification target; also used to stratify).
    unlabeled_category
        Semi-supervised labels: the value of ``label_key`` (such as
        ``"Unknown"``) that marks unlabelled cells, which get the label code
        ``-1`` (missing values too); it is not a class.
    batch_key
        ``.obs`` column with batches or other covariates.
    split_key
        ``.obs`` column that defines the split (``train``/``val``/``test``, also
        ``training``/``validation``, case-insensitive). Overrides the fractions.
    val_size, test_size
        Fractions of cells for validation and test when drawing a split.
    batch_aware_split
        Hold out whole batches of ``batch_key`` (each batch lands in one split).
    stratify
        Keep every label's share in every split (and at least one cell per label in train).
    counts
        Prepare raw counts for a count model (see :class:`~scdlkit.data.DataSpec`):
        integer values are required, no transform is applied, highly variable
        genes use ``flavor="seurat_v3"`` on the training counts, and every
        minibatch carries ``library`` (and ``cat_covs``/``cont_covs``).
    categorical_covariate_keys, continuous_covariate_keys
        Extra ``.obs`` covariates of a count model.
    seed
        Seed of the split; the same seed gives the same split.
    random_state
        Deprecated name of ``seed``.
    features
        Use exactly these features, in this order (matched by name; instead of
        ``use_hvg``), e.g. the genes of a run to start from.

    Returns
    -------
    :class:`PreparedData` with ``train``, ``val``, ``test``, ``input_dim``,
    ``feature_names``, ``label_encoder``, ``batch_encoder``, ``preprocessing`` and ``split``.

    Raises
    ------
    MissingKeyError
        A layer, modality or column that does not exist (a :class:`KeyError`).
    ValueError
        Empty data, duplicated feature names, NaN/Inf values, negative values
        with normalize/log1p, bad split sizes or split values, an empty split,
        ``batch_aware_split`` without ``batch_key``.
    TypeError
        A non-numeric or unsupported matrix.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> prepared = scdlkit.prepare_data(adata, label_key="bulk_labels")
    >>> prepared.input_dim, len(prepared.train), len(prepared.val), len(prepared.test)
    (765, 490, 105, 105)
    """
    seed = resolve_seed(seed, random_state, where="prepare_data")
    spec = DataSpec(
        layer=layer, mod=mod, use_raw=use_raw, label_key=label_key, batch_key=batch_key,
        split_key=split_key, unlabeled_category=unlabeled_category, use_hvg=use_hvg,
        n_top_genes=n_top_genes, normalize=normalize, target_sum=target_sum, log1p=log1p,
        scale=scale, scale_max_value=scale_max_value,
        val_size=val_size, test_size=test_size, batch_aware_split=batch_aware_split,
        stratify=stratify, counts=counts, categorical_covariate_keys=categorical_covariate_keys,
        continuous_covariate_keys=continuous_covariate_keys,
    )  # fmt: skip
    if counts:
        check_transforms(normalize=normalize, log1p=log1p, scale=scale)
    check_split_sizes(val_size, test_size)
    if batch_aware_split and batch_key is None:
        msg = "batch_aware_split=True needs batch_key= (the column whose batches are held out)."
        raise ValueError(msg)
    if features is not None and use_hvg:
        msg = "features= fixes the genes; leave use_hvg off (or drop features= to select genes)."
        raise ValueError(msg)
    if use_hvg and int(n_top_genes) < 1:
        msg = f"n_top_genes must be a positive integer, got {n_top_genes!r}."
        raise ValueError(msg)
    fields = resolve_fields(
        adata, layer=layer, mod=mod, use_raw=use_raw, label_key=label_key, batch_key=batch_key,
        split_key=split_key,
    )  # fmt: skip
    summary = validate_values(
        fields, normalize=normalize, log1p=log1p, use_hvg=use_hvg and not counts
    )
    if counts:
        check_counts(summary, fields.source)
    label_encoder = (
        None
        if label_key is None
        else CategoryEncoder.fit(fields.labels, key=label_key, unlabeled=unlabeled_category)
    )
    batch_encoder = (
        None if batch_key is None else CategoryEncoder.fit(fields.batches, key=batch_key)
    )
    y = None if label_encoder is None else label_encoder.encode(fields.labels)
    batch = None if batch_encoder is None else batch_encoder.encode(fields.batches)
    assignment = _assign_split(
        fields, y, batch, split_key=split_key, val_size=val_size, test_size=test_size,
        batch_aware_split=batch_aware_split, stratify=stratify, seed=seed,
    )  # fmt: skip
    split_rows = {name: np.flatnonzero(assignment == name) for name in SPLIT_NAMES}
    train_rows = split_rows["train"]

    transform = FeatureTransform(
        fields.matrix.shape[1], normalize=normalize, target_sum=float(target_sum), log1p=log1p
    )
    if features is not None:
        transform = replace(transform, columns=feature_columns(fields, features))
    elif use_hvg and counts:
        columns = select_hvg_counts(fields, train_rows, fields.batches, int(n_top_genes))
        transform = replace(transform, columns=columns)
    elif use_hvg:
        columns = _select_hvg(transform, fields, train_rows, fields.batches, int(n_top_genes))
        transform = replace(transform, columns=columns)
    if scale:
        mean, std = fit_scaling(transform, fields.matrix, train_rows)
        transform = replace(transform, mean=mean, std=std, max_value=scale_max_value)
    feature_names = (
        fields.feature_names
        if transform.columns is None
        else fields.feature_names[transform.columns]
    )
    preprocessing: Preprocessing = {
        "source": fields.source,
        "layer": layer,
        "mod": mod if mod is None or isinstance(mod, str) else list(mod),
        "use_raw": bool(use_raw),
        "feature_names": [str(name) for name in feature_names],
        "normalize": bool(normalize),
        "target_sum": float(target_sum),
        "log1p": bool(log1p),
        "use_hvg": bool(use_hvg),
        "n_top_genes": int(n_top_genes) if use_hvg else None,
        "scale": bool(scale),
        "scale_mean": None if transform.mean is None else transform.mean.tolist(),
        "scale_std": None if transform.std is None else transform.std.tolist(),
        "scale_max_value": transform.max_value,
        "counts": bool(counts),
    }
    per_cell: dict[str, np.ndarray] = {}
    covariates = Covariates()
    if counts:
        covariates = Covariates.fit(
            adata, spec.categorical_covariate_keys, spec.continuous_covariate_keys,
            fields.obs_names, mod=mod,
        )  # fmt: skip
        preprocessing["covariates"] = covariates.to_dict()
        per_cell = count_inputs(adata, fields, covariates, transform.columns, mod=mod)
        check_nonzero_cells(
            per_cell["library"][:, 0], fields.obs_names, fields.source, transform.n_features
        )

    def make(name: str) -> SplitData | None:
        rows = split_rows[name]
        if rows.shape[0] == 0:
            return None
        return SplitData(
            fields.matrix, rows, transform, name=name,
            y=None if y is None else y[rows], batch=None if batch is None else batch[rows],
            obs_names=fields.obs_names, covariates={k: v[rows] for k, v in per_cell.items()},
        )  # fmt: skip

    if label_encoder is not None and split_key is not None:
        missing = sorted(set(range(label_encoder.n_categories)) - set(np.unique(y[train_rows])))
        if missing:
            warnings.warn(
                f"Labels {format_names(label_encoder.categories[i] for i in missing)} have no cell "
                f"in the training split of {split_key!r}; a classifier cannot learn them.",
                UserWarning,
                stacklevel=2,
            )
    return PreparedData(
        train=make("train"),
        val=make("val"),
        test=make("test"),
        input_dim=transform.n_features,
        feature_names=list(preprocessing["feature_names"]),
        label_encoder=label_encoder,
        batch_encoder=batch_encoder,
        preprocessing=preprocessing,
        split=split_categorical(assignment),
        obs_names=fields.obs_names,
        source=fields.source,
        spec=spec,
        seed=seed,
        raw_counts=summary.is_integer and summary.min_value >= 0 and not (normalize or log1p),
        covariates=covariates,
    )
