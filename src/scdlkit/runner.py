"""``TaskRunner``: train, evaluate, plot and save a bundled model in a few calls."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from ._atomic import atomic_directory
from ._errors import format_names
from ._threads import keep_torch_threads
from .data import CategoryEncoder, PreparedData, SplitData, get_obs_column, transform_adata
from .data.fields import ModSpec
from .train.checkpoint import json_safe

#: Default number of epochs (early stopping usually ends training sooner).
DEFAULT_EPOCHS = 200
#: Default cells per minibatch.
DEFAULT_BATCH_SIZE = 256
#: Default epochs without validation improvement before training stops.
DEFAULT_PATIENCE = 20
#: Key of the run record the runner hands to the ``pl`` functions.
_KEY = "TaskRunner"
_RUNNER_FILE = "runner.json"
_CHECKPOINT = "checkpoint"
_LATENT_METHODS = ("umap", "tsne", "pca", "latent")
_ARRAY_METRICS = ("classes", "confusion_matrix")


def held_out(prepared: PreparedData) -> tuple[SplitData, SplitData | None]:
    """Return the split to score (test, else validation, else training) and the kNN reference."""
    for evaluated in (prepared.test, prepared.val):
        if evaluated is not None:
            return evaluated, prepared.train
    return prepared.train, None


class TaskRunner:
    """Train, evaluate, plot and save one of the bundled models, beginner style.

    A thin composition of :func:`~scdlkit.prepare_data`,
    :func:`~scdlkit.create_model`, :class:`~scdlkit.Trainer`, the metrics of
    :mod:`scdlkit.evaluation` and the plots of :mod:`scdlkit.pl`. The runner never
    writes into the data it is given; use :func:`scdlkit.tl.fit` to keep results
    in an AnnData.

    Parameters
    ----------
    model
        Registry name of a bundled or registered model (see :func:`scdlkit.list_models`).
    task
        ``"representation"``, ``"reconstruction"`` or ``"classification"``.
    label_key
        ``.obs`` column with cell labels: the target for classification; otherwise
        used to stratify the split and to score the latent space.
    batch_key
        ``.obs`` column with batches, for the batch-mixing metrics.
    layer, mod, use_raw, use_hvg, n_top_genes, normalize, log1p, scale, split_key, val_size, test_size
        Where the matrix is and how it is prepared, as for :func:`~scdlkit.prepare_data`.
    latent_dim
        Size of the latent space; ``None`` keeps the model's default.
    epochs
        Maximum number of epochs; early stopping on the validation loss usually
        ends training sooner.
    batch_size
        Cells per minibatch.
    lr
        Learning rate.
    device
        ``"auto"`` (CUDA, then MPS, then CPU) or a device string.
    mixed_precision
        Use float16 autocast on CUDA (a no-op on CPU).
    early_stopping_patience
        Epochs without improvement of the validation loss before training stops
        (``None`` trains all ``epochs``); the best weights are kept.
    model_kwargs
        Further options of the model (``hidden_dims``, ``dropout``, ``kl_weight``, ...).
    trainer_kwargs
        Further :class:`~scdlkit.Trainer` options (``weight_decay``, ``scheduler``,
        ``progress``, ...).
    output_dir
        Folder for the checkpoint bundle (``<output_dir>/checkpoint``); ``None``
        uses a temporary folder that is removed with the runner.
    seed
        Seed of the split, the initial weights and training.

    Attributes
    ----------
    trainer_
        The fitted :class:`~scdlkit.Trainer` (``None`` before :meth:`fit`).
    prepared_
        The :class:`~scdlkit.PreparedData` of the fitted data (``None`` after :meth:`load`).
    checkpoint_
        The checkpoint bundle of the fitted model.
    metrics_
        The metrics of the last :meth:`evaluate`.

    Raises
    ------
    ValueError
        An unknown model, a model that does not support ``task``, classification
        without ``label_key``, ``latent_dim`` given twice, or ``seed`` in
        ``trainer_kwargs``.
    TypeError
        ``model`` is not a registry name.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> runner = scdlkit.TaskRunner("vae", label_key="bulk_labels", use_raw=True, epochs=5)
    >>> runner = runner.fit(adata)
    >>> runner.encode(adata).shape
    (700, 32)
    >>> metrics = runner.evaluate()  # held-out test cells
    >>> 0.0 <= metrics["knn_accuracy"] <= 1.0
    True
    """

    def __init__(
        self,
        model: str = "vae",
        task: str = "representation",
        *,
        label_key: str | None = None,
        batch_key: str | None = None,
        layer: str | None = None,
        mod: ModSpec = None,
        use_raw: bool = False,
        use_hvg: bool = False,
        n_top_genes: int = 2000,
        normalize: bool = False,
        log1p: bool = False,
        scale: bool = False,
        split_key: str | None = None,
        val_size: float = 0.15,
        test_size: float = 0.15,
        latent_dim: int | None = None,
        epochs: int = DEFAULT_EPOCHS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        lr: float = 1e-3,
        device: str = "auto",
        mixed_precision: bool = False,
        early_stopping_patience: int | None = DEFAULT_PATIENCE,
        model_kwargs: Mapping[str, Any] | None = None,
        trainer_kwargs: Mapping[str, Any] | None = None,
        output_dir: str | os.PathLike | None = None,
        seed: int = 42,
    ) -> None:
        from .tl._fit import _model_task

        if not isinstance(model, str):
            msg = (
                f"TaskRunner takes a registry name such as 'vae', got {type(model).__name__}. "
                "Train your own module with scdlkit.tl.fit(adata, model=module) or scdlkit.Trainer."
            )
            raise TypeError(msg)
        self.task = _model_task(model, task)
        if self.task == "classification" and label_key is None:
            msg = "task='classification' needs label_key= (the .obs column with the cell labels)."
            raise ValueError(msg)
        clash = sorted({"seed", "model", "task"} & set(trainer_kwargs or {}))
        if clash:
            msg = f"Pass {', '.join(clash)} to TaskRunner itself, not in trainer_kwargs."
            raise ValueError(msg)
        model_kwargs = dict(model_kwargs or {})
        if latent_dim is not None:
            if model_kwargs.get("latent_dim", latent_dim) != latent_dim:
                msg = (
                    f"latent_dim={latent_dim} and model_kwargs['latent_dim']="
                    f"{model_kwargs['latent_dim']} disagree; pass it once."
                )
                raise ValueError(msg)
            model_kwargs["latent_dim"] = int(latent_dim)
        self.model = model
        self.label_key, self.batch_key = label_key, batch_key
        self.data_options: dict[str, Any] = {
            "layer": layer,
            "mod": mod,
            "use_raw": use_raw,
            "use_hvg": use_hvg,
            "n_top_genes": n_top_genes,
            "normalize": normalize,
            "log1p": log1p,
            "scale": scale,
            "split_key": split_key,
            "val_size": val_size,
            "test_size": test_size,
        }
        self.model_kwargs = model_kwargs
        self.trainer_options: dict[str, Any] = {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "device": device,
            "mixed_precision": mixed_precision,
            "early_stopping_patience": early_stopping_patience,
            **dict(trainer_kwargs or {}),
        }
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.seed = int(seed)

        self.trainer_: Any = None
        self.prepared_: PreparedData | None = None
        self.checkpoint_: Path | None = None
        self.metrics_: dict[str, Any] | None = None
        self.fit_seconds_: float | None = None
        self._adata: AnnData | MuData | None = None
        self._preprocessing: dict[str, Any] = {}
        self._label_encoder: CategoryEncoder | None = None
        self._temporary: tempfile.TemporaryDirectory | None = None

    def __repr__(self) -> str:
        state = "fitted" if self.is_fitted else "not fitted"
        return f"TaskRunner(model={self.model!r}, task={self.task!r}, {state})"

    # ------------------------------------------------------------------ settings
    def get_params(self) -> dict[str, Any]:
        """Return the constructor arguments, as JSON-able values (what :meth:`save` stores)."""
        return {
            "model": self.model,
            "task": self.task,
            "label_key": self.label_key,
            "batch_key": self.batch_key,
            **self.data_options,
            "model_kwargs": dict(self.model_kwargs),
            **{k: v for k, v in self.trainer_options.items() if k in _TRAINER_ARGUMENTS},
            "trainer_kwargs": {
                k: v for k, v in self.trainer_options.items() if k not in _TRAINER_ARGUMENTS
            },
            "output_dir": None if self.output_dir is None else str(self.output_dir),
            "seed": self.seed,
        }

    @property
    def is_fitted(self) -> bool:
        """Whether the runner holds a trained model."""
        return self.trainer_ is not None

    @property
    def history_(self) -> pd.DataFrame:
        """Training history, one row per epoch (see :attr:`scdlkit.Trainer.history_frame`)."""
        self._check_fitted("history_")
        return self.trainer_.history_frame

    @property
    def classes_(self) -> list[str]:
        """Class names of a classification runner, in the order of the model's outputs."""
        self._check_fitted("classes_")
        if self._label_encoder is None:
            msg = "This runner was trained without label_key; it has no classes."
            raise ValueError(msg)
        return list(self._label_encoder.categories)

    @property
    def n_parameters_(self) -> int:
        """Number of trainable parameters of the model."""
        self._check_fitted("n_parameters_")
        return int(sum(p.numel() for p in self.trainer_.model.parameters() if p.requires_grad))

    def _check_fitted(self, method: str) -> None:
        if self.trainer_ is None:
            msg = (
                f"This TaskRunner is not fitted yet: call runner.fit(adata) (or "
                f"TaskRunner.load(path)) before {method}."
            )
            raise RuntimeError(msg)

    def _check_reconstructs(self, method: str) -> None:
        if self.task == "classification":
            msg = (
                f"{method} needs a model that reconstructs its input, but this runner trains "
                f"{self.model!r} for classification. Use predict()/plot_confusion_matrix(), or a "
                "runner with task='representation' or 'reconstruction'."
            )
            raise ValueError(msg)

    # ------------------------------------------------------------------ training
    def fit(self, adata: AnnData | MuData) -> TaskRunner:
        """Prepare the data, build the model and train it; returns ``self``.

        The cells are split into train/validation/test (``seed``); the model is
        trained on the training cells with early stopping on the validation
        cells, and the test cells are kept for :meth:`evaluate`. ``adata`` is not
        modified.

        Raises
        ------
        MissingKeyError
            A layer, modality or ``.obs`` column that does not exist.
        ValueError
            Invalid data (see :func:`~scdlkit.prepare_data`), a single class for
            classification, or an option the model does not accept.
        """
        from .data import prepare_data

        prepared = prepare_data(
            adata,
            label_key=self.label_key,
            batch_key=self.batch_key,
            random_state=self.seed,
            **self.data_options,
        )
        return self._fit_prepared(adata, prepared)

    def _fit_prepared(self, adata: AnnData | MuData, prepared: PreparedData) -> TaskRunner:
        """Train on an already prepared split (shared by :func:`compare_models`)."""
        from .tl._fit import _build_model, _check_labels
        from .train import Trainer

        _check_labels(self.task, self.label_key, prepared)
        module = _build_model(self.model, prepared, self.task, self.model_kwargs, self.seed)
        options = {"progress": False, **self.trainer_options}
        trainer = Trainer(module, self.task, seed=self.seed, **options)
        started = time.perf_counter()
        trainer.fit(prepared.train, prepared.val)
        self.fit_seconds_ = time.perf_counter() - started
        self.trainer_, self.prepared_, self._adata, self.metrics_ = trainer, prepared, adata, None
        self._preprocessing = prepared.preprocessing
        self._label_encoder = prepared.label_encoder
        self.checkpoint_ = trainer.save_checkpoint(
            self._checkpoint_dir(),
            prepared=prepared,
            overwrite=True,
            include_training_state=False,
            metadata={"runner": json_safe(self.get_params())},
        )
        return self

    def _checkpoint_dir(self) -> Path:
        if self.output_dir is not None:
            return self.output_dir / _CHECKPOINT
        if self._temporary is None:
            self._temporary = tempfile.TemporaryDirectory(
                prefix="scdlkit-runner-", ignore_cleanup_errors=True
            )
        return Path(self._temporary.name) / _CHECKPOINT

    # ------------------------------------------------------------------ inference
    def _query(self, adata: AnnData | MuData) -> SplitData:
        return transform_adata(adata, self._preprocessing)

    def _outputs(self, data: SplitData, *, include_inputs: bool = False) -> dict[str, np.ndarray]:
        return self.trainer_.predict_dataset(data, include_inputs=include_inputs)

    def encode(self, adata: AnnData | MuData) -> np.ndarray:
        """Latent representation of every cell of ``adata`` (cells x ``latent_dim``, float32).

        Genes are matched by name with those the model was trained on (extra genes
        are ignored, missing genes are an error); the training preprocessing is applied.
        """
        self._check_fitted("encode()")
        return self._outputs(self._query(adata))["latent"]

    def reconstruct(self, adata: AnnData | MuData) -> np.ndarray:
        """Reconstruction of every cell (cells x model features, in the model's input space).

        Raises
        ------
        ValueError
            The runner trains a classifier.
        """
        self._check_fitted("reconstruct()")
        self._check_reconstructs("reconstruct()")
        return self._outputs(self._query(adata))["reconstruction"]

    def predict(self, adata: AnnData | MuData) -> pd.Categorical | np.ndarray:
        """Predicted labels (classification, as a categorical) or the reconstruction (otherwise)."""
        self._check_fitted("predict()")
        if self.task != "classification":
            return self.reconstruct(adata)
        logits = self._outputs(self._query(adata))["logits"]
        return self._label_encoder.decode(logits.argmax(axis=1))

    def predict_proba(self, adata: AnnData | MuData) -> pd.DataFrame:
        """Class probabilities of every cell (a DataFrame, one column per class).

        Raises
        ------
        ValueError
            The runner does not train a classifier.
        """
        from scipy.special import softmax

        self._check_fitted("predict_proba()")
        if self.task != "classification":
            msg = (
                f"predict_proba() needs a classification runner; this one trains for {self.task!r}."
            )
            raise ValueError(msg)
        data = self._query(adata)
        probabilities = softmax(self._outputs(data)["logits"].astype(np.float64), axis=1)
        return pd.DataFrame(probabilities, index=data.obs_names, columns=self.classes_)

    # ------------------------------------------------------------------ evaluation
    def _obs(self, adata: AnnData | MuData, key: str | None, obs_names: pd.Index) -> Any:
        """``.obs[key]`` as strings aligned to ``obs_names``; ``None`` without the column."""
        if key is None:
            return None
        try:
            column = get_obs_column(adata, key, obs_names, mod=self._preprocessing.get("mod"))
        except KeyError:
            return None
        return column.astype(str).to_numpy()

    def _evaluation_inputs(self, adata: AnnData | MuData | None) -> tuple[dict[str, Any], str]:
        """Model outputs, labels and references of the evaluated cells."""
        if adata is None:
            if self.prepared_ is None:
                msg = (
                    "This runner was loaded from disk and keeps no training data; pass the cells "
                    "to score, e.g. runner.evaluate(adata)."
                )
                raise ValueError(msg)
            evaluated, reference = held_out(self.prepared_)
            labels = None if evaluated.y is None else self._label_encoder.decode(evaluated.y)
            batches = None
            if evaluated.batch is not None:
                batches = self.prepared_.batch_encoder.decode(evaluated.batch)
            where = f"{evaluated.name} split"
        else:
            evaluated, reference = self._query(adata), None
            labels = self._obs(adata, self.label_key, evaluated.obs_names)
            batches = self._obs(adata, self.batch_key, evaluated.obs_names)
            where = "all cells"
        outputs = self._outputs(evaluated, include_inputs=True)
        inputs: dict[str, Any] = {
            "observed": outputs["x"],
            "reconstruction": outputs.get("reconstruction"),
            "latent": outputs.get("latent"),
            "labels": None if labels is None else np.asarray(labels, dtype=str),
            "batches": None if batches is None else np.asarray(batches, dtype=str),
        }
        if reference is not None and reference.y is not None and "latent" in outputs:
            inputs["reference_latent"] = self._outputs(reference)["latent"]
            inputs["reference_labels"] = np.asarray(
                self._label_encoder.decode(reference.y), dtype=str
            )
        if "logits" in outputs:
            from scipy.special import softmax

            inputs["probabilities"] = softmax(outputs["logits"].astype(np.float64), axis=1)
            inputs["predictions"] = np.asarray(self.classes_, dtype=object)[
                outputs["logits"].argmax(axis=1)
            ]
            inputs["classes"] = self.classes_
        return inputs, where

    def evaluate(
        self,
        adata: AnnData | MuData | None = None,
        *,
        metrics: str | Sequence[str] | None = None,
        n_neighbors: int = 15,
        clustering: Literal["leiden", "kmeans"] = "leiden",
        resolution: float = 1.0,
    ) -> dict[str, Any]:
        """Score the model, by default on the held-out test cells of the fitted data.

        Parameters
        ----------
        adata
            Cells to score instead (all of them), e.g. another dataset; its
            ``label_key``/``batch_key`` columns are used when present.
        metrics
            Metric groups: any of ``"reconstruction"``, ``"representation"``,
            ``"classification"``; defaults to reconstruction and representation
            for autoencoders and classification for classifiers.
        n_neighbors, clustering, resolution
            See :func:`scdlkit.evaluation.representation_metrics`.

        Returns
        -------
        Metric name → value (see :mod:`scdlkit.evaluation`), also kept in
        :attr:`metrics_`. The kNN classifier of the representation metrics learns
        from the training cells when scoring the fitted data, and is
        cross-validated on ``adata`` otherwise.

        Raises
        ------
        RuntimeError
            The runner is not fitted.
        ValueError
            ``adata=None`` for a runner loaded from disk, or classification metrics
            for cells without labels.
        """
        from .evaluation._task import metric_groups, output_metrics

        self._check_fitted("evaluate()")
        groups = metric_groups(self.task, metrics)
        inputs, where = self._evaluation_inputs(adata)
        if "classification" in groups and inputs["labels"] is None:
            msg = (
                f"Classification metrics need the true labels in .obs[{self.label_key!r}], which "
                "the scored cells lack."
            )
            raise ValueError(msg)
        result = output_metrics(
            groups,
            n_neighbors=n_neighbors,
            clustering=clustering,
            resolution=resolution,
            seed=self.seed,
            **inputs,
        )
        result["evaluated"] = where
        self.metrics_ = result
        return result

    # ------------------------------------------------------------------ plots
    def _record(self) -> dict[str, Any]:
        """Return the run record in the shape :func:`scdlkit.tl.fit` writes, for the ``pl`` functions."""
        from . import __version__
        from .tl._fit import _history_record

        record: dict[str, Any] = {
            "history": _history_record(self.trainer_.history_frame),
            "checkpoint": str(self.checkpoint_),
            "model": self.model,
            "task": self.task,
            "best_epoch": self.trainer_.best_epoch,
            "version": __version__,
        }
        if self._label_encoder is not None:
            record["label_key"] = self.label_key
            record["label_categories"] = self.classes_
        return record

    def _holder(self, obs_names: pd.Index, **slots: Any) -> AnnData:
        from ._uns import h5ad_safe

        holder = AnnData(obs=pd.DataFrame(index=pd.Index(obs_names).astype(str)), **slots)
        holder.uns[_KEY] = h5ad_safe(self._record())
        return holder

    def _plot_cells(self, adata: AnnData | MuData | None) -> tuple[AnnData | MuData, SplitData]:
        """Return the data and cells a plot shows: the given ``adata``, else the fitted data's held-out cells."""
        if adata is not None:
            return adata, self._query(adata)
        if self.prepared_ is None or self._adata is None:
            msg = "This runner was loaded from disk and keeps no data; pass adata= to plot."
            raise ValueError(msg)
        return self._adata, held_out(self.prepared_)[0]

    def plot_losses(self, *, components: bool = False, **kwargs: Any) -> Any:
        """Training and validation loss per epoch (:func:`scdlkit.pl.history`).

        ``kwargs`` go to :func:`scdlkit.pl.history` (``log_y``, ``ax``, ``show``,
        ``save``, ``return_fig``).
        """
        from .pl import history

        self._check_fitted("plot_losses()")
        return history(self._holder(pd.Index([])), key=_KEY, components=components, **kwargs)

    def plot_latent(
        self,
        adata: AnnData | MuData | None = None,
        *,
        method: Literal["umap", "tsne", "pca", "latent"] = "umap",
        color: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Plot the latent space of every cell of ``adata`` (default: the fitted data).

        Parameters
        ----------
        adata
            Cells to embed; defaults to all cells the runner was fitted on.
        method
            ``"umap"`` (:func:`scanpy.tl.umap` on a neighbour graph of the latent),
            ``"tsne"``, ``"pca"`` (of the latent) or ``"latent"`` (its first two dimensions).
        color
            ``.obs`` columns to colour by; defaults to ``label_key`` and ``batch_key``.
        **kwargs
            Passed to the scanpy plot function (``show``, ``return_fig``, ``save``, ...).
        """
        import scanpy as sc

        self._check_fitted("plot_latent()")
        if method not in _LATENT_METHODS:
            msg = f"Unknown method {method!r}; use one of {format_names(_LATENT_METHODS)}."
            raise ValueError(msg)
        data = self._adata if adata is None else adata
        if data is None:
            msg = "This runner was loaded from disk and keeps no data; pass adata= to plot."
            raise ValueError(msg)
        query = self._query(data)
        latent = self._outputs(query)["latent"]
        holder = self._holder(query.obs_names, X=latent)
        holder.obsm["X_latent"] = latent
        names = [color] if isinstance(color, str) else list(color or [])
        if color is None:
            names = [key for key in (self.label_key, self.batch_key) if key is not None]
        mod = self._preprocessing.get("mod")
        for name in names:
            holder.obs[name] = get_obs_column(data, name, query.obs_names, mod=mod).values
        options = {"color": names or None, **kwargs}
        if method == "latent":
            return sc.pl.embedding(holder, basis="latent", **options)
        if method == "pca":
            sc.pp.pca(holder, n_comps=min(2, latent.shape[1]), random_state=self.seed)
            return sc.pl.pca(holder, **options)
        if method == "tsne":
            sc.tl.tsne(holder, use_rep="X_latent", random_state=self.seed)
            return sc.pl.tsne(holder, **options)
        with keep_torch_threads():
            sc.pp.neighbors(holder, use_rep="X_latent", random_state=self.seed)
            sc.tl.umap(holder, random_state=self.seed)
        return sc.pl.umap(holder, **options)

    def plot_reconstruction(
        self,
        adata: AnnData | MuData | None = None,
        *,
        genes: str | Sequence[str] | None = None,
        n_genes: int = 4,
        **kwargs: Any,
    ) -> Any:
        """Observed against reconstructed values per gene (:func:`scdlkit.pl.reconstruction`).

        Parameters
        ----------
        adata
            Cells to show (all of them); defaults to the fitted data's test cells.
        genes
            Genes to show (model features); defaults to the ``n_genes`` most
            variable ones among the shown cells.
        n_genes
            How many genes to pick when ``genes`` is not given.
        **kwargs
            Passed to :func:`scdlkit.pl.reconstruction` (``ncols``, ``show``, ``return_fig``, ...).

        Raises
        ------
        ValueError
            The runner trains a classifier, or several modalities were used side by side.
        """
        from .data import resolve_fields
        from .data.transform import fit_block_rows, iter_selected_rows
        from .pl import reconstruction

        self._check_fitted("plot_reconstruction()")
        self._check_reconstructs("plot_reconstruction()")
        mod = self._preprocessing.get("mod")
        if mod is not None and not isinstance(mod, str):
            msg = (
                "plot_reconstruction() shows one modality; for several use scdlkit.tl.fit, "
                "scdlkit.tl.predict and scdlkit.pl.reconstruction on the MuData."
            )
            raise ValueError(msg)
        data, cells = self._plot_cells(adata)
        outputs = self._outputs(cells, include_inputs=True)
        features = [str(name) for name in self._preprocessing["feature_names"]]
        if genes is None:
            order = np.argsort(-outputs["x"].var(axis=0), kind="stable")[: max(1, int(n_genes))]
            genes = [features[i] for i in order]
        fields = resolve_fields(
            data,
            layer=self._preprocessing.get("layer"),
            mod=mod,
            use_raw=bool(self._preprocessing.get("use_raw")),
        )
        order = np.argsort(cells.rows, kind="stable")
        blocks = [
            block[local]
            for _, block, local in iter_selected_rows(
                fields.matrix, cells.rows[order], block_rows=fit_block_rows(fields.matrix.shape[1])
            )
        ]
        observed = _stack(blocks)[np.argsort(order, kind="stable")]
        holder = self._holder(
            fields.obs_names[cells.rows],
            var=pd.DataFrame(index=fields.feature_names.astype(str)),
            layers={"observed": observed},
        )
        holder.obsm[f"{_KEY}_reconstruction"] = outputs["reconstruction"]
        holder.uns[_KEY]["reconstruction_features"] = np.asarray(features, dtype=object)
        return reconstruction(holder, genes=genes, key=_KEY, layer="observed", **kwargs)

    def plot_confusion_matrix(
        self,
        adata: AnnData | MuData | None = None,
        *,
        normalize: Literal["true", "pred"] | None = "true",
        **kwargs: Any,
    ) -> Any:
        """Confusion matrix of the predictions (:func:`scdlkit.pl.confusion`).

        Parameters
        ----------
        adata
            Cells to show (all of them, with labels in ``label_key``); defaults to
            the fitted data's test cells.
        normalize
            ``"true"`` (rows sum to 1), ``"pred"`` (columns sum to 1) or ``None`` (counts).
        **kwargs
            Passed to :func:`scdlkit.pl.confusion` (``ax``, ``cmap``, ``show``, ``return_fig``, ...).

        Raises
        ------
        ValueError
            The runner does not train a classifier.
        """
        from .pl import confusion

        self._check_fitted("plot_confusion_matrix()")
        if self.task != "classification":
            msg = (
                "plot_confusion_matrix() needs a classification runner; this one trains "
                f"{self.model!r} for {self.task!r}."
            )
            raise ValueError(msg)
        data, cells = self._plot_cells(adata)
        logits = self._outputs(cells)["logits"]
        holder = self._holder(cells.obs_names)
        holder.obs[f"{_KEY}_prediction"] = self._label_encoder.decode(logits.argmax(axis=1))
        truth = self._obs(data, self.label_key, cells.obs_names)
        if truth is not None:
            holder.obs[self.label_key] = truth
        return confusion(holder, key=_KEY, normalize=normalize, **kwargs)

    # ------------------------------------------------------------------ reports and files
    def save_report(
        self,
        path: str | os.PathLike,
        *,
        latent_method: Literal["umap", "tsne", "pca", "latent"] = "umap",
    ) -> Path:
        """Write a Markdown report with the metrics (also as CSV) and the figures.

        Evaluates on the held-out cells first when :meth:`evaluate` has not run.
        Files written into the folder ``path``: ``report.md``, ``metrics.csv``
        (columns ``metric``, ``value``), ``losses.png``, and when the data is at
        hand ``latent.png``, ``reconstruction.png`` (autoencoders) or
        ``confusion_matrix.png`` with ``per_class.csv`` (classifiers).

        Returns
        -------
        Path of ``report.md``.
        """
        from .evaluation._report import write_report

        self._check_fitted("save_report()")
        if self.metrics_ is None:
            self.evaluate()
        return write_report(self, Path(path), latent_method=latent_method)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Save the fitted runner to the folder ``path`` (its settings, metrics and model).

        The folder holds ``runner.json`` and the checkpoint bundle ``checkpoint/``
        (weights-only, loadable without running code). The training data is not saved.

        Raises
        ------
        RuntimeError
            The runner is not fitted.
        FileExistsError
            ``path`` exists and ``overwrite`` is ``False``.
        """
        from . import __version__

        self._check_fitted("save()")
        with atomic_directory(path, overwrite=overwrite, what="Runner folder") as staging:
            shutil.copytree(self.checkpoint_, staging / _CHECKPOINT)
            payload = {
                "format": "scdlkit.TaskRunner",
                "scdlkit_version": __version__,
                "params": self.get_params(),
                "metrics": self.metrics_,
                "fit_seconds": self.fit_seconds_,
            }
            (staging / _RUNNER_FILE).write_text(json.dumps(json_safe(payload), indent=2))
        path = Path(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "auto") -> TaskRunner:
        """Load a runner written by :meth:`save`; it can encode, predict, evaluate and plot new data.

        Raises
        ------
        FileNotFoundError
            ``path`` is not a saved runner.
        """
        from .train import Trainer

        path = Path(path)
        settings_file = path / _RUNNER_FILE
        if not settings_file.is_file():
            msg = f"{str(path)!r} is not a saved TaskRunner (no {_RUNNER_FILE}); save one with runner.save(path)."
            raise FileNotFoundError(msg)
        payload = json.loads(settings_file.read_text())
        params = {**payload["params"], "device": device}
        runner = cls(**params)
        trainer = Trainer.load_checkpoint(path / _CHECKPOINT, device=device, progress=False)
        config = trainer.checkpoint_config
        runner.trainer_, runner.checkpoint_ = trainer, path / _CHECKPOINT
        runner._preprocessing = config["preprocessing"]
        encoder = config.get("label_encoder")
        runner._label_encoder = None if encoder is None else CategoryEncoder.from_dict(encoder)
        runner.fit_seconds_ = payload.get("fit_seconds")
        metrics = payload.get("metrics")
        if metrics is not None:
            for key in _ARRAY_METRICS:
                if key in metrics:
                    metrics[key] = np.asarray(metrics[key])
            if "per_class" in metrics:
                metrics["per_class"] = {k: np.asarray(v) for k, v in metrics["per_class"].items()}
        runner.metrics_ = metrics
        return runner


#: Trainer options that are TaskRunner arguments of their own.
_TRAINER_ARGUMENTS = (
    "epochs",
    "batch_size",
    "lr",
    "device",
    "mixed_precision",
    "early_stopping_patience",
)


def _stack(blocks: list[Any]) -> Any:
    import scipy.sparse as sp

    if any(sp.issparse(block) for block in blocks):
        return sp.vstack([sp.csr_matrix(block) for block in blocks], format="csr")
    return np.concatenate([np.asarray(block) for block in blocks])
