"""Task ↔ model: which task a model trains for, and the model sized to the prepared data."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from .._errors import format_names
from ..data import PreparedData
from ..data.spec import DataSpec
from ..models import create_model, get_model_class
from ..tasks import get_task


def model_name(model: str | nn.Module) -> str:
    """Registry name of a model argument, or the class name of an instance."""
    return model if isinstance(model, str) else type(model).__name__


def input_kind(model: str | nn.Module) -> str:
    """Return ``"counts"`` for count models (they read raw counts), else ``"transformed"``."""
    cls = get_model_class(model) if isinstance(model, str) else model
    return str(getattr(cls, "input_kind", "transformed"))


def data_spec_for(model: str | nn.Module, spec: DataSpec | None) -> DataSpec:
    """Return the spec to prepare data with: count models read raw counts (``counts=True``)."""
    spec = spec or DataSpec()
    if input_kind(model) == "counts" and not spec.counts:
        return spec.replace(counts=True)
    return spec


#: Tasks whose models predict the classes of ``label_key``.
LABEL_TASKS = ("classification", "annotation")


def accepted_options(cls: type) -> set[str]:
    """Return the constructor options of ``cls``, following ``**kwargs`` up to the parent classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {
            p.name
            for p in parameters
            if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD
        }
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names - {"self"}


def observed_classes(prepared: PreparedData) -> list[int] | None:
    """Codes of the classes with a labelled training cell, or ``None`` when every class has one."""
    codes = np.unique(prepared.train.y)
    codes = codes[codes >= 0]
    return None if codes.shape[0] == prepared.label_encoder.n_categories else codes.tolist()


def _data_sized_kwargs(model: str, prepared: PreparedData, task: str) -> dict[str, Any]:
    """Return the constructor options the data decides (classes, batches, covariates)."""
    accepted = accepted_options(get_model_class(model))
    sized: dict[str, Any] = {}
    if task in LABEL_TASKS:
        sized["num_classes"] = prepared.label_encoder.n_categories
    if "observed_classes" in accepted and task in LABEL_TASKS:
        sized["observed_classes"] = observed_classes(prepared)
    if "n_batch" in accepted and prepared.batch_encoder is not None:
        sized["n_batch"] = prepared.batch_encoder.n_categories
    if "n_cats_per_cov" in accepted and prepared.covariates.categorical:
        sized["n_cats_per_cov"] = list(prepared.covariates.n_cats_per_cov)
    if "n_continuous_cov" in accepted and prepared.covariates.continuous:
        sized["n_continuous_cov"] = prepared.covariates.n_continuous
    return sized


def resolve_task(model: str | nn.Module, task: str | None) -> str:
    """Return the task to train, checked against the model before any data is read.

    Raises
    ------
    ValueError
        The model does not support ``task``, or declares no task at all.
    """
    if not isinstance(model, str) and task is not None:
        get_task(task).check_model(model)
    if isinstance(model, str):
        supported = get_model_class(model).supported_tasks
    else:
        supported = tuple(getattr(model, "supported_tasks", ()))
    if task is not None:
        name = get_task(task).name
        if name not in supported:
            msg = (
                f"Model {model!r} does not support the {name!r} task (its supported tasks: "
                f"{format_names(supported)}). Pass task= one of those or choose another model "
                "(scdlkit.list_models() shows what each supports)."
            )
            raise ValueError(msg)
        return name
    if not supported:
        msg = (
            f"{type(model).__name__} declares no supported_tasks; pass task= or wrap the module with "
            "scdlkit.adapters.wrap_reconstruction_module / wrap_classification_module."
        )
        raise ValueError(msg)
    return supported[0]


def check_labels(task: str, prepared: PreparedData) -> None:
    """Refuse classification/annotation without labels, with a single class or no labelled training cell."""
    if task not in LABEL_TASKS:
        return
    label_key = prepared.spec.label_key
    if prepared.label_encoder is None:
        msg = f"task={task!r} needs label_key= (the .obs column with the cell labels)."
        raise ValueError(msg)
    if task == "classification" and prepared.label_encoder.unlabeled is not None:
        msg = (
            "unlabeled_category marks cells without a label, which only semi-supervised models "
            "learn from: use model='count_scanvi' (task 'annotation'), or drop the unlabelled "
            "cells for a classifier."
        )
        raise ValueError(msg)
    if not (prepared.train.y >= 0).any():
        msg = (
            f"No training cell has a label in {label_key!r} (all are "
            f"{prepared.label_encoder.unlabeled!r} or missing); label some training cells."
        )
        raise ValueError(msg)
    if prepared.label_encoder.n_categories < 2:
        msg = (
            f"label_key {label_key!r} has a single class ({prepared.label_encoder.categories[0]!r}); "
            "classification needs at least two."
        )
        raise ValueError(msg)


def build_model(
    model: str | nn.Module,
    prepared: PreparedData,
    *,
    task: str,
    model_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Create a registry model sized to the prepared data, or check an instance against it.

    ``num_classes`` is filled in from the labels for classification, and
    ``n_batch``/``n_cats_per_cov``/``n_continuous_cov`` from the batches and
    covariates for models that take them (count models).

    Raises
    ------
    ValueError
        ``model_kwargs`` with a model instance, or an instance whose ``input_dim``
        differs from the prepared data.
    """
    if isinstance(model, str):
        kwargs = {**_data_sized_kwargs(model, prepared, task), **dict(model_kwargs or {})}
        return create_model(model, input_dim=prepared.input_dim, seed=seed, **kwargs)
    if model_kwargs:
        msg = "model_kwargs only apply when model is a registry name; configure the model instance yourself."
        raise ValueError(msg)
    expected = getattr(model, "input_dim", None)
    if expected is not None and expected != prepared.input_dim:
        msg = (
            f"The model expects {expected} input features but the prepared data has {prepared.input_dim}; "
            "build the model with input_dim matching the data (after use_hvg/layer selection)."
        )
        raise ValueError(msg)
    return model
