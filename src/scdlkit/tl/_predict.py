"""``scdlkit.tl.predict``: run a trained model over an AnnData/MuData and write the results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anndata import AnnData
from mudata import MuData
from scanpy import logging as logg
from torch import nn

from .. import pipeline
from .._docs import doc_adata, doc_copy, doc_mod, doc_params
from ..data.fields import ModSpec
from ..data.handler import DataHandler, check_writable
from ..data.record import (
    record_holder,
)
from ..train.distributed import is_main_process
from ._outputs import stage_outputs

#: Marks ``mod``/``layer`` arguments left to what the model was trained on.
UNSET: Any = pipeline.TRAINED


@doc_params(doc_adata=doc_adata, doc_mod=doc_mod, doc_copy=doc_copy)
def predict(
    adata: AnnData | MuData,
    *,
    key: str = "scdlkit",
    checkpoint: str | Path | None = None,
    outputs: str | list[str] | None = None,
    mod: ModSpec = UNSET,
    layer: str | None = UNSET,
    batch_size: int = 1024,
    device: str = "auto",
    key_added: str | None = None,
    model: nn.Module | None = None,
    library_size: float | str = 1e4,
    transform_batch: str | int | Sequence[str | int] | None = None,
    copy: bool = False,
) -> AnnData | MuData | None:
    """Run a trained model over every cell and write its outputs into ``adata``.

    After :func:`scdlkit.tl.fit` nothing but the AnnData is needed (also after
    ``write_h5ad`` → ``read_h5ad``): the checkpoint is found through
    ``.uns[key]["checkpoint"]`` and the preprocessing is rebuilt from it. With
    ``checkpoint=path`` a new (query) dataset is mapped onto a trained model:
    genes are matched by name, extra genes are ignored, missing genes are an error.

    Parameters
    ----------
    {doc_adata}
    key
        ``key_added`` of the :func:`~scdlkit.tl.fit` run to use.
    checkpoint
        Checkpoint directory to use instead of the one recorded under ``key``.
    outputs
        What to write: any of ``"latent"``, ``"reconstruction"``, ``"logits"``,
        ``"probabilities"``, ``"prediction"``. Defaults to latent and
        reconstruction for representation/reconstruction models, and latent,
        logits, probabilities and prediction for classifiers. Count models
        (``"count_vae"``) also give ``"normalized"`` (decoded expression scaled
        to ``library_size``) and ``"corrected"`` (the same decoded as if every
        cell came from ``transform_batch``); their reconstruction is the
        likelihood's mean (expected counts).
    {doc_mod}
        Defaults to the modality the model was trained on.
    layer
        Layer to read; defaults to the layer the model was trained on.
    batch_size
        Cells per inference batch.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    key_added
        Prefix of the written keys; defaults to ``key``.
    model
        Only for checkpoints of wrapped/custom modules, which cannot be rebuilt
        by name: a module of the same architecture.
    library_size
        Count models, ``"normalized"``/``"corrected"`` outputs: the total each
        cell's expression is scaled to (``1e4`` by default), or ``"observed"``
        for each cell's own library size.
    transform_batch
        Count models, ``"corrected"`` output: decode every cell as if it came
        from this training batch (a list of batches averages over them).
        Numbers name the batches of a numeric batch column (``1`` is ``"1"``).
    {doc_copy}

    Under ``torchrun`` only rank 0 predicts and writes; other ranks return
    without changing ``adata``.

    Returns
    -------
    ``None``, or the modified copy with ``copy=True``. Sets, with
    ``prefix = key_added or key``:

    ``.obsm[f"X_{prefix}"]`` : float32 array
        Latent space (use with ``sc.pp.neighbors(adata, use_rep=f"X_{prefix}")``).
    ``.layers[f"{prefix}_reconstruction"]`` : float32 array
        Reconstruction in the model's input space (after its preprocessing),
        genes in ``.var`` order; genes the model does not use are NaN. When the
        model's features are not genes of this object (``use_raw``, several
        modalities) it goes to ``.obsm`` instead.
    ``.obsm[f"{prefix}_logits"]``, ``.obsm[f"{prefix}_probabilities"]`` : float32 arrays
        Classifier outputs, columns in ``.uns[prefix]["label_categories"]`` order.
    ``.layers[f"{prefix}_normalized"]``, ``.layers[f"{prefix}_corrected"]`` : float32 arrays
        Count models, on request: normalised and batch-corrected expression
        (genes the model does not use are NaN; ``.obsm`` like the
        reconstruction when the features are not genes of this object). The
        record keeps ``library_size`` and ``transform_batch``.
    ``.obs[f"{prefix}_prediction"]`` : categorical, ``.obs[f"{prefix}_confidence"]`` : float
        Predicted label (original class names) and its probability.
    ``.uns[prefix]["outputs"]``
        What was written.

    Examples
    --------
    >>> import scdlkit
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> scdlkit.tl.fit(adata, "mlp_classifier", label_key="bulk_labels", epochs=5)
    >>> scdlkit.tl.predict(adata)
    >>> adata.obs["scdlkit_prediction"].cat.categories.equals(
    ...     adata.obs["bulk_labels"].cat.categories
    ... )
    True
    """
    check_writable(adata)
    adata = adata.copy() if copy else adata
    if not is_main_process():
        logg.info("tl.predict: skipped on this rank; rank 0 of the torchrun job writes the outputs")
        return adata if copy else None
    prefix = key_added or key
    start = logg.info(f"predicting with scdlkit run {key!r}")
    holder = record_holder(adata, key, None if mod is UNSET else mod)
    path, record = pipeline.run_checkpoint(holder, key, checkpoint)
    loaded = pipeline.load_run(path, device=device, model=model)
    preprocessing = loaded.preprocessing
    mod = preprocessing.get("mod") if mod is UNSET else mod
    if isinstance(adata, AnnData):
        mod = None
    handler = DataHandler(adata, mod)
    requested = pipeline.requested_outputs(outputs, loaded.task)
    if (
        outputs is None
        and getattr(handler.target, "isbacked", False)
        and "reconstruction" in requested
    ):
        requested = tuple(name for name in requested if name != "reconstruction")
        logg.info(
            "    backed AnnData: the reconstruction (dense cells x genes) is not computed by default; "
            "pass outputs=[..., 'reconstruction'] to write it"
        )
    new_record = dict(record) if prefix == key and record else {}
    existing = handler.clear_previous(prefix)
    written = stage_outputs(
        handler, loaded, loaded.query(adata, layer=layer, mod=mod), prefix, requested,
        new_record, batch_size=batch_size, library_size=library_size,
        transform_batch=transform_batch,
    )  # fmt: skip
    handler.stage("uns", prefix, new_record)
    handler.log_overwrite(prefix, existing)
    handler.commit()
    logg.info("    finished", time=start, deep="added " + ", ".join(written))
    return adata if copy else None
