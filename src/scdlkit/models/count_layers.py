"""Building blocks of the count model: covariate-injected layers, one-hot codes, input checks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def one_hot_width(n_categories: int) -> int:
    """Width of a covariate's one-hot code; one category carries no information (as in scvi-tools).

    Examples
    --------
    >>> one_hot_width(3), one_hot_width(1), one_hot_width(0)
    (3, 0, 0)
    """
    return n_categories if n_categories > 1 else 0


def one_hots(
    batch: torch.Tensor | None,
    cat_covs: torch.Tensor | None,
    n_batch: int,
    n_cats_per_cov: Sequence[int],
    n_batch_extra: int = 0,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """One-hot codes of the batch ``(n,)`` and of each column of ``cat_covs`` ``(n, k)``.

    Covariates with fewer than two categories are skipped (:func:`one_hot_width`).
    Batch codes ``>= n_batch`` are the ``n_batch_extra`` batches added by
    reference mapping: their one-hot code is returned on its own (second
    value, ``None`` without them) and the first ``n_batch`` columns of those
    cells are zero.

    Examples
    --------
    >>> import torch
    >>> codes, extra = one_hots(torch.tensor([0, 1]), torch.tensor([[2], [0]]), 2, (3,))
    >>> [c.shape for c in codes], extra
    ([torch.Size([2, 2]), torch.Size([2, 3])], None)
    >>> codes, extra = one_hots(torch.tensor([0, 2]), None, 2, (), n_batch_extra=1)
    >>> codes[0].tolist(), extra.tolist()
    ([[1, 0], [0, 0]], [[0], [1]])
    """
    columns = []
    extra = None
    if n_batch_extra:
        full = F.one_hot(batch, n_batch + n_batch_extra)
        if one_hot_width(n_batch):
            columns.append(full[:, :n_batch])
        extra = full[:, n_batch:]
    elif one_hot_width(n_batch):
        columns.append(F.one_hot(batch, n_batch))
    for j, n_categories in enumerate(n_cats_per_cov):
        if one_hot_width(n_categories):
            columns.append(F.one_hot(cat_covs[:, j], n_categories))
    return columns, extra


class CovariateLayers(nn.Module):
    """Hidden layers ``Linear -> [BatchNorm|LayerNorm] -> ReLU -> [Dropout]`` with injected covariates.

    The one-hot covariates are concatenated to the input of the first layer,
    and of every layer with ``inject_all`` (scvi-tools' ``FCLayers``).

    Parameters
    ----------
    n_in
        Input width (without the one-hot covariates).
    n_hidden
        Width of every hidden layer.
    n_layers
        Number of hidden layers.
    n_cov
        Total width of the one-hot covariates.
    inject_all
        Concatenate the covariates at every layer, not only the first.
    norm
        ``"batch"`` (``BatchNorm1d(momentum=0.01, eps=0.001)``, scvi-tools'
        settings), ``"layer"`` (``LayerNorm`` without affine parameters) or ``"none"``.
    dropout
        Dropout probability after each activation (no layer when 0).
    n_cov_extra
        Width of the one-hot code of batches added by reference mapping. Their
        weights are separate tensors (``extra_weights``, one per layer that
        gets the covariates, initialised to the mean of the batch columns
        ``extra_init`` of the layer's weight), so that the reference weights can
        stay frozen, out of the optimizer, while they train.

    Examples
    --------
    >>> layers = CovariateLayers(20, 8, 2, 3, inject_all=True, norm="batch", dropout=0.1)
    >>> [block[0].in_features for block in layers.blocks]
    [23, 11]
    """

    def __init__(
        self,
        n_in: int,
        n_hidden: int,
        n_layers: int,
        n_cov: int,
        *,
        inject_all: bool,
        norm: str,
        dropout: float,
        n_cov_extra: int = 0,
    ) -> None:
        super().__init__()
        self.inject = [i == 0 or inject_all for i in range(n_layers)]
        self.n_cov_extra = n_cov_extra
        blocks = []
        for i in range(n_layers):
            width = (n_in if i == 0 else n_hidden) + (n_cov if self.inject[i] else 0)
            block: list[nn.Module] = [nn.Linear(width, n_hidden)]
            if norm == "batch":
                block.append(nn.BatchNorm1d(n_hidden, momentum=0.01, eps=0.001))
            elif norm == "layer":
                block.append(nn.LayerNorm(n_hidden, elementwise_affine=False))
            block.append(nn.ReLU())
            if dropout > 0:
                block.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*block))
        self.blocks = nn.ModuleList(blocks)
        self.extra_weights = nn.ParameterList(
            [nn.Parameter(torch.zeros(n_hidden, n_cov_extra)) for inject in self.inject if inject]
            if n_cov_extra
            else []
        )

    def extra_init(self, n_batch_columns: int, n_after: int) -> None:
        """Set every extra batch's weights to the mean of the layer's batch columns.

        The batch one-hot columns of a layer's weight are the ``n_batch_columns``
        before the last ``n_after`` (the other categorical covariates). A new
        batch then starts as the average reference batch (used after the
        reference weights are loaded).
        """
        injected = [block for inject, block in zip(self.inject, self.blocks, strict=True) if inject]
        with torch.no_grad():
            for block, extra in zip(injected, self.extra_weights, strict=True):
                end = block[0].weight.shape[1] - n_after
                columns = block[0].weight[:, end - n_batch_columns : end]
                mean = columns.mean(dim=1, keepdim=True) if columns.shape[1] else 0.0
                extra.copy_(torch.zeros_like(extra) + mean)

    def forward(
        self,
        h: torch.Tensor,
        covariates: Sequence[torch.Tensor],
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Map ``h`` ``(n, n_in)``, the one-hot ``covariates`` and ``extra`` to ``(n, n_hidden)``."""
        weights = iter(self.extra_weights)
        for inject, block in zip(self.inject, self.blocks, strict=True):
            if inject and covariates:
                h = torch.cat([h, *(c.to(h.dtype) for c in covariates)], dim=-1)
            if inject and extra is not None and self.n_cov_extra:
                h = block[0](h) + extra.to(h.dtype) @ next(weights).t()
                for module in block[1:]:
                    h = module(h)
            else:
                h = block(h)
        return h


def _code_mask(
    codes: torch.Tensor | None, name: str, n: int, sizes: tuple[int, ...]
) -> torch.Tensor:
    """Check the shape of ``codes`` ``(n, len(sizes))``; return the mask of out-of-range codes."""
    if codes is None:
        hint = "batch_key=" if name == "batch" else "categorical_covariate_keys="
        msg = (
            f"CountVAE was built with {name} covariates (categories: {list(sizes)}) but the batch "
            f"has no {name!r}. Prepare the data with {hint} the same .obs column(s) the model "
            "was built for."
        )
        raise ValueError(msg)
    if codes.shape != (n, len(sizes)) or codes.dtype.is_floating_point:
        msg = (
            f"{name} must hold integer category codes of shape ({n}, {len(sizes)}), got shape "
            f"{tuple(codes.shape)} and dtype {codes.dtype}."
        )
        raise ValueError(msg)
    return (codes < 0) | (codes >= torch.tensor(sizes, device=codes.device))


def _message(
    key: str, bad: torch.Tensor, codes: torch.Tensor | None, sizes: tuple[int, ...]
) -> str:
    count = int(bad.sum())
    if key == "x":
        return (
            f"CountVAE models raw counts, but x has {count} negative values. Pass the raw count "
            "matrix (e.g. layer='counts'), not scaled or centred data."
        )
    if key == "library":
        return (
            f"{count} cell(s) have a library size that is zero, negative or not finite. Remove "
            "cells without counts first, e.g. sc.pp.filter_cells(adata, min_counts=1)."
        )
    if key == "cont_covs":
        return f"cont_covs has {count} NaN or infinite values; fill or drop them first."
    column = int(bad.any(0).nonzero()[0, 0])
    value = int(codes[:, column][bad[:, column]][0])
    return (
        f"{key} code {value} (column {column}) is out of range: the model was built for "
        f"{sizes[column]} categories (codes 0..{sizes[column] - 1}). Build the model with the "
        "category counts of the training data, and map query data onto its categories."
    )


def check_count_inputs(
    x: torch.Tensor,
    library: torch.Tensor | None,
    batch: torch.Tensor | None,
    cat_covs: torch.Tensor | None,
    cont_covs: torch.Tensor | None,
    *,
    n_batch: int,
    n_cats_per_cov: tuple[int, ...],
    n_continuous_cov: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check a count model's inputs with one device synchronisation.

    Parameters
    ----------
    x
        Raw counts ``(n, n_genes)``.
    library
        Library sizes ``(n, 1)`` or ``(n,)``; ``None`` uses ``x.sum(1)``.
    batch
        Batch codes ``(n,)`` or ``(n, 1)``; checked when ``n_batch > 0``.
    cat_covs, cont_covs
        Covariates ``(n, len(n_cats_per_cov))`` and ``(n, n_continuous_cov)``, checked when expected.
    n_batch, n_cats_per_cov, n_continuous_cov
        What the model was built for.

    Returns
    -------
    ``library`` as ``(n, 1)`` and ``batch`` as ``(n,)`` (``None`` stays ``None``).

    Raises
    ------
    ValueError
        Negative counts, library sizes that are not positive and finite, missing
        covariates, wrong shapes, codes out of range, non-finite continuous covariates.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    >>> library, batch = check_count_inputs(
    ...     x, None, torch.tensor([0, 1]), None, None,
    ...     n_batch=2, n_cats_per_cov=(), n_continuous_cov=0,
    ... )  # fmt: skip
    >>> library.flatten().tolist(), batch.tolist()
    ([3.0, 3.0], [0, 1])
    """
    n = x.shape[0]
    library = x.sum(dim=1, keepdim=True) if library is None else library
    library = library.reshape(-1, 1) if library.ndim == 1 else library
    if library.shape != (n, 1):
        msg = f"library must have shape ({n}, 1), one size per cell; got {tuple(library.shape)}."
        raise ValueError(msg)
    checks = {"x": x < 0, "library": ~(library > 0) | ~torch.isfinite(library)}
    codes: dict[str, tuple[torch.Tensor | None, tuple[int, ...]]] = {}
    if n_batch:
        batch = batch.reshape(-1, 1) if batch is not None and batch.ndim == 1 else batch
        codes["batch"] = (batch, (n_batch,))
    if n_cats_per_cov:
        codes["cat_covs"] = (cat_covs, tuple(n_cats_per_cov))
    for key, (values, sizes) in codes.items():
        checks[key] = _code_mask(values, key, n, sizes)
    if n_continuous_cov:
        if cont_covs is None or cont_covs.shape != (n, n_continuous_cov):
            got = "none" if cont_covs is None else f"shape {tuple(cont_covs.shape)}"
            msg = (
                f"CountVAE was built with n_continuous_cov={n_continuous_cov} and needs cont_covs "
                f"of shape ({n}, {n_continuous_cov}), got {got}. Prepare the data with "
                "continuous_covariate_keys= the columns the model was built for."
            )
            raise ValueError(msg)
        checks["cont_covs"] = ~torch.isfinite(cont_covs)
    failed = torch.stack([mask.any() for mask in checks.values()]).tolist()
    for (key, mask), bad in zip(checks.items(), failed, strict=True):
        if bad:
            values, sizes = codes.get(key, (None, ()))
            raise ValueError(_message(key, mask, values, sizes))
    return library, None if batch is None else batch.reshape(-1)
