"""``pp.inspect``: check an AnnData/MuData before training and report what would go wrong."""

from __future__ import annotations

import sys
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from .._errors import format_names
from ..data import resolve_fields
from ..data.fields import ModSpec
from ..data.matrix import is_backed, is_sparse, summarize_matrix
from ..data.prepare import raw_counts_message
from ..data.spec import DataSpec

#: A class with fewer cells than this is reported (stratified splits cannot place it well).
MIN_CELLS_PER_CLASS = 5
#: Largest value of non-integer data that still looks log-transformed.
_LOG_SCALE_MAX = 50.0


@dataclass
class InspectionReport:
    """What :func:`scdlkit.pp.inspect` found about the data a call would train on.

    Attributes
    ----------
    source
        Where the matrix is read from, e.g. ``"adata.layers['counts']"``.
    n_obs, n_vars
        Cells and features.
    format
        ``"dense"``, ``"CSR"``, ``"backed dense"`` or ``"backed CSR"``.
    dtype
        Data type of the matrix.
    density
        Fraction of non-zero values.
    looks_like_counts
        Every value is a non-negative whole number.
    min_value, max_value
        Smallest and largest finite value (``nan`` when there is none).
    n_nonfinite
        NaN and infinite values.
    n_negative
        Negative values.
    n_empty_cells, n_empty_features
        Cells and features without a single non-zero value.
    duplicate_var_names
        Feature names that occur more than once.
    label_key, label_counts, n_missing_labels
        The label column, cells per class (largest first) and cells without a label.
    batch_key, batch_counts, n_missing_batches
        The same for the batch column.
    split_key, split_counts
        The split column and cells per split (``train``/``val``/``test``).
    task
        The task the checks were made for (``None``: not given).
    issues
        Problems found, each with what to do about it. Empty when all is well.
    """

    source: str
    n_obs: int
    n_vars: int
    format: str
    dtype: str
    density: float
    looks_like_counts: bool
    min_value: float
    max_value: float
    n_nonfinite: int
    n_negative: int
    n_empty_cells: int
    n_empty_features: int
    duplicate_var_names: list[str] = field(default_factory=list)
    label_key: str | None = None
    label_counts: dict[str, int] = field(default_factory=dict)
    n_missing_labels: int = 0
    batch_key: str | None = None
    batch_counts: dict[str, int] = field(default_factory=dict)
    n_missing_batches: int = 0
    split_key: str | None = None
    split_counts: dict[str, int] = field(default_factory=dict)
    task: str | None = None
    issues: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether no issue was found."""
        return not self.issues

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a plain dictionary."""
        return asdict(self)

    def _rows(self) -> list[tuple[str, str]]:
        counts = "yes" if self.looks_like_counts else "no"
        rows = [
            ("matrix", self.source),
            ("shape", f"{self.n_obs} cells x {self.n_vars} features"),
            ("format", f"{self.format}, {self.dtype}, density {self.density:.3g}"),
            ("values", f"min {self.min_value:.4g}, max {self.max_value:.4g}"),
            ("counts (integers >= 0)", counts),
            ("NaN/Inf values", str(self.n_nonfinite)),
            ("negative values", str(self.n_negative)),
            ("empty cells / features", f"{self.n_empty_cells} / {self.n_empty_features}"),
            (
                "duplicated names",
                format_names(self.duplicate_var_names, limit=5)
                if self.duplicate_var_names
                else "none",
            ),
        ]
        for role, key, counts_, missing in (
            ("labels", self.label_key, self.label_counts, self.n_missing_labels),
            ("batches", self.batch_key, self.batch_counts, self.n_missing_batches),
            ("split", self.split_key, self.split_counts, 0),
        ):
            if key is None:
                continue
            shown = ", ".join(f"{name}: {n}" for name, n in list(counts_.items())[:12])
            if len(counts_) > 12:
                shown += f", ... ({len(counts_) - 12} more)"
            extra = f"; {missing} missing" if missing else ""
            rows.append((f"{role} ({key!r})", f"{len(counts_)} groups ({shown}){extra}"))
        return rows

    def __str__(self) -> str:
        rows = self._rows()
        width = max(len(name) for name, _ in rows)
        lines = ["scdlkit data inspection"]
        lines += [f"  {name:<{width}}  {value}" for name, value in rows]
        if self.issues:
            lines.append(f"issues ({len(self.issues)}):")
            lines += [f"  - {issue}" for issue in self.issues]
        else:
            lines.append("no issues found")
        return "\n".join(lines) + "\n"

    def _repr_markdown_(self) -> str:
        lines = ["**scdlkit data inspection**", "", "| | |", "|---|---|"]
        lines += [f"| {name} | {value.replace('|', '/')} |" for name, value in self._rows()]
        lines.append("")
        if self.issues:
            lines.append(f"**Issues ({len(self.issues)})**")
            lines.append("")
            lines += [f"- {issue}" for issue in self.issues]
        else:
            lines.append("No issues found.")
        return "\n".join(lines) + "\n"


def _format_of(matrix: Any) -> str:
    kind = "CSR" if is_sparse(matrix) else "dense"
    return f"backed {kind}" if is_backed(matrix) else kind


def _group_counts(values: pd.Series) -> tuple[dict[str, int], int]:
    missing = int(values.isna().sum())
    counts = values.dropna().astype(str).value_counts()
    return {str(name): int(n) for name, n in counts.items()}, missing


def _label_issues(
    report: InspectionReport, labels: pd.Series, split: np.ndarray | None, task: str | None
) -> None:
    key = report.label_key
    if report.n_missing_labels:
        report.issues.append(
            f"{report.n_missing_labels} cells have no label in {key!r}. Drop them first: "
            f"adata = adata[adata.obs[{key!r}].notna()].copy()."
        )
    rare = {name: n for name, n in report.label_counts.items() if n < MIN_CELLS_PER_CLASS}
    if rare:
        shown = ", ".join(f"{name!r} ({n})" for name, n in rare.items())
        report.issues.append(
            f"{len(rare)} classes of {key!r} have fewer than {MIN_CELLS_PER_CLASS} cells: {shown}. "
            "They cannot be represented in every split, and a classifier learns little from "
            "them. Merge them into a broader class or remove those cells."
        )
    if task == "classification" and len(report.label_counts) < 2:
        only = format_names(report.label_counts)
        report.issues.append(
            f"{key!r} has a single class ({only}); classification needs at least two. Use "
            "another label_key, or a representation model instead."
        )
    if split is not None:
        in_train = set(labels[split == "train"].dropna().astype(str))
        absent = [name for name in report.label_counts if name not in in_train]
        if absent:
            report.issues.append(
                f"Classes {format_names(absent)} of {key!r} have no cell in the training split "
                f"of {report.split_key!r}; a classifier cannot learn them. Move some of their "
                "cells to 'train'."
            )


def _value_issues(report: InspectionReport, spec: DataSpec, *, first_bad_cell: str | None) -> None:
    source = report.source
    normalize, log1p = spec.normalize, spec.log1p
    if report.n_obs == 0 or report.n_vars == 0:
        report.issues.append(
            f"{source} is empty ({report.n_obs} cells x {report.n_vars} features); there is "
            "nothing to train on. Check the filtering steps that produced it."
        )
    if report.duplicate_var_names:
        report.issues.append(
            f"{len(report.duplicate_var_names)} feature names occur more than once "
            f"({format_names(report.duplicate_var_names, limit=10)}); scdlkit refuses them. "
            "Make them unique: adata.var_names_make_unique()."
        )
    if report.n_nonfinite:
        report.issues.append(
            f"{source} has {report.n_nonfinite} NaN or infinite values (first in cell "
            f"{first_bad_cell!r}). Remove those cells or impute the values before training."
        )
    steps = " and ".join(name for name, on in (("normalize", normalize), ("log1p", log1p)) if on)
    if report.n_negative and steps:
        report.issues.append(
            f"{source} has {report.n_negative} negative values (minimum {report.min_value:.4g}), "
            f"but {steps} need non-negative counts. Use a layer that holds counts (layer=...) or "
            f"turn {steps} off."
        )
    if report.looks_like_counts and report.n_vars and not (normalize or log1p):
        report.issues.append(raw_counts_message(source))
    if (
        log1p
        and not report.looks_like_counts
        and not report.n_negative
        and 0 < report.max_value < _LOG_SCALE_MAX
    ):
        report.issues.append(
            f"{source} is not integer and its maximum is {report.max_value:.3g}: it looks "
            "log-transformed already, and log1p=True would log it twice. Pass log1p=False "
            "(and normalize=False), or use the layer with raw counts."
        )
    if report.n_empty_cells and normalize:
        report.issues.append(
            f"{report.n_empty_cells} cells have no counts at all; normalisation leaves them "
            "all-zero. Filter them: sc.pp.filter_cells(adata, min_counts=1)."
        )
    if spec.use_hvg:
        if report.looks_like_counts and not log1p:
            report.issues.append(
                "use_hvg=True ranks highly variable genes on log-normalised values, but the "
                "data looks like raw counts and log1p=False. Pass normalize=True, log1p=True."
            )
        if spec.n_top_genes >= report.n_vars:
            report.issues.append(
                f"use_hvg=True with n_top_genes={spec.n_top_genes}, but there are only "
                f"{report.n_vars} features: all are kept. Lower n_top_genes or pass use_hvg=False."
            )


def _split_assignment(report: InspectionReport, split: pd.Series) -> np.ndarray | None:
    from ..data.splits import SPLIT_NAMES, parse_split_column

    try:
        assignment = parse_split_column(split, key=str(report.split_key))
    except ValueError as error:
        report.issues.append(str(error))
        return None
    report.split_counts = {name: int(np.count_nonzero(assignment == name)) for name in SPLIT_NAMES}
    if report.split_counts["train"] == 0:
        report.issues.append(
            f"split_key {report.split_key!r} marks no cell as 'train'; there is nothing to "
            "train on. Mark some cells 'train'."
        )
    return assignment


def inspect(
    adata: AnnData | MuData,
    *,
    layer: str | None = None,
    mod: ModSpec = None,
    use_raw: bool = False,
    label_key: str | None = None,
    batch_key: str | None = None,
    split_key: str | None = None,
    normalize: bool = False,
    log1p: bool = False,
    use_hvg: bool = False,
    n_top_genes: int = 2000,
    task: str | None = None,
    show: bool = True,
) -> InspectionReport:
    """Check the data a :func:`scdlkit.tl.fit` call would train on, and report problems.

    Takes the same data options as :func:`scdlkit.tl.fit` and reads the same
    matrix and ``.obs`` columns, but trains nothing and changes nothing. Data
    problems (NaN values, negative values with ``normalize``/``log1p``, raw
    counts without them, duplicated gene names, rare or missing labels, bad
    split values, ...) never raise: they are listed in ``report.issues``, each
    with what to do about it. The matrix is scanned block by block, so backed
    and large data work.

    Parameters
    ----------
    adata
        AnnData or MuData with cells as rows.
    layer
        Layer to read; ``None`` reads ``.X``.
    mod
        For a MuData: the modality (or a list of modalities) to read.
    use_raw
        Read ``.raw.X`` instead of ``.X``.
    label_key, batch_key, split_key
        ``.obs`` columns to check, as :func:`scdlkit.tl.fit` would use them.
    normalize, log1p, use_hvg, n_top_genes
        The preprocessing the checks assume.
    task
        The task the checks assume; ``"classification"`` also checks that there
        are at least two classes.
    show
        Write the rendered report to standard output.

    Returns
    -------
    An :class:`InspectionReport`; ``str(report)`` renders it as text, and
    notebooks show it as a table. ``report.ok`` is ``True`` when ``report.issues`` is empty.

    Raises
    ------
    MissingKeyError
        A layer, modality, ``.raw`` or ``.obs`` column that does not exist (a
        :class:`KeyError`; the message lists what exists).
    ValueError
        Inconsistent options (``layer`` with ``use_raw``, ``mod`` missing for a
        MuData) or an unknown ``task``.
    TypeError
        A matrix that is not numeric.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.synthetic_counts(300, 100, seed=0)
    >>> report = scdlkit.pp.inspect(adata, label_key="cell_type", show=False)
    >>> report.looks_like_counts, report.format
    (True, 'CSR')
    >>> report.issues[0][:40]
    'adata.X looks like raw counts, but norma'
    """
    spec = DataSpec(
        layer=layer, mod=mod, use_raw=use_raw, label_key=label_key, batch_key=batch_key,
        split_key=split_key, use_hvg=use_hvg, n_top_genes=int(n_top_genes), normalize=normalize,
        log1p=log1p,
    )  # fmt: skip
    if task is not None:
        from ..tasks import get_task

        task = get_task(task).name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fields = resolve_fields(
            adata, layer=spec.layer, mod=spec.mod, use_raw=spec.use_raw, label_key=spec.label_key,
            batch_key=spec.batch_key, split_key=spec.split_key, strict=False,
        )  # fmt: skip
    names = fields.feature_names
    duplicates = names[names.duplicated()].unique()
    matrix = fields.matrix
    n_obs, n_vars = int(matrix.shape[0]), int(matrix.shape[1])
    summary = summarize_matrix(matrix)
    has_values = n_obs * n_vars > summary.n_nonfinite
    report = InspectionReport(
        source=fields.source,
        n_obs=n_obs,
        n_vars=n_vars,
        format=_format_of(matrix),
        dtype=str(matrix.dtype),
        density=summary.n_nonzero / (n_obs * n_vars) if n_obs * n_vars else 0.0,
        looks_like_counts=bool(summary.is_integer and summary.min_value >= 0 and has_values),
        min_value=summary.min_value if has_values else float("nan"),
        max_value=summary.max_value if has_values else float("nan"),
        n_nonfinite=summary.n_nonfinite,
        n_negative=summary.n_negative,
        n_empty_cells=summary.n_empty_rows,
        n_empty_features=summary.n_empty_columns,
        duplicate_var_names=[str(name) for name in duplicates],
        label_key=spec.label_key,
        batch_key=spec.batch_key,
        split_key=spec.split_key,
        task=task,
    )
    report.issues.extend(str(warning.message) for warning in caught)
    first_bad = None
    if summary.first_nonfinite_row >= 0:
        first_bad = str(fields.obs_names[summary.first_nonfinite_row])
    _value_issues(report, spec, first_bad_cell=first_bad)
    assignment = None
    if fields.split is not None:
        assignment = _split_assignment(report, fields.split)
    if fields.labels is not None:
        report.label_counts, report.n_missing_labels = _group_counts(fields.labels)
        _label_issues(report, fields.labels, assignment, task)
    elif task == "classification":
        report.issues.append(
            "task='classification' needs label_key= (the .obs column with the cell labels)."
        )
    if fields.batches is not None:
        report.batch_counts, report.n_missing_batches = _group_counts(fields.batches)
        if report.n_missing_batches:
            report.issues.append(
                f"{report.n_missing_batches} cells have no value in {batch_key!r}. Fill them "
                f"(for example with 'unknown') or drop those cells."
            )
    if show:
        sys.stdout.write(str(report))
    return report
