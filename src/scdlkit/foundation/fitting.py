"""Fit one adaptation strategy, score it on a split and predict cells, through the shared Trainer.

:class:`AdaptationData` holds what every strategy of one
:meth:`~scdlkit.foundation.AnnotationRunner.fit_compare` shares: the token
source, the labels, the split and the frozen ``<cls>`` embeddings computed
once. Every trainer is built with :meth:`scdlkit.Trainer.from_options`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import CategoryEncoder
from ..evaluation._probabilities import predicted_codes, softmax
from ..train import Trainer
from ..train.options import TrainerOptions
from .build import fit_probe, strategy_options
from .data import ArrayLoader, TokenLoader, TokenSource
from .heads import AnnotationModel, HeadOnlyModel
from .model import ScGPTModel
from .output import AnnotationPrediction
from .strategies import BaseConfig, FrozenProbeConfig
from .task import EmbeddingTask
from .tokenizer import ScGPTTokenizer


@dataclass
class AdaptationData:
    """The cells every strategy of one comparison is fitted and scored on.

    Attributes
    ----------
    source
        Matched and validated expression.
    tokenizer
        Tokeniser of the run.
    codes
        Class code of every cell of ``source``.
    rows
        ``train``/``val``/``test`` → source rows.
    n_classes
        Number of classes.
    seed
        Seed of shuffling.
    frozen
        Frozen ``<cls>`` embeddings of every cell (only when a frozen strategy runs).
    """

    source: TokenSource
    tokenizer: ScGPTTokenizer
    codes: np.ndarray
    rows: dict[str, np.ndarray]
    n_classes: int
    seed: int
    frozen: np.ndarray | None = None

    def tokens(self, split: str, batch_size: int, *, shuffle: bool = False) -> TokenLoader | None:
        """Token minibatches of ``split`` with labels (``None`` for an empty split)."""
        rows = self.rows[split]
        if rows.size == 0:
            return None
        return TokenLoader(
            self.source, self.tokenizer, rows=rows, labels=self.codes[rows],
            batch_size=batch_size, shuffle=shuffle, seed=self.seed,
        )  # fmt: skip

    def embeddings(
        self, split: str, batch_size: int, *, shuffle: bool = False
    ) -> ArrayLoader | None:
        """Minibatches of the cached frozen embeddings of ``split`` (``None`` for an empty split)."""
        rows = self.rows[split]
        if rows.size == 0:
            return None
        return ArrayLoader(
            self.frozen[rows], self.codes[rows], batch_size=batch_size, shuffle=shuffle,
            seed=self.seed,
        )  # fmt: skip


def embed_frozen(base: ScGPTModel, data: AdaptationData, options: TrainerOptions) -> np.ndarray:
    """Return the frozen, not normalised ``<cls>`` embedding of every cell of ``data.source``."""
    everything = TokenLoader(data.source, data.tokenizer, batch_size=options.batch_size)
    trainer = Trainer.from_options(base, EmbeddingTask(), options)
    return trainer.predict_dataset(everything, include_inputs=False)["cell_embedding"]


def fit_strategy(
    model: AnnotationModel, config: BaseConfig, data: AdaptationData, options: TrainerOptions
) -> Trainer | None:
    """Fit one strategy; return its Trainer (``None`` for the scikit-learn ``frozen_probe``).

    ``head`` trains on the cached frozen embeddings (the encoder is frozen and in
    evaluation mode, so this equals running it every epoch); the PEFT strategies
    and ``full_finetune`` train on tokens.
    """
    train = data.rows["train"]
    if isinstance(config, FrozenProbeConfig):
        fit_probe(
            model.head, config, data.frozen[train], data.codes[train], n_classes=data.n_classes,
            seed=data.seed,
        )  # fmt: skip
        return None
    options = strategy_options(config, options)
    size = options.batch_size
    if config.strategy == "head":
        trainer = Trainer.from_options(HeadOnlyModel(model.head), "classification", options)
        return trainer.fit(
            data.embeddings("train", size, shuffle=True), data.embeddings("val", size)
        )
    trainer = Trainer.from_options(model, "classification", options)
    return trainer.fit(data.tokens("train", size, shuffle=True), data.tokens("val", size))


def split_probabilities(
    model: AnnotationModel,
    data: AdaptationData,
    split: str,
    options: TrainerOptions,
    *,
    frozen_encoder: bool,
) -> np.ndarray:
    """Class probabilities of the cells of ``split`` (from the cached embeddings when the encoder is frozen)."""
    rows = data.rows[split]
    if rows.size == 0:
        return np.zeros((0, data.n_classes), dtype=np.float32)
    if frozen_encoder and data.frozen is not None:
        head = model.head
        device = next(head.parameters()).device
        with torch.inference_mode():
            logits = head(torch.as_tensor(data.frozen[rows], device=device)).float().cpu().numpy()
        return softmax(logits)
    trainer = Trainer.from_options(model, "classification", options)
    outputs = trainer.predict_dataset(data.tokens(split, options.batch_size), include_inputs=False)
    return softmax(outputs["logits"])


def predict_cells(
    model: AnnotationModel,
    source: TokenSource,
    tokenizer: ScGPTTokenizer,
    encoder: CategoryEncoder,
    options: TrainerOptions,
) -> AnnotationPrediction:
    """Predict the cell type and the adapted embedding of every cell of ``source``."""
    loader = TokenLoader(source, tokenizer, batch_size=options.batch_size)
    trainer = Trainer.from_options(model, "classification", options)
    outputs = trainer.predict_dataset(loader, include_inputs=False)
    probabilities = softmax(outputs["logits"])
    codes = predicted_codes(probabilities)[0].astype(np.int64)
    return AnnotationPrediction(
        label_codes=codes,
        labels=encoder.decode(codes),
        probabilities=probabilities,
        latent=outputs["latent"].astype(np.float32),
    )
