"""The fitted state of a :class:`~scdlkit.TaskRunner`: its model, data and run record.

A trained runner holds a :class:`~scdlkit.pipeline.LoadedRun` (the trainer and
its bundle's configuration) whether it was fitted in this session or loaded
from disk, so that inference, evaluation and plots take one path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from .._version import __version__
from ..data import PreparedData, SplitData, get_obs_column
from ..data.record import history_record
from ..data.spec import DataSpec
from ..pipeline import LABEL_TASKS, FittedRun, LoadedRun
from ..train import Trainer
from ..train.options import TrainerOptions


def loaded_record(run: LoadedRun) -> dict[str, Any]:
    """Return the run record of a bundle read from disk, as :meth:`FittedRun.record` builds it.

    ``params`` are the runner settings stored in the bundle's metadata.
    """
    config = run.config
    record: dict[str, Any] = {
        "params": dict(config.get("metadata", {}).get("runner", {})),
        "history": history_record(pd.DataFrame(config["history"])),
        "checkpoint": str(run.path),
        "model": run.model,
        "model_config": config["model"].get("kwargs", {}),
        "task": run.task,
        "best_epoch": config.get("best_epoch"),
        "best_loss": config.get("best_loss"),
        "epochs_run": config.get("epochs_run"),
        "version": __version__,
    }
    encoder = run.encoder("label")
    if encoder is not None:
        record["label_key"] = encoder.key
        record["label_categories"] = list(encoder.categories)
    return record


class FittedState:
    """Attributes and checks of a runner's fitted state (set by ``TaskRunner``)."""

    model: str
    task: str
    spec: DataSpec
    options: TrainerOptions
    prepared_: PreparedData | None
    metrics_: dict[str, Any] | None
    fit_seconds_: float | None
    _run: FittedRun | None
    _bundle: LoadedRun | None
    _adata: AnnData | MuData | None
    _trainer_kwargs: dict[str, Any]

    @property
    def label_key(self) -> str | None:
        """``.obs`` column with the cell labels."""
        return self.spec.label_key

    @property
    def batch_key(self) -> str | None:
        """``.obs`` column with the batches."""
        return self.spec.batch_key

    @property
    def seed(self) -> int:
        """Seed of the split, the initial weights, training and the metrics."""
        return int(self.options.seed)

    @property
    def is_fitted(self) -> bool:
        """Whether the runner holds a trained model."""
        return self._bundle is not None

    @property
    def trainer_(self) -> Trainer | None:
        """The fitted :class:`~scdlkit.Trainer` (``None`` before ``fit``)."""
        return None if self._bundle is None else self._bundle.trainer

    @property
    def checkpoint_(self) -> Path | None:
        """The checkpoint bundle of the fitted model (``None`` before ``fit``)."""
        return None if self._bundle is None else self._bundle.path

    @property
    def history_(self) -> pd.DataFrame:
        """Training history, one row per epoch (see :attr:`scdlkit.Trainer.history_frame`)."""
        self._check_fitted("history_")
        return self._bundle.trainer.history_frame

    @property
    def classes_(self) -> list[str]:
        """Class names of a classification runner, in the order of the model's outputs."""
        self._check_fitted("classes_")
        encoder = self._bundle.encoder("label")
        if encoder is None:
            msg = "This runner was trained without label_key; it has no classes."
            raise ValueError(msg)
        return list(encoder.categories)

    @property
    def n_parameters_(self) -> int:
        """Number of trainable parameters of the model."""
        self._check_fitted("n_parameters_")
        model = self._bundle.trainer.model
        return int(sum(p.numel() for p in model.parameters() if p.requires_grad))

    def _check_fitted(self, method: str) -> None:
        if self._bundle is None:
            msg = (
                f"This TaskRunner is not fitted yet: call runner.fit(adata) (or "
                f"TaskRunner.load(path)) before {method}."
            )
            raise RuntimeError(msg)

    def _check_reconstructs(self, method: str) -> None:
        if self.task in LABEL_TASKS:
            msg = (
                f"{method} needs a model that reconstructs its input, but this runner trains "
                f"{self.model!r} for classification. Use predict()/plot_confusion_matrix(), or a "
                "runner with task='representation' or 'reconstruction'."
            )
            raise ValueError(msg)

    def _check_classifies(self, method: str) -> None:
        if self.task not in LABEL_TASKS:
            msg = (
                f"{method} needs a classification runner; this one trains {self.model!r} for "
                f"{self.task!r}. Use TaskRunner('mlp_classifier', 'classification', "
                "label_key=...) for class predictions."
            )
            raise ValueError(msg)

    def _query(self, adata: AnnData | MuData) -> SplitData:
        """Return every cell of ``adata``, prepared like the training cells."""
        return self._bundle.query(adata)

    def _outputs(
        self,
        data: SplitData,
        *,
        needed: Sequence[str] | None = None,
        include_inputs: bool = False,
    ) -> dict[str, np.ndarray]:
        """Run the model over ``data``; ``needed`` outputs must all be produced."""
        return self._bundle.outputs(data, needed=needed, include_inputs=include_inputs)

    def _obs(self, adata: AnnData | MuData, key: str | None, obs_names: pd.Index) -> Any:
        """Return ``.obs[key]`` as strings aligned to ``obs_names``; ``None`` without the column."""
        if key is None:
            return None
        mod = self._bundle.preprocessing.get("mod")
        try:
            column = get_obs_column(adata, key, obs_names, mod=mod)
        except KeyError:
            return None
        return column.astype(str).to_numpy()

    def _record(self) -> dict[str, Any]:
        """Return the run record the ``pl`` functions read (what :func:`scdlkit.tl.fit` writes)."""
        if self._run is not None:
            return self._run.record(self._run.params(self.options, given=self._trainer_kwargs))
        return loaded_record(self._bundle)
