"""Start a model from a trained run's weights (``init_from``: scANVI from scVI)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anndata import AnnData
from mudata import MuData
from torch import nn

from .._errors import format_names
from ..data import PreparedData
from ..data.record import record_holder
from ..data.spec import DataSpec
from ..train.bundle import read_weights
from .load import LoadedRun, load_run, run_checkpoint

#: Data options an initialised run reads as its source run did (given ones must agree).
READING_OPTIONS = (
    "layer", "mod", "use_raw", "batch_key", "categorical_covariate_keys",
    "continuous_covariate_keys", "counts",
)  # fmt: skip
#: Constructor options the new data decides, never copied from the source run.
SIZED_OPTIONS = ("input_dim", "num_classes", "observed_classes", "n_batch_extra")
#: Buffers a fine-tuned model sets itself (calibration, observed classes).
OWN_BUFFERS = ("temperature", "class_mask")


def source_run(adata: AnnData | MuData, init_from: str | Path) -> LoadedRun:
    """Load the run named by ``init_from``: a key of ``adata.uns`` holding a run record, or a bundle path.

    Raises
    ------
    FileNotFoundError
        Neither a recorded run nor an existing bundle.
    """
    recorded = isinstance(init_from, str) and isinstance(
        record_holder(adata, init_from).uns.get(init_from), dict
    )
    if recorded:
        path, _ = run_checkpoint(adata, str(init_from))
    elif Path(str(init_from)).is_dir():
        path = Path(str(init_from))
    else:
        msg = (
            f"init_from={str(init_from)!r} is neither a run recorded in .uns (run tl.fit(adata, "
            f"'count_vae', key_added={str(init_from)!r}) first) nor an existing checkpoint folder."
        )
        raise FileNotFoundError(msg)
    return load_run(path)


def initialized_spec(spec: DataSpec, source: LoadedRun) -> DataSpec:
    """Return ``spec`` reading the data as ``source`` did, on exactly its genes (no gene selection).

    Raises
    ------
    ValueError
        A reading option given with another value than the source run's.
    """
    trained = source.spec
    default = DataSpec()
    changes: dict[str, Any] = {"use_hvg": False}
    for name in READING_OPTIONS:
        given, used = getattr(spec, name), getattr(trained, name)
        if given != getattr(default, name) and given != used:
            msg = (
                f"init_from: the source run was trained with {name}={used!r}, this call has "
                f"{name}={given!r}. Leave {name} out (it is taken from the source run) or pass the same."
            )
            raise ValueError(msg)
        changes[name] = used
    return spec.replace(**changes)


def initialized_kwargs(source: LoadedRun, model_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the source's architecture options with ``model_kwargs`` on top (data-sized ones left out)."""
    kwargs = {k: v for k, v in source.config["model"]["kwargs"].items() if k not in SIZED_OPTIONS}
    return {**kwargs, **dict(model_kwargs or {})}


def check_source_data(prepared: PreparedData, source: LoadedRun) -> None:
    """Refuse data whose batches differ from the source run's (the covariate weights would not match).

    Raises
    ------
    ValueError
        Other batch categories or order.
    """
    trained = source.encoder("batch")
    now = prepared.batch_encoder
    if (trained is None) != (now is None) or (
        trained is not None and trained.categories != now.categories
    ):
        before = "none" if trained is None else format_names(trained.categories)
        after = "none" if now is None else format_names(now.categories)
        msg = (
            f"init_from: the source run was trained on the batches {before}, this data has "
            f"{after}. Initialise from a run trained on the same cells."
        )
        raise ValueError(msg)


def load_source_weights(module: nn.Module, source: LoadedRun) -> list[str]:
    """Copy the source run's weights into ``module``; return the names of the new (not copied) tensors.

    Raises
    ------
    ValueError
        A source tensor the module lacks or has with another shape (another architecture).
    """
    weights = read_weights(source.path)
    target = module.state_dict()
    foreign = [k for k in weights if k not in target and k not in OWN_BUFFERS]
    mismatched = [
        k
        for k in weights
        if k in target and k not in OWN_BUFFERS and weights[k].shape != target[k].shape
    ]
    if foreign or mismatched:
        msg = (
            f"init_from: the source model ({source.model}) does not fit {type(module).__name__}: "
            f"{format_names(foreign + mismatched)} differ. Keep the source's architecture options "
            "(model_kwargs such as n_hidden, n_latent, n_layers are taken from it by default)."
        )
        raise ValueError(msg)
    copied = {k: v for k, v in weights.items() if k not in OWN_BUFFERS}
    module.load_state_dict(copied, strict=False)
    return sorted(set(target) - set(copied))
