"""``AnnotationRunner``: fit scGPT adaptation strategies, predict, write into AnnData, save and load.

The runner turns its options into the shared objects of scdlkit: a
:class:`~scdlkit.data.spec.DataSpec` for where the cells are and how they are
split, and a :class:`~scdlkit.train.options.TrainerOptions` from which every
:class:`~scdlkit.Trainer` is built (:meth:`~scdlkit.Trainer.from_options`).
Model building lives in ``build.py``, fitting and prediction in ``fitting.py``,
metrics and ranking in ``comparison.py``, the AnnData output in ``output.py``
and the saved format in ``persistence.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scanpy import logging as logg

from .._defaults import DEFAULT_SEED
from .._errors import format_names
from .._version import __version__
from ..data import CategoryEncoder
from ..data.fields import ModSpec
from ..data.handler import check_writable
from ..data.spec import DataSpec, resolve_seed
from ..data.splits import SPLIT_NAMES, check_split_sizes, draw_split, split_categorical
from ..train.device import resolve_device
from ..train.options import TrainerOptions
from . import persistence
from .build import build_annotation_model
from .checkpoint import load_scgpt
from .comparison import (
    comparison_long,
    rank_strategies,
    split_metrics,
    strategy_metrics,
    write_comparison,
)
from .data import DEFAULT_MIN_GENE_OVERLAP, TokenSource
from .fitting import (
    AdaptationData,
    embed_frozen,
    fit_strategy,
    predict_cells,
    split_probabilities,
)
from .heads import AnnotationModel
from .model import ScGPTModel
from .output import (
    DEFAULT_ANNOTATION_KEY,
    AnnotationPrediction,
    annotation_keys,
    write_annotation,
)
from .strategies import (
    FROZEN_STRATEGIES,
    BaseConfig,
    config_from_dict,
    resolve_configs,
)
from .tokenizer import ScGPTTokenizer

#: Default cells per minibatch of the scGPT path (below the Trainer's 256: a
#: transformer over up to 1200 tokens per cell needs far more memory per cell).
SCGPT_BATCH_SIZE = 64


class AnnotationRunner:
    """Adapt scGPT to cell-type annotation with several strategies and keep the best.

    Usually created by :func:`~scdlkit.foundation.adapt_annotation`, which also
    runs :meth:`fit_compare`. Experimental.

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
    seed
        Seed of the split, the tokeniser, initialisation and training.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    output_dir
        When given, ``comparison.csv`` and ``history_<strategy>.csv`` are written there.
    min_gene_overlap
        Share (below 1) or number of genes that must be in the vocabulary.
    progress
        Show training progress bars (``None``: only in a terminal).
    random_state
        Deprecated alias of ``seed`` (``FutureWarning``).

    Attributes
    ----------
    spec
        The data options (:class:`~scdlkit.data.spec.DataSpec`).
    options
        The Trainer options every strategy starts from (batch size, device, seed).
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
        batch_size: int = SCGPT_BATCH_SIZE,
        max_len: int | None = None,
        val_size: float = 0.15,
        test_size: float = 0.15,
        seed: int = DEFAULT_SEED,
        device: str = "auto",
        output_dir: str | os.PathLike | None = None,
        min_gene_overlap: float | int = DEFAULT_MIN_GENE_OVERLAP,
        progress: bool | None = False,
        random_state: int | None = None,
    ) -> None:
        seed = resolve_seed(seed, random_state, where="AnnotationRunner")
        self.configs = resolve_configs(strategies, strategy_configs)
        check_split_sizes(val_size, test_size)
        if val_size == 0 and len(self.configs) > 1:
            msg = (
                "val_size=0 leaves nothing to choose the best strategy on; pass val_size > 0 or a "
                "single strategy."
            )
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
        self.spec = DataSpec(
            layer=layer, mod=mod, use_raw=use_raw, label_key=label_key, val_size=val_size,
            test_size=test_size,
        )  # fmt: skip
        self.gene_symbols = gene_symbols
        self.max_len = max_len
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.options = TrainerOptions(
            batch_size=batch_size, device=self.device, seed=self.seed, progress=progress
        )
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.min_gene_overlap = min_gene_overlap
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

    def _mod(self, adata: AnnData | MuData) -> ModSpec:
        return self.spec.mod if isinstance(adata, MuData) else None

    def _source(self, adata: AnnData | MuData, *, label_key: str | None = None) -> TokenSource:
        spec = self.spec
        return TokenSource.from_adata(
            adata, self.base_model.vocab, layer=spec.layer, use_raw=spec.use_raw,
            mod=self._mod(adata), gene_symbols=self.gene_symbols, label_key=label_key,
            min_gene_overlap=self.min_gene_overlap,
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
            source.n_obs, labels=codes, val_size=self.spec.val_size,
            test_size=self.spec.test_size, seed=self.seed,
        )  # fmt: skip
        tokenizer = ScGPTTokenizer.from_model(base, max_len=self.max_len, seed=self.seed)
        self.tokenizer_, self.label_encoder_ = tokenizer, encoder
        self.split_ = pd.Series(split_categorical(split), index=source.obs_names, name="split")
        data = AdaptationData(
            source, tokenizer, codes, {name: np.flatnonzero(split == name) for name in SPLIT_NAMES},
            n_classes=encoder.n_categories, seed=self.seed,
        )  # fmt: skip
        frozen_seconds = 0.0
        if any(name in FROZEN_STRATEGIES for name in self.strategies):
            began = time.perf_counter()
            data.frozen = embed_frozen(base, data, self.options)
            frozen_seconds = time.perf_counter() - began

        self.models_, self.histories_, self._trainable, table = {}, {}, {}, []
        for order, (name, config) in enumerate(self.configs.items()):
            began = time.perf_counter()
            frozen_encoder = name in FROZEN_STRATEGIES
            model, trainable = build_annotation_model(
                base, config, encoder.n_categories, seed=self.seed + order
            )
            trainer = fit_strategy(model, config, data, self.options)
            model.eval()
            row: dict[str, Any] = {"strategy": name}
            for split_name in ("val", "test"):
                probabilities = split_probabilities(
                    model, data, split_name, self.options, frozen_encoder=frozen_encoder
                )
                metrics = split_metrics(codes[data.rows[split_name]], probabilities)
                row.update({f"{split_name}_{k}": v for k, v in metrics.items()})
            seconds = time.perf_counter() - began + (frozen_seconds if frozen_encoder else 0.0)
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
        self.comparison_ = rank_strategies(pd.DataFrame(table))
        self.best_strategy_ = str(self.comparison_.sort_values("rank")["strategy"].iloc[0])
        if self.output_dir is not None:
            write_comparison(self.output_dir, self.comparison_, self.histories_)
        logg.info("    finished", time=start, deep=f"best strategy: {self.best_strategy_!r}")
        return self

    def comparison_long(self, *, split: str = "test") -> pd.DataFrame:
        """Return :attr:`comparison_` in the long format of :func:`scdlkit.compare_models`.

        Draw it with :func:`scdlkit.pl.compare`, or concatenate it with a
        ``compare_models`` table.

        Parameters
        ----------
        split
            ``"test"`` or ``"val"``: whose metrics to report.

        Returns
        -------
        Columns ``model`` (strategy), ``baseline``, ``metric`` (``f1_macro``,
        ``accuracy``, ``balanced_accuracy``, ``auroc_ovr``), ``value``,
        ``seconds``, ``parameters`` (trainable).

        Raises
        ------
        RuntimeError
            The runner has no comparison (not fitted).
        """
        if self.comparison_ is None:
            msg = "This AnnotationRunner has no comparison_; call fit_compare(adata) first."
            raise RuntimeError(msg)
        return comparison_long(self.comparison_, split=split)

    # ------------------------------------------------------------------ inference
    def _predict(
        self, adata: AnnData | MuData, name: str, batch_size: int | None
    ) -> tuple[AnnotationPrediction, pd.Index]:
        source = self._source(adata)
        options = (
            self.options if batch_size is None else self.options.replace(batch_size=batch_size)
        )
        model, encoder = self.models_[name], self.label_encoder_
        return predict_cells(model, source, self.tokenizer_, encoder, options), source.obs_names

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
        return self._predict(adata, self._strategy(strategy), batch_size)[0]

    def annotate_adata(
        self,
        adata: AnnData | MuData,
        *,
        key_added: str = DEFAULT_ANNOTATION_KEY,
        strategy: str | None = None,
        batch_size: int | None = None,
        copy: bool = False,
        obs_key: str | None = None,
        embedding_key: str | None = None,
    ) -> AnnData | MuData | None:
        """Write predicted cell types, confidences, probabilities and embeddings into ``adata``.

        Parameters
        ----------
        adata
            AnnData or MuData (results go into the runner's modality).
        key_added
            Prefix of every key written (as on every scdlkit writer).
        strategy
            A fitted strategy (default: :attr:`best_strategy_`).
        batch_size
            Cells per batch.
        copy
            Return a modified copy instead of writing into ``adata``.
        obs_key
            Deprecated (``FutureWarning``): the prediction column itself, also the
            prefix of the other keys. Use ``key_added``.
        embedding_key
            Deprecated (``FutureWarning``): the full ``.obsm`` key of the
            embedding. Use ``key_added``.

        Returns
        -------
        ``None``, or the copy with ``copy=True``. Sets:

        ``.obs[f"{key_added}_prediction"]`` : categorical
            Predicted cell type.
        ``.obs[f"{key_added}_confidence"]`` : float
            Probability of the predicted type.
        ``.obsm[f"{key_added}_probabilities"]`` : float32 ``(n_cells, n_classes)``
            Columns in ``.uns[key_added]["label_categories"]`` order.
        ``.obsm[f"X_{key_added}"]`` : float32 ``(n_cells, embsize)``
            Adapted, L2-normalised ``<cls>`` embedding (``sc.pp.neighbors(use_rep=...)``).
        ``.uns[key_added]`` : dict
            ``strategy``, ``label_key``, ``label_categories``, ``base_checkpoint``
            (path and SHA-256 hashes), ``params``, ``metrics``, ``embedding_key``,
            ``version``.

        Raises
        ------
        RuntimeError
            The runner is not fitted.
        ValueError
            An AnnData view, a key that is empty or contains ``/``, an unknown
            strategy, too few genes in the vocabulary or negative values.
        """
        check_writable(adata)
        keys = annotation_keys(key_added, obs_key=obs_key, embedding_key=embedding_key)
        adata = adata.copy() if copy else adata
        name = self._strategy(strategy)
        prediction, rows = self._predict(adata, name, batch_size)
        record = {
            "strategy": name,
            "label_key": self.label_key,
            "label_categories": list(self.label_encoder_.categories),
            "base_checkpoint": self.base_model.identity.to_dict(),
            "params": self._params(),
            "metrics": strategy_metrics(self.comparison_, name),
            "embedding_key": keys.latent,
            "version": __version__,
        }
        write_annotation(
            adata, prediction, rows=rows, keys=keys, record=record, mod=self._mod(adata)
        )
        return adata if copy else None

    def _params(self) -> dict[str, Any]:
        tokenizer = self.tokenizer_.to_dict() if self.tokenizer_ is not None else {}
        spec = self.spec
        return {
            "layer": spec.layer, "use_raw": spec.use_raw, "mod": spec.to_kwargs()["mod"],
            "gene_symbols": self.gene_symbols, "batch_size": self.options.batch_size,
            "max_len": tokenizer.get("max_len"), "n_bins": tokenizer.get("n_bins"),
            "cls_value": tokenizer.get("cls_value"), "seed": self.seed,
            "val_size": spec.val_size, "test_size": spec.test_size,
            "min_gene_overlap": self.min_gene_overlap,
        }  # fmt: skip

    # ------------------------------------------------------------------ persistence
    def save(
        self, path: str | os.PathLike, *, strategy: str | None = None, overwrite: bool = False
    ) -> Path:
        """Save one fitted strategy: ``manifest.json`` plus only its trainable tensors.

        The manifest records the strategy and its config, the label categories,
        the tokeniser, the data spec and settings, the comparison table, the scdlkit
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
            "data_spec": self.spec.to_dict(),
            "params": self._params(),
            "base_checkpoint": self.base_model.identity.to_dict(),
            "trainable_tensors": {k: list(v.shape) for k, v in tensors.items()},
            "comparison": persistence.comparison_records(self.comparison_),
        }
        return persistence.write_runner_dir(
            path, manifest=manifest, tensors=tensors, overwrite=overwrite
        )

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
        manifest, tensors = persistence.read_runner_dir(path)
        base = persistence.load_base(manifest["base_checkpoint"], checkpoint, device=device)
        name = manifest["strategy"]
        config = config_from_dict(manifest["strategy_config"])
        params, spec = manifest["params"], persistence.data_spec(manifest)
        runner = cls(
            base, label_key=manifest["label_key"], strategies=(name,), strategy_configs={name: config},
            layer=spec.layer, use_raw=spec.use_raw, mod=spec.mod, gene_symbols=params.get("gene_symbols"),
            batch_size=int(params["batch_size"]), max_len=params.get("max_len"),
            val_size=spec.val_size, test_size=spec.test_size, seed=persistence.saved_seed(params),
            device=device, min_gene_overlap=params["min_gene_overlap"],
        )  # fmt: skip
        encoder = CategoryEncoder(tuple(manifest["label_categories"]), key=manifest["label_key"])
        model, trainable = build_annotation_model(base, config, encoder.n_categories, seed=0)
        state = model.state_dict()
        persistence.check_tensors(
            tensors, {k: state[k] for k in trainable}, where=f"{Path(path) / 'trainable.pt'}"
        )
        model.load_state_dict(tensors, strict=False)
        model.eval()
        runner.tokenizer_ = persistence.tokenizer_from(manifest["tokenizer"], base)
        runner.label_encoder_ = encoder
        runner.models_, runner._trainable = {name: model}, {name: trainable}
        runner.histories_ = {name: pd.DataFrame()}
        runner.best_strategy_ = name
        runner.comparison_ = persistence.comparison_from(manifest.get("comparison"))
        return runner
