"""Foundation models (experimental): scGPT in plain PyTorch, from a local checkpoint folder.

scdlkit never downloads or bundles weights. Download an official scGPT
checkpoint yourself (a folder with ``args.json``, ``vocab.json`` and
``best_model.pt``), point these functions at it, and follow the terms under
which you obtained it.

===============================  ===================================================
:func:`load_scgpt`               load and validate a checkpoint (frozen, inference only)
:func:`scdlkit.tl.embed_scgpt`   frozen ``<cls>`` embeddings into ``.obsm``
:func:`inspect_annotation_data`  gene overlap, values, classes and split, as a report
:func:`adapt_annotation`         compare adaptation strategies, keep the best
:class:`AnnotationRunner`        ``predict``, ``annotate_adata``, ``save``, ``load``
:mod:`.testing`                  tiny random checkpoints in the official format
===============================  ===================================================
"""

from .annotation import adapt_annotation
from .checkpoint import load_scgpt
from .config import ScGPTConfig
from .data import GeneMatch, TokenLoader, TokenSource, match_genes
from .identity import CheckpointIdentity, LoadReport
from .inspect import AnnotationDataReport, inspect_annotation_data
from .model import ScGPTBackbone, ScGPTModel
from .output import AnnotationPrediction
from .runner import AnnotationRunner
from .strategies import (
    STRATEGIES,
    AdapterConfig,
    FrozenProbeConfig,
    FullFinetuneConfig,
    HeadConfig,
    IA3Config,
    LoRAConfig,
    PrefixTuningConfig,
)
from .task import EmbeddingTask
from .tokenizer import ScGPTTokenizer
from .vocab import GeneVocab


def list_strategies():
    """List the adaptation strategies and their default configs, one row each.

    Returns
    -------
    DataFrame with columns ``strategy``, ``config`` (class name) and ``defaults``.

    Examples
    --------
    >>> list_strategies()["strategy"].tolist()
    ['frozen_probe', 'head', 'full_finetune', 'lora', 'adapter', 'prefix_tuning', 'ia3']
    """
    import pandas as pd

    rows = []
    for name, cls in STRATEGIES.items():
        defaults = cls().to_dict()
        defaults.pop("config_type")
        rows.append({"strategy": name, "config": cls.__name__, "defaults": defaults})
    return pd.DataFrame(rows, columns=["strategy", "config", "defaults"])


__all__ = [
    "AdapterConfig",
    "AnnotationDataReport",
    "AnnotationPrediction",
    "AnnotationRunner",
    "CheckpointIdentity",
    "EmbeddingTask",
    "FrozenProbeConfig",
    "FullFinetuneConfig",
    "GeneMatch",
    "GeneVocab",
    "HeadConfig",
    "IA3Config",
    "LoRAConfig",
    "LoadReport",
    "PrefixTuningConfig",
    "ScGPTBackbone",
    "ScGPTConfig",
    "ScGPTModel",
    "ScGPTTokenizer",
    "TokenLoader",
    "TokenSource",
    "adapt_annotation",
    "inspect_annotation_data",
    "list_strategies",
    "load_scgpt",
    "match_genes",
]
