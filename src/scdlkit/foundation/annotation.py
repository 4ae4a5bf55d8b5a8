"""Cell-type annotation with scGPT: compare adaptation strategies, predict, save and reload."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from mudata import MuData
from scanpy import logging as logg
from torch import nn

from .._errors import format_names
from ..data import CategoryEncoder
from ..data.fields import ModSpec
from ..data.splits import SPLIT_NAMES, check_split_sizes, draw_split, split_categorical
from ..train.device import resolve_device
from .checkpoint import checkpoint_identity, load_scgpt
from .data import DEFAULT_MIN_GENE_OVERLAP, ArrayLoader, TokenLoader, TokenSource
from .heads import AnnotationModel, ClassifierHead, HeadOnlyModel, ProbeHead
from .metrics import METRICS, classification_metrics, softmax
from .model import ScGPTModel
from .peft import apply_strategy
from .persistence import check_tensors, read_runner_dir, verify_identity, write_runner_dir
from .strategies import (
    FROZEN_STRATEGIES,
    BaseConfig,
    FrozenProbeConfig,
    TrainedConfig,
    config_from_dict,
    resolve_configs,
)
from .task import EmbeddingTask
from .tokenizer import ScGPTTokenizer

#: Columns of :attr:`AnnotationRunner.comparison_`.
COMPARISON_COLUMNS = (
    "strategy",
    *(f"val_{m}" for m in METRICS),
    *(f"test_{m}" for m in METRICS),
    "trainable_parameters",
    "seconds",
    "epochs_run",
    "best_epoch",
    "rank",
)


class AnnotationPrediction(NamedTuple):
    """Predictions of :meth:`AnnotationRunner.predict` (unpacks as a 4-tuple).

    Attributes
    ----------
    label_codes
        int64 class code per cell.
    labels
        Class names, categorical with the training categories.
    probabilities
        float32 ``(n_cells, n_classes)`` softmax probabilities.
    latent
        float32 ``(n_cells, embsize)`` L2-normalised ``<cls>`` embeddings of the adapted encoder.
    """

    label_codes: np.ndarray
    labels: pd.Categorical
    probabilities: np.ndarray
    latent: np.ndarray


def _build_model(
    base: ScGPTModel,
    config: BaseConfig,
    n_classes: int,
    *,
    seed: int,
) -> tuple[AnnotationModel, list[str]]:
    """Build the annotation model of one strategy; also return the names of the tensors it trains."""
    dim = base.embsize
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(config, FrozenProbeConfig):
            head: nn.Module = ProbeHead(dim, n_classes)
        else:
            head = ClassifierHead(dim, n_classes, dropout=config.head_dropout)
    device = next(base.backbone.parameters()).device
    head = head.to(device)
    if config.strategy in FROZEN_STRATEGIES:
        model = AnnotationModel(base.backbone, head, frozen_backbone=True)
        return model, [f"head.{name}" for name, _ in head.named_parameters()]
    backbone = copy.deepcopy(base.backbone)
    apply_strategy(backbone, config, generator=torch.Generator().manual_seed(seed))
    model = AnnotationModel(backbone, head, frozen_backbone=False)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    return model, names


class AnnotationRunner:
    """Adapt scGPT to cell-type annotation with several strategies and keep the best.

    Usually created by :func:`adapt_annotation`, which also runs
    :meth:`fit_compare`. Experimental.

    Parameters
    ----------
    checkpoint
        scGPT checkpoint folder, or a model from :func:`~scdlkit.foundation.load_scgpt`.
    label_key
        ``.obs`` column with the cell types.
    strategies
        Strategies to compare: ``frozen_probe``, ``head``, ``full_finetune``,
        ``lora``, ``adapter``, ``prefix_tuning``, ``ia3``.
    strategy_configs
        Strategy → its config (e.g. :class:`~scdlkit.foundation.LoRAConfig`) or a
        dict of fields to override.
    layer, use_raw, mod, gene_symbols
        Where the expression and the gene symbols live.
    batch_size
        Cells per minibatch.
    max_len
        Tokens per cell including ``<cls>`` (default: the checkpoint's ``max_seq_len``).
    val_size, test_size
        Shares of cells held out (stratified by label) for model selection and testing.
    random_state
        Seed of the split, the tokeniser, initialisation and training.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    output_dir
        When given, ``comparison.csv`` and ``history_<strategy>.csv`` are written there.
    min_gene_overlap
        Share (below 1) or number of genes that must be in the vocabulary.
    progress
        Show training progress bars (``None``: only in a terminal).

    Attributes
    ----------
    comparison_
        One row per strategy: validation and test macro-F1, accuracy, balanced
        accuracy and AUROC (one-vs-rest, from softmax probabilities), trainable
        parameters, seconds, epochs run, best epoch and rank.
    best_strategy_
        The strategy with the best validation macro-F1 (ties: balanced accuracy,
        accuracy, fewer trainable parameters, less time, listed order).
    models_
        Strategy → fitted :class:`~scdlkit.foundation.heads.AnnotationModel`.
    histories_
        Strategy → training history DataFrame (empty for ``frozen_probe``).
    label_encoder_
        The classes, in code order.
    split_
        ``train``/``val``/``test`` per cell of the data ``fit_compare`` saw.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | ScGPTModel,
        *,
        label_key: str,
        strategies: tuple[str, ...] | list[str] = ("frozen_probe", "head"),
        strategy_configs: Mapping[str, BaseConfig | Mapping[str, Any]] | None = None,
        layer: str | None = None,
        use_raw: bool = False,
        mod: ModSpec = None,
        gene_symbols: str | None = None,
        batch_size: int = 64,
        max_len: int | None = None,
        val_size: float = 0.15,
        test_size: float = 0.15,
        random_state: int = 42,
        device: str = "auto",
        output_dir: str | os.PathLike | None = None,
        min_gene_overlap: float | int = DEFAULT_MIN_GENE_OVERLAP,
        progress: bool | None = False,
    ) -> None:
        self.configs = resolve_configs(strategies, strategy_configs)
        check_split_sizes(val_size, test_size)
        if val_size == 0 and len(self.configs) > 1:
            msg = (
                "val_size=0 leaves nothing to choose the best strategy on; pass val_size > 0 or a "
                "single strategy."
            )
            raise ValueError(msg)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            msg = f"batch_size must be a positive integer, got {batch_size!r}."
            raise ValueError(msg)
        if max_len is not None and (not isinstance(max_len, int) or max_len < 2):
            msg = f"max_len must be an integer >= 2 or None, got {max_len!r}."
            raise ValueError(msg)
        if not isinstance(label_key, str):
            msg = f"label_key must be the name of an .obs column, got {label_key!r}."
            raise TypeError(msg)
        self.checkpoint = checkpoint
        self.label_key = label_key
        self.strategies = tuple(self.configs)
        self.layer, self.use_raw, self.mod, self.gene_symbols = layer, use_raw, mod, gene_symbols
        self.batch_size = batch_size
        self.max_len = max_len
        self.val_size, self.test_size = val_size, test_size
        self.random_state = int(random_state)
        self.device = resolve_device(device)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.min_gene_overlap = min_gene_overlap
        self.progress = progress
        self._base: ScGPTModel | None = checkpoint if isinstance(checkpoint, ScGPTModel) else None
        self.comparison_: pd.DataFrame | None = None
        self.best_strategy_: str | None = None
        self.models_: dict[str, AnnotationModel] = {}
        self.histories_: dict[str, pd.DataFrame] = {}
        self.label_encoder_: CategoryEncoder | None = None
        self.split_: pd.Series | None = None
        self.tokenizer_: ScGPTTokenizer | None = None
        self._trainable: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        state = f"best_strategy_={self.best_strategy_!r}" if self.best_strategy_ else "not fitted"
        return f"AnnotationRunner(label_key={self.label_key!r}, strategies={list(self.strategies)}, {state})"

    # ------------------------------------------------------------------ helpers
    @property
    def base_model(self) -> ScGPTModel:
        """The frozen base checkpoint (loaded on first use)."""
        if self._base is None:
            self._base = load_scgpt(self.checkpoint, device=self.device)
        return self._base

    def _check_fitted(self) -> None:
        if not self.models_ or self.label_encoder_ is None:
            msg = "This AnnotationRunner is not fitted; call fit_compare(adata) or AnnotationRunner.load(path)."
            raise RuntimeError(msg)

    def _strategy(self, strategy: str | None) -> str:
        self._check_fitted()
        name = strategy or self.best_strategy_
        if name not in self.models_:
            msg = f"Strategy {name!r} was not fitted; fitted strategies: {format_names(self.models_)}."
            raise ValueError(msg)
        return name

    def _source(self, adata: AnnData | MuData, *, label_key: str | None = None) -> TokenSource:
        return TokenSource.from_adata(
            adata, self.base_model.vocab, layer=self.layer, use_raw=self.use_raw,
            mod=self.mod if isinstance(adata, MuData) else None, gene_symbols=self.gene_symbols,
            label_key=label_key, min_gene_overlap=self.min_gene_overlap,
        )  # fmt: skip

    def _trainer(self, model: nn.Module, task: Any, config: TrainedConfig | None = None) -> Any:
        from ..train import Trainer

        settings: dict[str, Any] = {}
        if config is not None:
            settings = {
                "epochs": config.epochs, "lr": config.lr, "weight_decay": config.weight_decay,
                "early_stopping_patience": config.early_stopping_patience,
                "grad_clip": config.grad_clip,
            }  # fmt: skip
        return Trainer(
            model, task, batch_size=self.batch_size, device=self.device, seed=self.random_state,
            progress=self.progress, **settings,
        )  # fmt: skip

    # ------------------------------------------------------------------ fitting
    def fit_compare(self, adata: AnnData | MuData) -> AnnotationRunner:
        """Split the cells, fit every strategy and rank them on the validation split.

        Parameters
        ----------
        adata
            AnnData or MuData with non-negative expression and ``.obs[label_key]``.

        Returns
        -------
        ``self``, with :attr:`comparison_`, :attr:`best_strategy_`, :attr:`models_`
        and :attr:`histories_` set.

        Raises
        ------
        ValueError
            Fewer than two classes, missing labels, too few genes in the
            vocabulary, negative values, or a split that ends up empty.
        """
        start = logg.info(f"adapting scGPT to {self.label_key!r} with {', '.join(self.strategies)}")
        base = self.base_model
        source = self._source(adata, label_key=self.label_key)
        encoder = CategoryEncoder.fit(source.labels, key=self.label_key)
        if encoder.n_categories < 2:
            msg = (
                f"label_key {self.label_key!r} has a single class ({encoder.categories[0]!r}); "
                "annotation needs at least two."
            )
            raise ValueError(msg)
        codes = encoder.encode(source.labels)
        split = draw_split(
            source.n_obs, labels=codes, val_size=self.val_size, test_size=self.test_size,
            random_state=self.random_state,
        )  # fmt: skip
        rows = {name: np.flatnonzero(split == name) for name in SPLIT_NAMES}
        tokenizer = ScGPTTokenizer.from_model(base, max_len=self.max_len, seed=self.random_state)
        self.tokenizer_, self.label_encoder_ = tokenizer, encoder
        self.split_ = pd.Series(split_categorical(split), index=source.obs_names, name="split")

        def loader(name: str, shuffle: bool = False) -> TokenLoader | None:
            if rows[name].size == 0:
                return None
            return TokenLoader(
                source, tokenizer, rows=rows[name], labels=codes[rows[name]],
                batch_size=self.batch_size, shuffle=shuffle, seed=self.random_state,
            )  # fmt: skip

        frozen: np.ndarray | None = None
        frozen_seconds = 0.0
        if any(name in FROZEN_STRATEGIES for name in self.strategies):
            began = time.perf_counter()
            everything = TokenLoader(source, tokenizer, batch_size=self.batch_size)
            frozen = self._trainer(base, EmbeddingTask()).predict_dataset(
                everything, include_inputs=False
            )["cell_embedding"]
            frozen_seconds = time.perf_counter() - began

        self.models_, self.histories_, self._trainable, table = {}, {}, {}, []
        for order, (name, config) in enumerate(self.configs.items()):
            began = time.perf_counter()
            model, trainable = _build_model(
                base, config, encoder.n_categories, seed=self.random_state + order
            )
            trainer = self._fit_one(model, config, frozen, codes, rows, loader)
            model.eval()
            row: dict[str, Any] = {"strategy": name}
            for split_name in ("val", "test"):
                probabilities = self._split_probabilities(
                    model, name, frozen, rows[split_name], loader(split_name)
                )
                metrics = classification_metrics(codes[rows[split_name]], probabilities)
                row.update({f"{split_name}_{k}": v for k, v in metrics.items()})
            seconds = (
                time.perf_counter() - began + (frozen_seconds if name in FROZEN_STRATEGIES else 0.0)
            )
            best_epoch = None if trainer is None else trainer.best_epoch
            row.update(
                trainable_parameters=int(sum(model.state_dict()[k].numel() for k in trainable)),
                seconds=seconds, epochs_run=0 if trainer is None else trainer.epochs_run,
                best_epoch=np.nan if best_epoch is None else float(best_epoch),
            )  # fmt: skip
            table.append(row)
            self.models_[name], self._trainable[name] = model, trainable
            self.histories_[name] = pd.DataFrame() if trainer is None else trainer.history_frame
            logg.info(
                f"    {name}: validation macro-F1 {row['val_macro_f1']:.3f}, "
                f"{row['trainable_parameters']:,} trainable parameters, {seconds:.1f} s"
            )
        self.comparison_ = _rank(pd.DataFrame(table))
        self.best_strategy_ = str(self.comparison_.sort_values("rank")["strategy"].iloc[0])
        if self.output_dir is not None:
            self._write_outputs()
        logg.info("    finished", time=start, deep=f"best strategy: {self.best_strategy_!r}")
        return self

    def _fit_one(
        self,
        model: AnnotationModel,
        config: BaseConfig,
        frozen: np.ndarray | None,
        codes: np.ndarray,
        rows: dict[str, np.ndarray],
        loader: Any,
    ) -> Any:
        """Fit one strategy; return its Trainer (``None`` for the scikit-learn probe)."""
        if isinstance(config, FrozenProbeConfig):
            self._fit_probe(model, config, frozen, codes, rows["train"])
            return None
        if config.strategy == "head":
            # the encoder is frozen and in eval mode: train the head on the cached embeddings
            trainer = self._trainer(HeadOnlyModel(model.head), "classification", config)
            train = ArrayLoader(
                frozen[rows["train"]], codes[rows["train"]], batch_size=self.batch_size,
                shuffle=True, seed=self.random_state,
            )  # fmt: skip
            val = None
            if rows["val"].size:
                val = ArrayLoader(
                    frozen[rows["val"]], codes[rows["val"]], batch_size=self.batch_size
                )
            return trainer.fit(train, val)
        trainer = self._trainer(model, "classification", config)
        return trainer.fit(loader("train", shuffle=True), loader("val"))

    def _fit_probe(
        self,
        model: AnnotationModel,
        config: FrozenProbeConfig,
        frozen: np.ndarray,
        codes: np.ndarray,
        train: np.ndarray,
    ) -> None:
        from sklearn.linear_model import LogisticRegression

        x = frozen[train].astype(np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        mean = scale = None
        if config.standardize:
            mean, scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-8)
            x = (x - mean) / scale
        estimator = LogisticRegression(
            C=config.C, max_iter=config.max_iter, random_state=self.random_state
        )
        estimator.fit(x, codes[train])
        model.head.set_from_sklearn(
            estimator, self.label_encoder_.n_categories, mean=mean, scale=scale
        )

    def _split_probabilities(
        self,
        model: AnnotationModel,
        name: str,
        frozen: np.ndarray | None,
        rows: np.ndarray,
        loader: TokenLoader | None,
    ) -> np.ndarray:
        n_classes = self.label_encoder_.n_categories
        if rows.size == 0:
            return np.zeros((0, n_classes), dtype=np.float32)
        if name in FROZEN_STRATEGIES and frozen is not None:
            head = model.head
            device = next(head.parameters()).device
            with torch.inference_mode():
                logits = head(torch.as_tensor(frozen[rows], device=device)).float().cpu().numpy()
            return softmax(logits)
        outputs = self._trainer(model, "classification").predict_dataset(
            loader, include_inputs=False
        )
        return softmax(outputs["logits"])

    def _write_outputs(self) -> None:
        folder = self.output_dir
        folder.mkdir(parents=True, exist_ok=True)
        self.comparison_.to_csv(folder / "comparison.csv", index=False)
        for name, history in self.histories_.items():
            if not history.empty:
                history.to_csv(folder / f"history_{name}.csv", index=False)

    # ------------------------------------------------------------------ inference
    def predict(
        self, adata: AnnData | MuData, *, strategy: str | None = None, batch_size: int | None = None
    ) -> AnnotationPrediction:
        """Predict cell types (and adapted embeddings) for every cell of ``adata``.

        Genes are matched to the vocabulary by symbol, so ``adata`` may have other
        genes than the training data; the same layer / ``use_raw`` / ``gene_symbols``
        settings are used.

        Parameters
        ----------
        adata
            AnnData or MuData.
        strategy
            A fitted strategy (default: :attr:`best_strategy_`).
        batch_size
            Cells per batch (default: the runner's).

        Returns
        -------
        :class:`AnnotationPrediction` ``(label_codes, labels, probabilities, latent)``.

        Raises
        ------
        RuntimeError
            The runner is not fitted.
        ValueError
            An unknown strategy, too few genes in the vocabulary or negative values.
        """
        name = self._strategy(strategy)
        source = self._source(adata)
        loader = TokenLoader(source, self.tokenizer_, batch_size=batch_size or self.batch_size)
        outputs = self._trainer(self.models_[name], "classification").predict_dataset(
            loader, include_inputs=False
        )
        probabilities = softmax(outputs["logits"])
        codes = probabilities.argmax(axis=1).astype(np.int64)
        return AnnotationPrediction(
            label_codes=codes,
            labels=self.label_encoder_.decode(codes),
            probabilities=probabilities,
            latent=outputs["latent"].astype(np.float32),
        )

    def annotate_adata(
        self,
        adata: AnnData | MuData,
        *,
        obs_key: str = "scgpt_annotation",
        embedding_key: str = "X_scgpt_annotation",
        strategy: str | None = None,
        batch_size: int | None = None,
        copy: bool = False,
    ) -> AnnData | MuData | None:
        """Write predicted cell types, confidences, probabilities and embeddings into ``adata``.

        Parameters
        ----------
        adata
            AnnData or MuData (results go into the runner's modality).
        obs_key
            Name of the prediction column; also the prefix of the other keys.
        embedding_key
            ``.obsm`` key of the adapted, L2-normalised ``<cls>`` embedding.
        strategy
            A fitted strategy (default: :attr:`best_strategy_`).
        batch_size
            Cells per batch.
        copy
            Return a modified copy instead of writing into ``adata``.

        Returns
        -------
        ``None``, or the copy with ``copy=True``. Sets:

        ``.obs[obs_key]`` : categorical
            Predicted cell type.
        ``.obs[f"{obs_key}_confidence"]`` : float
            Probability of the predicted type.
        ``.obsm[f"{obs_key}_probabilities"]`` : float32 ``(n_cells, n_classes)``
            Columns in ``.uns[obs_key]["label_categories"]`` order.
        ``.obsm[embedding_key]`` : float32 ``(n_cells, embsize)``
            Adapted ``<cls>`` embedding (use with ``sc.pp.neighbors(use_rep=...)``).
        ``.uns[obs_key]`` : dict
            ``strategy``, ``label_key``, ``label_categories``, ``base_checkpoint``
            (path and SHA-256 hashes), ``params``, ``metrics``, ``version``.
        """
        from .. import __version__
        from ..data.handler import DataHandler, check_writable

        check_writable(adata)
        adata = adata.copy() if copy else adata
        name = self._strategy(strategy)
        prediction = self.predict(adata, strategy=name, batch_size=batch_size)
        handler = DataHandler(adata, self.mod if isinstance(adata, MuData) else None)
        index = handler.target.obs_names
        metrics = {}
        if self.comparison_ is not None and name in set(self.comparison_["strategy"]):
            row = self.comparison_.set_index("strategy").loc[name]
            metrics = {
                k: float(v) for k, v in row.items() if isinstance(v, int | float | np.number)
            }
        record = {
            "strategy": name,
            "label_key": self.label_key,
            "label_categories": list(self.label_encoder_.categories),
            "base_checkpoint": self.base_model.identity.to_dict(),
            "params": self._params(),
            "metrics": metrics,
            "embedding_key": embedding_key,
            "version": __version__,
        }
        handler.stage("obs", obs_key, pd.Series(prediction.labels, index=index))
        handler.stage(
            "obs", f"{obs_key}_confidence",
            pd.Series(prediction.probabilities.max(axis=1).astype(np.float64), index=index),
        )  # fmt: skip
        handler.stage("obsm", f"{obs_key}_probabilities", prediction.probabilities)
        handler.stage("obsm", embedding_key, prediction.latent)
        handler.stage("uns", obs_key, record)
        handler.commit()
        return adata if copy else None

    def _params(self) -> dict[str, Any]:
        tokenizer = self.tokenizer_.to_dict() if self.tokenizer_ is not None else {}
        return {
            "layer": self.layer, "use_raw": self.use_raw, "mod": self.mod,
            "gene_symbols": self.gene_symbols, "batch_size": self.batch_size,
            "max_len": tokenizer.get("max_len"), "n_bins": tokenizer.get("n_bins"),
            "cls_value": tokenizer.get("cls_value"), "seed": tokenizer.get("seed"),
            "val_size": self.val_size, "test_size": self.test_size,
            "random_state": self.random_state, "min_gene_overlap": self.min_gene_overlap,
        }  # fmt: skip

    # ------------------------------------------------------------------ persistence
    def save(
        self, path: str | os.PathLike, *, strategy: str | None = None, overwrite: bool = False
    ) -> Path:
        """Save one fitted strategy: ``manifest.json`` plus only its trainable tensors.

        The manifest records the strategy and its config, the label categories,
        the tokeniser and data settings, the comparison table, the scdlkit
        version and the base checkpoint's identity (path, SHA-256 of
        ``best_model.pt`` and of ``vocab.json``). The base weights are not copied.

        Parameters
        ----------
        path
            Directory to create.
        strategy
            Strategy to save (default: :attr:`best_strategy_`).
        overwrite
            Replace an existing directory.

        Returns
        -------
        The directory.

        Raises
        ------
        RuntimeError
            The runner is not fitted.
        FileExistsError
            ``path`` exists and ``overwrite`` is ``False``.
        """
        from .. import __version__

        name = self._strategy(strategy)
        state = self.models_[name].state_dict()
        tensors = {key: state[key] for key in self._trainable[name]}
        manifest = {
            "scdlkit_version": __version__,
            "strategy": name,
            "strategy_config": self.configs[name].to_dict(),
            "strategy_configs": {k: v.to_dict() for k, v in self.configs.items()},
            "best_strategy": self.best_strategy_,
            "label_key": self.label_key,
            "label_categories": list(self.label_encoder_.categories),
            "tokenizer": self.tokenizer_.to_dict(),
            "params": self._params(),
            "base_checkpoint": self.base_model.identity.to_dict(),
            "trainable_tensors": {k: list(v.shape) for k, v in tensors.items()},
            "comparison": []
            if self.comparison_ is None
            else self.comparison_.astype(object)
            .where(self.comparison_.notna(), None)
            .to_dict(orient="records"),
        }
        return write_runner_dir(path, manifest=manifest, tensors=tensors, overwrite=overwrite)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        checkpoint: str | os.PathLike | ScGPTModel | None = None,
        device: str = "auto",
    ) -> AnnotationRunner:
        """Rebuild a runner saved with :meth:`save`, on top of its base checkpoint.

        Parameters
        ----------
        path
            Directory written by :meth:`save`.
        checkpoint
            The base scGPT checkpoint folder (or loaded model); defaults to the
            recorded path. Its ``best_model.pt`` and ``vocab.json`` must have the
            recorded SHA-256.
        device
            ``"auto"``, ``"cpu"``, ``"cuda"``, ...

        Returns
        -------
        A runner that can :meth:`predict`, :meth:`annotate_adata` and :meth:`save`
        (its :attr:`models_` holds the saved strategy).

        Raises
        ------
        FileNotFoundError
            Missing directory or files.
        ValueError
            A base checkpoint whose weights or vocabulary differ from the
            recorded ones, or tensors that do not fit the rebuilt model.
        """
        manifest, tensors = read_runner_dir(path)
        recorded = manifest["base_checkpoint"]
        checkpoint = recorded["path"] if checkpoint is None else checkpoint
        if isinstance(checkpoint, ScGPTModel):
            identity, base = checkpoint.identity, checkpoint
        else:
            identity, base = checkpoint_identity(checkpoint), None
        verify_identity(recorded, identity)
        if base is None:
            base = load_scgpt(checkpoint, device=device)
        name = manifest["strategy"]
        config = config_from_dict(manifest["strategy_config"])
        params = manifest["params"]
        runner = cls(
            base, label_key=manifest["label_key"], strategies=(name,), strategy_configs={name: config},
            layer=params.get("layer"), use_raw=bool(params.get("use_raw")), mod=params.get("mod"),
            gene_symbols=params.get("gene_symbols"), batch_size=int(params["batch_size"]),
            max_len=params.get("max_len"), val_size=float(params["val_size"]),
            test_size=float(params["test_size"]), random_state=int(params["random_state"]),
            device=device, min_gene_overlap=params["min_gene_overlap"],
        )  # fmt: skip
        encoder = CategoryEncoder(tuple(manifest["label_categories"]), key=manifest["label_key"])
        model, trainable = _build_model(base, config, encoder.n_categories, seed=0)
        state = model.state_dict()
        check_tensors(
            tensors, {k: state[k] for k in trainable}, where=f"{Path(path) / 'trainable.pt'}"
        )
        model.load_state_dict(tensors, strict=False)
        model.eval()
        token = manifest["tokenizer"]
        runner.tokenizer_ = ScGPTTokenizer(
            pad_id=base.vocab.pad_id, cls_id=base.vocab.cls_id, n_bins=int(token["n_bins"]),
            max_len=int(token["max_len"]), pad_value=float(token["pad_value"]),
            cls_value=float(token["cls_value"]), seed=int(token["seed"]),
        )  # fmt: skip
        runner.label_encoder_ = encoder
        runner.models_, runner._trainable = {name: model}, {name: trainable}
        runner.histories_ = {name: pd.DataFrame()}
        runner.best_strategy_ = name
        comparison = pd.DataFrame(manifest.get("comparison") or [])
        runner.comparison_ = (
            comparison.astype({c: float for c in comparison.columns if c != "strategy"})
            if not comparison.empty
            else None
        )
        return runner


def _rank(table: pd.DataFrame) -> pd.DataFrame:
    """Add the ``rank`` column (1 = best) and order the columns."""
    keys = [
        "val_macro_f1",
        "val_balanced_accuracy",
        "val_accuracy",
        "trainable_parameters",
        "seconds",
    ]
    ascending = [False, False, False, True, True]
    ordered = table.assign(_order=np.arange(len(table))).sort_values(
        [*keys, "_order"], ascending=[*ascending, True], na_position="last", kind="stable"
    )
    table = table.copy()
    table.loc[ordered.index, "rank"] = np.arange(1, len(table) + 1)
    table["rank"] = table["rank"].astype(int)
    return table[list(COMPARISON_COLUMNS)]


def adapt_annotation(
    adata: AnnData | MuData,
    *,
    label_key: str,
    checkpoint: str | os.PathLike | ScGPTModel,
    strategies: tuple[str, ...] | list[str] = ("frozen_probe", "head"),
    strategy_configs: Mapping[str, BaseConfig | Mapping[str, Any]] | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    mod: ModSpec = None,
    gene_symbols: str | None = None,
    batch_size: int = 64,
    max_len: int | None = None,
    val_size: float = 0.15,
    test_size: float = 0.15,
    random_state: int = 42,
    device: str = "auto",
    output_dir: str | os.PathLike | None = None,
    min_gene_overlap: float | int = DEFAULT_MIN_GENE_OVERLAP,
    progress: bool | None = False,
) -> AnnotationRunner:
    """Adapt a local scGPT checkpoint to the cell types of ``adata`` and compare strategies.

    Experimental. Draws a stratified train/validation/test split, fits every
    strategy (training runs through :class:`~scdlkit.Trainer` with the
    ``classification`` task), reports validation and test metrics and keeps the
    best strategy. Nothing is written into ``adata``; use
    :meth:`AnnotationRunner.annotate_adata` for that.

    Parameters
    ----------
    adata
        AnnData or MuData with non-negative expression (counts or log-normalised).
    label_key
        ``.obs`` column with the cell types.
    checkpoint
        Local scGPT checkpoint folder (``args.json``, ``vocab.json``,
        ``best_model.pt``) or a model from :func:`~scdlkit.foundation.load_scgpt`.
    strategies
        Any of ``frozen_probe``, ``head``, ``full_finetune``, ``lora``,
        ``adapter``, ``prefix_tuning``, ``ia3``.
    strategy_configs
        Strategy → config dataclass or dict of fields to override.
    layer, use_raw, mod, gene_symbols
        Where the expression and gene symbols live.
    batch_size, max_len
        Minibatch size; tokens per cell including ``<cls>``.
    val_size, test_size, random_state
        Stratified split and seed (also of tokenisation and training).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    output_dir
        Optional folder for ``comparison.csv`` and training histories.
    min_gene_overlap
        Share (below 1) or number of genes that must be in the vocabulary.
    progress
        Show training progress bars.

    Returns
    -------
    A fitted :class:`AnnotationRunner`: ``runner.comparison_``,
    ``runner.best_strategy_``, ``runner.predict(adata)``,
    ``runner.annotate_adata(adata)``, ``runner.save(path)``.

    Raises
    ------
    ValueError
        Invalid strategies or configs, fewer than two classes, too few genes in
        the vocabulary, negative values, or split sizes that leave a split empty.
    FileNotFoundError
        The checkpoint folder or one of its files is missing.

    Examples
    --------
    >>> import tempfile, scdlkit
    >>> from scdlkit.foundation import adapt_annotation
    >>> from scdlkit.foundation.testing import make_tiny_checkpoint
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> path = make_tiny_checkpoint(tempfile.mkdtemp(), genes=adata.raw.var_names)
    >>> runner = adapt_annotation(
    ...     adata, label_key="bulk_labels", checkpoint=path, use_raw=True, max_len=128
    ... )
    >>> runner.best_strategy_ in ("frozen_probe", "head")
    True
    """
    runner = AnnotationRunner(
        checkpoint, label_key=label_key, strategies=strategies, strategy_configs=strategy_configs,
        layer=layer, use_raw=use_raw, mod=mod, gene_symbols=gene_symbols, batch_size=batch_size,
        max_len=max_len, val_size=val_size, test_size=test_size, random_state=random_state,
        device=device, output_dir=output_dir, min_gene_overlap=min_gene_overlap, progress=progress,
    )  # fmt: skip
    return runner.fit_compare(adata)
