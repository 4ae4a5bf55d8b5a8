"""``DataSpec``: where the matrix and ``.obs`` columns are, and how cells are prepared.

Every front (``tl.fit``, ``TaskRunner``, ``compare_models``, the command line,
``pp.inspect``) turns its flat keyword arguments into one ``DataSpec`` and hands
it down; the bundle stores it (versioned) so that prediction redoes the same
reading on new data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any, TypedDict

from .._errors import format_names
from .fields import ModSpec

#: Version of the stored ``DataSpec`` dictionary (``data_spec`` in a bundle's config).
SPEC_VERSION = 1


class Preprocessing(TypedDict, total=False):
    """The fitted preprocessing of :func:`~scdlkit.prepare_data`, as stored in a bundle."""

    source: str
    layer: str | None
    mod: str | list[str] | None
    use_raw: bool
    feature_names: list[str]
    normalize: bool
    target_sum: float
    log1p: bool
    use_hvg: bool
    n_top_genes: int | None
    scale: bool
    scale_mean: list[float] | None
    scale_std: list[float] | None
    scale_max_value: float | None
    counts: bool
    covariates: dict[str, Any]
    #: Reference mapping: fill missing features with zeros, refusing data with a smaller share.
    min_feature_overlap: float


@dataclass(frozen=True)
class DataSpec:
    """Where a run reads its cells and how it prepares them (the options of :func:`~scdlkit.prepare_data`).

    Parameters
    ----------
    layer
        Layer to read; ``None`` reads ``.X``.
    mod
        MuData modality, or several side by side.
    use_raw
        Read ``.raw.X``.
    label_key, batch_key, split_key
        ``.obs`` columns with labels, batches and a ``train``/``val``/``test`` split.
    unlabeled_category
        Semi-supervised labels: the value of ``label_key`` that marks unlabelled
        cells (missing values do too); ``None``: every cell must have a label.
    use_hvg, n_top_genes
        Keep the highly variable genes, ranked on the training cells.
    normalize, target_sum, log1p, scale, scale_max_value
        Per-minibatch transforms (scaling statistics fitted on the training cells).
    val_size, test_size, batch_aware_split, stratify
        How a split is drawn without ``split_key``.
    counts
        Feed raw counts to a count model: no per-minibatch transform; every
        minibatch also carries the library size and the covariates; highly
        variable genes are ranked with ``flavor="seurat_v3"`` on the counts. Set
        by the pipeline for models with ``input_kind = "counts"``.
    categorical_covariate_keys, continuous_covariate_keys
        Extra ``.obs`` covariates of a count model (MuData: modality columns or
        ``"mod:column"`` names).

    Examples
    --------
    >>> spec = DataSpec(use_raw=True, label_key="bulk_labels")
    >>> DataSpec.from_dict(spec.to_dict()) == spec
    True
    """

    layer: str | None = None
    mod: ModSpec = None
    use_raw: bool = False
    label_key: str | None = None
    batch_key: str | None = None
    split_key: str | None = None
    unlabeled_category: str | None = None
    use_hvg: bool = False
    n_top_genes: int = 2000
    normalize: bool = False
    target_sum: float = 1e4
    log1p: bool = False
    scale: bool = False
    scale_max_value: float | None = 10.0
    val_size: float = 0.15
    test_size: float = 0.15
    batch_aware_split: bool = False
    stratify: bool = True
    counts: bool = False
    categorical_covariate_keys: tuple[str, ...] = ()
    continuous_covariate_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mod is not None and not isinstance(self.mod, str):
            object.__setattr__(self, "mod", tuple(str(name) for name in self.mod))
        for name in ("categorical_covariate_keys", "continuous_covariate_keys"):
            value = getattr(self, name)
            keys = (value,) if isinstance(value, str) else tuple(value or ())
            object.__setattr__(self, name, tuple(str(key) for key in keys))
        if not self.counts and (self.categorical_covariate_keys or self.continuous_covariate_keys):
            msg = (
                "categorical_covariate_keys / continuous_covariate_keys are inputs of count models "
                "(e.g. model='count_vae'); other models do not use covariates."
            )
            raise ValueError(msg)
        if self.unlabeled_category is not None and self.label_key is None:
            msg = (
                f"unlabeled_category={self.unlabeled_category!r} marks unlabelled cells of the "
                "label column: pass label_key= too."
            )
            raise ValueError(msg)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Names of the options, in signature order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> tuple[DataSpec, dict[str, Any]]:
        """Split a keyword dictionary into a ``DataSpec`` and the keywords that are not data options."""
        names = set(cls.option_names())
        spec = cls(**{k: v for k, v in options.items() if k in names})
        return spec, {k: v for k, v in options.items() if k not in names}

    def replace(self, **changes: Any) -> DataSpec:
        """Return a copy with ``changes`` applied."""
        return type(self)(**{**self.to_kwargs(), **changes})

    def to_kwargs(self) -> dict[str, Any]:
        """Return the options as keyword arguments of :func:`~scdlkit.prepare_data`."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("mod", "categorical_covariate_keys", "continuous_covariate_keys"):
            if isinstance(values[name], tuple):
                values[name] = list(values[name])
        return values

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dictionary with a ``spec_version`` (stored in bundles)."""
        return {"spec_version": SPEC_VERSION, **self.to_kwargs()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataSpec:
        """Rebuild a spec written by :meth:`to_dict`.

        Raises
        ------
        ValueError
            A newer ``spec_version`` or unknown options.
        """
        values = dict(values)
        version = values.pop("spec_version", SPEC_VERSION)
        if not isinstance(version, int) or version > SPEC_VERSION:
            msg = (
                f"The data spec has version {version!r}; this scdlkit reads versions up to "
                f"{SPEC_VERSION}. Upgrade scdlkit."
            )
            raise ValueError(msg)
        unknown = sorted(set(values) - set(cls.option_names()))
        if unknown:
            msg = f"Unknown data options {format_names(unknown)}; known: {format_names(cls.option_names())}."
            raise ValueError(msg)
        return cls(**values)

    @classmethod
    def from_preprocessing(cls, preprocessing: Preprocessing) -> DataSpec:
        """Recover the reading part of a spec from a bundle written before specs were stored."""
        return cls(
            layer=preprocessing.get("layer"),
            mod=preprocessing.get("mod"),
            use_raw=bool(preprocessing.get("use_raw")),
            use_hvg=bool(preprocessing.get("use_hvg")),
            n_top_genes=int(preprocessing.get("n_top_genes") or 2000),
            normalize=bool(preprocessing.get("normalize")),
            target_sum=float(preprocessing.get("target_sum", 1e4)),
            log1p=bool(preprocessing.get("log1p")),
            scale=bool(preprocessing.get("scale")),
            scale_max_value=preprocessing.get("scale_max_value"),
        )


def resolve_seed(seed: int, random_state: int | None, *, where: str) -> int:
    """Return ``seed``, or the deprecated ``random_state`` with a ``FutureWarning``."""
    if random_state is None:
        return int(seed)
    warnings.warn(
        f"{where}: random_state= is deprecated; pass seed= (the one randomness keyword of scdlkit).",
        FutureWarning,
        stacklevel=3,
    )
    return int(random_state)
