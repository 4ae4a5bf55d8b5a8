"""Load: a bundle back from disk, new data prepared alike, and the outputs to write."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anndata import AnnData
from mudata import MuData
from torch import nn

from .._errors import MissingKeyError, format_names
from ..data import CategoryEncoder, SplitData, transform_adata
from ..data.fields import ModSpec
from ..data.record import record_holder
from ..data.spec import DataSpec, Preprocessing
from ..train import Trainer
from ..train.bundle import read_config
from ..train.collect import collect_predictions

OUTPUTS: dict[str, str | None] = {
    "latent": "latent",
    "reconstruction": "reconstruction",
    "logits": "logits",
    "probabilities": "logits",
    "prediction": "logits",
    "normalized": None,  # count models: decoded by LoadedRun.expression, not a task output
    "corrected": None,
}
#: Outputs only count models (``normalized_expression``) can give.
EXPRESSION_OUTPUTS = ("normalized", "corrected")
#: Marks a ``layer``/``mod`` argument left to what the model was trained on.
TRAINED: Any = object()

#: Outputs written when none are asked for, per task.
DEFAULT_OUTPUTS = {
    "representation": ("latent", "reconstruction"),
    "reconstruction": ("latent", "reconstruction"),
    "classification": ("latent", "logits", "probabilities", "prediction"),
    "annotation": ("latent", "logits", "probabilities", "prediction"),
}


@dataclass
class LoadedRun:
    """A trained model read back from its bundle, ready to predict on new data.

    The weights are read on first use of :attr:`trainer`, so what needs only
    the bundle's configuration (preprocessing, encoders, data spec) costs no
    model rebuild.

    Attributes
    ----------
    path
        The bundle directory.
    config
        The bundle's ``config.json``.
    device
        Where the model goes.
    module
        For bundles of wrapped/custom modules: a module of the same architecture.
    """

    path: Path
    config: dict[str, Any]
    device: str = "auto"
    module: nn.Module | None = None

    @cached_property
    def trainer(self) -> Trainer:
        """A :class:`~scdlkit.Trainer` holding the best weights (rebuilt on first use)."""
        return Trainer.load_checkpoint(
            self.path, device=self.device, model=self.module, progress=False, strategy="single"
        )

    @property
    def task(self) -> str:
        """Task the model was trained for."""
        return str(self.config["task"])

    @property
    def model(self) -> str:
        """Registry name (or class) of the model."""
        return self.config["model"].get("name") or str(self.config.get("model_class", ""))

    @property
    def preprocessing(self) -> Preprocessing:
        """The fitted preprocessing (feature names, transforms, scaling statistics)."""
        return self.config["preprocessing"]

    @property
    def spec(self) -> DataSpec:
        """The data spec of the training run (recovered for bundles written before specs)."""
        stored = self.config.get("data_spec")
        if stored is None:
            return DataSpec.from_preprocessing(self.preprocessing)
        return DataSpec.from_dict(stored)

    def encoder(self, role: str) -> CategoryEncoder | None:
        """Return the ``"label"`` or ``"batch"`` encoder of the training run, if it had one."""
        stored = self.config.get(f"{role}_encoder")
        return None if stored is None else CategoryEncoder.from_dict(stored)

    def query(
        self,
        adata: AnnData | MuData,
        *,
        layer: str | None = TRAINED,
        mod: ModSpec = TRAINED,
        encoders: bool = False,
    ) -> SplitData:
        """Every cell of ``adata`` prepared like the training cells (genes matched by name).

        ``layer``/``mod`` default to where the model was trained; with ``encoders``
        the labels/batches are encoded when their columns exist. Count models
        always get the batches (their decoder needs them) and library sizes.
        """
        preprocessing = self.preprocessing
        return transform_adata(
            adata,
            preprocessing,
            layer=preprocessing.get("layer") if layer is TRAINED else layer,
            mod=preprocessing.get("mod") if mod is TRAINED else mod,
            use_raw=bool(preprocessing.get("use_raw")),
            label_encoder=self.encoder("label") if encoders else None,
            batch_encoder=self.encoder("batch")
            if encoders or preprocessing.get("counts")
            else None,
        )

    def batch_codes(
        self, transform_batch: str | int | Collection[str | int] | None
    ) -> int | list[int] | None:
        """Codes of the training batches named in ``transform_batch`` (a name or a list).

        Raises
        ------
        ValueError
            The model was trained without ``batch_key``, or a name is not a training batch.
        """
        if transform_batch is None:
            return None
        encoder = self.encoder("batch")
        if encoder is None:
            msg = "transform_batch needs a model trained with batch_key=; this one has no batches."
            raise ValueError(msg)
        names = transform_batch_names(transform_batch)
        unknown = [name for name in names if name not in encoder.categories]
        if unknown or not names:
            msg = (
                f"transform_batch {format_names(unknown) if unknown else '[]'} is not a batch of "
                f"the training data; choose from {format_names(encoder.categories)}."
            )
            raise ValueError(msg)
        codes = [encoder.categories.index(name) for name in names]
        return codes if _is_collection(transform_batch) else codes[0]

    def expression(
        self,
        data: SplitData,
        *,
        library_size: float | str = 1e4,
        transform_batch: str | int | Collection[str | int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Decode the expression of a count model for every cell of ``data`` (cells x model genes).

        Deterministic (the posterior mean of the latent). ``library_size``: a
        number each cell is scaled to, or ``"observed"``; ``transform_batch``:
        decode as if every cell came from this training batch (a list averages),
        which gives batch-corrected expression.

        Raises
        ------
        ValueError
            The model is not a count model, or an unknown ``transform_batch``.
        """
        model = self.trainer.model
        if not hasattr(model, "normalized_expression"):
            msg = (
                f"Normalised and batch-corrected expression come from count models (e.g. "
                f"'count_vae'); {self.model!r} has none. Ask for 'reconstruction' instead."
            )
            raise ValueError(msg)
        codes = self.batch_codes(transform_batch)
        keys = getattr(model, "forward_keys", ("x",))
        model.eval()

        def decode(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            inputs = {key: batch[key] for key in keys if key in batch}
            values = model.normalized_expression(
                **inputs, library_size=library_size, transform_batch=codes
            )
            return {"expression": values}

        with torch.inference_mode():
            return collect_predictions(
                data.loader(int(batch_size or self.trainer.eval_batch_size)),
                decode,
                device=self.trainer.device,
                n_cells=len(data),
            )["expression"]

    def outputs(
        self,
        data: SplitData,
        *,
        needed: Collection[str] | None = None,
        batch_size: int | None = None,
        include_inputs: bool = False,
    ) -> dict[str, np.ndarray]:
        """Run the model over ``data``; ``needed`` model outputs must all be produced.

        Raises
        ------
        ValueError
            The model does not produce an output in ``needed``.
        """
        results = self.trainer.predict_dataset(
            data, batch_size=batch_size, include_inputs=include_inputs, outputs=needed
        )
        missing = sorted(set(needed or ()) - set(results))
        if missing:
            msg = f"The model does not produce {format_names(missing)}; it produces {format_names(results)}."
            raise ValueError(msg)
        return results


def _is_collection(value: object) -> bool:
    return isinstance(value, Collection) and not isinstance(value, str)


def transform_batch_names(transform_batch: object) -> list[str]:
    """Return the batch names in ``transform_batch``: one name (a number such as ``1`` too) or a list.

    Examples
    --------
    >>> transform_batch_names("10x"), transform_batch_names(1), transform_batch_names([0, "a"])
    (['10x'], ['1'], ['0', 'a'])
    """
    names = list(transform_batch) if _is_collection(transform_batch) else [transform_batch]
    return [str(name) for name in names]


def run_checkpoint(
    adata: AnnData | MuData | None, key: str, checkpoint: str | Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """Return the bundle of the run recorded under ``adata.uns[key]`` (or ``checkpoint``) and the record.

    Raises
    ------
    MissingKeyError
        No ``checkpoint`` and no run record under ``key``.
    """
    record = None if adata is None else record_holder(adata, key).uns.get(key)
    record = dict(record) if isinstance(record, dict) else {}
    if checkpoint is None:
        if "checkpoint" not in record:
            msg = (
                f"Did not find a scdlkit run under .uns[{key!r}]. Run scdlkit.tl.fit(adata, ..., "
                f"key_added={key!r}) first, pass key= of an earlier run, or checkpoint=<path> of a "
                "trained model."
            )
            raise MissingKeyError(msg)
        checkpoint = record["checkpoint"]
    return Path(str(checkpoint)), record


def load_run(
    path: str | Path,
    *,
    device: str = "auto",
    model: nn.Module | None = None,
) -> LoadedRun:
    """Read a bundle written by :func:`save_run` (or ``Trainer.save_checkpoint(prepared=...)``).

    Only ``config.json`` is read here; the weights are loaded on first use of
    :attr:`LoadedRun.trainer`.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist (moved or deleted), or has no ``config.json``.
    ValueError
        The bundle has no preprocessing record (saved without data), or a damaged
        or too new ``config.json``.
    """
    path = Path(str(path))
    if not path.is_dir():
        msg = (
            f"The checkpoint {str(path)!r} does not exist (moved or deleted?). Pass its new "
            "location (checkpoint= of tl.predict, the reference of tl.map_query)."
        )
        raise FileNotFoundError(msg)
    config = read_config(path)
    if "preprocessing" not in config:
        msg = (
            f"Checkpoint {str(path)!r} has no preprocessing record (it was saved without prepared=); "
            "predict on it with Trainer.predict_dataset(...) instead."
        )
        raise ValueError(msg)
    return LoadedRun(path=path, config=config, device=device, module=model)


def requested_outputs(outputs: str | Collection[str] | None, task: str) -> tuple[str, ...]:
    """Return the outputs to write: the task's defaults, or the checked request.

    Raises
    ------
    ValueError
        An unknown output name.
    """
    if outputs is None:
        return DEFAULT_OUTPUTS[task]
    requested = (outputs,) if isinstance(outputs, str) else tuple(outputs)
    unknown = [name for name in requested if name not in OUTPUTS]
    if unknown:
        msg = f"Unknown outputs {format_names(unknown)}; choose from {format_names(OUTPUTS)}."
        raise ValueError(msg)
    return requested
