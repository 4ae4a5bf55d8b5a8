"""Build the annotation model of one strategy, the Trainer options that train it, and the probe.

Every strategy trained by gradient descent goes through the shared training
path: its config becomes a :class:`~scdlkit.train.options.TrainerOptions` and
the trainer is built with :meth:`scdlkit.Trainer.from_options`, exactly as
``tl.fit`` and the pipeline do. Only the ``frozen_probe`` is fitted outside the
Trainer (a scikit-learn logistic regression).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..train.options import TrainerOptions
from .heads import AnnotationModel, ClassifierHead, ProbeHead
from .model import ScGPTModel
from .peft import apply_strategy
from .strategies import (
    FROZEN_STRATEGIES,
    BaseConfig,
    FrozenProbeConfig,
    TrainedConfig,
)


def build_annotation_model(
    base: ScGPTModel, config: BaseConfig, n_classes: int, *, seed: int
) -> tuple[AnnotationModel, list[str]]:
    """Build the annotation model of one strategy and name the tensors it trains.

    Parameters
    ----------
    base
        The frozen base checkpoint; frozen strategies share its encoder, the
        others adapt a copy of it.
    config
        The strategy's config.
    n_classes
        Number of cell types.
    seed
        Seed of the head's initial weights and of the PEFT parameters.

    Returns
    -------
    The model (on the base model's device) and the ``state_dict`` names of
    its trainable tensors (what a saved runner stores).

    Examples
    --------
    >>> import tempfile
    >>> from scdlkit.foundation import HeadConfig, load_scgpt
    >>> from scdlkit.foundation.testing import make_tiny_checkpoint
    >>> base = load_scgpt(make_tiny_checkpoint(tempfile.mkdtemp(), genes=["A", "B"]), device="cpu")
    >>> model, trainable = build_annotation_model(base, HeadConfig(), 3, seed=0)
    >>> trainable
    ['head.norm.weight', 'head.norm.bias', 'head.linear.weight', 'head.linear.bias']
    """
    dim = base.embsize
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(config, FrozenProbeConfig):
            head: nn.Module = ProbeHead(dim, n_classes)
        else:
            head = ClassifierHead(dim, n_classes, dropout=config.head_dropout)
    head = head.to(next(base.backbone.parameters()).device)
    if config.strategy in FROZEN_STRATEGIES:
        model = AnnotationModel(base.backbone, head, frozen_backbone=True)
        return model, [f"head.{name}" for name, _ in head.named_parameters()]
    backbone = copy.deepcopy(base.backbone)
    apply_strategy(backbone, config, generator=torch.Generator().manual_seed(seed))
    model = AnnotationModel(backbone, head, frozen_backbone=False)
    return model, [name for name, p in model.named_parameters() if p.requires_grad]


def strategy_options(config: TrainedConfig, base: TrainerOptions) -> TrainerOptions:
    """Return ``base`` with the training settings of a strategy's config.

    Examples
    --------
    >>> from scdlkit.foundation import LoRAConfig
    >>> options = strategy_options(LoRAConfig(epochs=3), TrainerOptions(batch_size=32))
    >>> options.epochs, options.early_stopping_patience, options.grad_clip, options.batch_size
    (3, 5, 1.0, 32)
    """
    return base.replace(
        epochs=config.epochs,
        lr=config.lr,
        weight_decay=config.weight_decay,
        early_stopping_patience=config.early_stopping_patience,
        grad_clip=config.grad_clip,
    )


def fit_probe(
    head: ProbeHead,
    config: FrozenProbeConfig,
    embeddings: np.ndarray,
    codes: np.ndarray,
    *,
    n_classes: int,
    seed: int,
) -> None:
    """Fit the ``frozen_probe`` logistic regression on training embeddings and copy it into ``head``.

    Parameters
    ----------
    head
        The probe head to fill in.
    config
        Regularisation, iterations and standardisation.
    embeddings
        Frozen ``<cls>`` embeddings of the training cells (not normalised).
    codes
        Their class codes.
    n_classes
        Number of classes (classes without training cells get a very negative bias).
    seed
        Seed of the solver.
    """
    from sklearn.linear_model import LogisticRegression

    x = embeddings.astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    mean = scale = None
    if config.standardize:
        mean, scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-8)
        x = (x - mean) / scale
    estimator = LogisticRegression(C=config.C, max_iter=config.max_iter, random_state=seed)
    estimator.fit(x, codes)
    head.set_from_sklearn(estimator, n_classes, mean=mean, scale=scale)
