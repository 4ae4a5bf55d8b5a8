"""The peers' side of ``benchmarks/label_transfer.py``: scANVI + scArches and CellTypist.

Runs in the interpreter of a separate virtual environment that has the peers
installed (``benchmarks/requirements-peers.txt``); it never imports scdlkit.
``label_transfer.py`` calls it as ``python _peer_label_transfer.py JOB JSON_KWARGS``
and reads the ``RESULT {...}`` line it prints. Every job reads a reference
``.h5ad`` (raw counts, ``obs["batch"]``, ``obs["cell_type"]``) and a query
``.h5ad`` (raw counts, ``obs["batch"]``, the truth in ``obs["true_cell_type"]``,
which is dropped before anything else sees the query), writes the query
predictions and class probabilities to ``out`` (``.npz``) and reports CPU
seconds (``time.process_time``, one thread) plus accuracy, macro-F1 and the
expected calibration error computed here (the driver recomputes them with
scdlkit and cross-checks). Jobs:

- ``scanvi``: the scvi-tools reference-mapping tutorial (scArches): ``SCVI``
  with layer norm, no batch norm, ``encode_covariates=True`` on the
  reference, ``SCANVI.from_scvi_model`` fine-tuned on it, then
  ``SCANVI.prepare_query_anndata`` + ``load_query_data`` and query training
  with ``weight_decay=0``; ``predict(soft=True)`` for the probabilities;
- ``celltypist``: ``celltypist.train`` (logistic regression, defaults) on the
  log1p-normalised reference, ``celltypist.annotate(majority_voting=False)``
  on the log1p-normalised query.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402

#: Truth column of the query files; removed right after reading.
TRUTH = "true_cell_type"
UNLABELED = "Unknown"


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 15
) -> float:
    """Compute the expected calibration error ``sum_b n_b / n · |accuracy_b - confidence_b|``.

    ``n_bins`` equal-width bins of the confidence (the row maximum) over
    ``[0, 1]``, right-closed (``(lo, hi]``, a confidence of 0 in the first);
    ``labels`` are column codes (``-1``: a class the model cannot predict,
    always wrong).
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        members = bins == b
        total += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(total / len(labels))


def scores(truth: np.ndarray, classes: list[str], probabilities: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1 (over the true classes) and ECE of ``probabilities`` against ``truth``."""
    from sklearn.metrics import accuracy_score, f1_score

    index = {name: i for i, name in enumerate(classes)}
    codes = np.array([index.get(name, -1) for name in truth])
    predicted = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)]
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=sorted(set(truth)), average="macro")),
        "ece": expected_calibration_error(codes, probabilities),
    }


def _read(ref: str, query: str) -> tuple[Any, Any, np.ndarray]:
    import anndata as ad

    reference = ad.read_h5ad(ref)
    data = ad.read_h5ad(query)
    truth = data.obs.pop(TRUTH).astype(str).to_numpy()
    return reference, data, truth


def _finish(
    out: str, truth: np.ndarray, classes: list[str], probabilities: np.ndarray,
    predicted: np.ndarray, result: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    np.savez(
        out, classes=np.asarray(classes, dtype=str), probabilities=probabilities.astype(np.float64),
        predicted=np.asarray(predicted, dtype=str),
    )  # fmt: skip
    argmax = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)]
    result.update(
        classes=classes, peer_scores=scores(truth, classes, probabilities),
        prediction_is_argmax=bool((argmax == np.asarray(predicted, dtype=object)).all()),
    )  # fmt: skip
    return result


def scanvi(
    ref: str, query: str, out: str, seed: int = 0, n_latent: int = 10, n_hidden: int = 128,
    n_layers: int = 2, dropout: float = 0.2, pretrain_epochs: int = 200,
    annotate_epochs: int = 20, query_epochs: int = 100, batch_size: int = 128, lr: float = 1e-3,
    n_samples_per_label: int = 100, likelihood: str = "nb", **_: Any,
) -> dict[str, Any]:  # fmt: skip
    """Train scANVI on the reference (from a pretrained SCVI), map the query (scArches), predict."""
    import scvi
    import torch

    torch.set_num_threads(1)
    scvi.settings.seed = seed
    reference, data, truth = _read(ref, query)
    data.obs["cell_type"] = UNLABELED
    train = {
        "accelerator": "cpu",
        "devices": 1,
        "batch_size": batch_size,
        "enable_progress_bar": False,
    }
    started = time.process_time()
    scvi.model.SCVI.setup_anndata(reference, batch_key="batch", labels_key="cell_type")
    vae = scvi.model.SCVI(
        reference, n_hidden=n_hidden, n_latent=n_latent, n_layers=n_layers, dropout_rate=dropout,
        gene_likelihood=likelihood, use_layer_norm="both", use_batch_norm="none",
        encode_covariates=True,
    )  # fmt: skip
    vae.train(max_epochs=pretrain_epochs, plan_kwargs={"lr": lr}, **train)
    pretrain_cpu = time.process_time() - started
    model = scvi.model.SCANVI.from_scvi_model(
        vae, unlabeled_category=UNLABELED, labels_key="cell_type"
    )
    model.train(
        max_epochs=annotate_epochs, n_samples_per_label=n_samples_per_label,
        plan_kwargs={"lr": lr}, **train,
    )  # fmt: skip
    reference_cpu = time.process_time() - started
    started = time.process_time()
    scvi.model.SCANVI.prepare_query_anndata(data, model)
    mapped = scvi.model.SCANVI.load_query_data(data, model)
    mapped.train(max_epochs=query_epochs, plan_kwargs={"weight_decay": 0.0, "lr": lr}, **train)
    query_cpu = time.process_time() - started
    started = time.process_time()
    predicted = np.asarray(mapped.predict(data)).astype(str)
    soft = mapped.predict(data, soft=True)
    predict_cpu = time.process_time() - started
    classes = [str(c) for c in soft.columns]
    return _finish(out, truth, classes, soft.to_numpy(dtype=np.float64), predicted, {
        "tool": "scvi-tools", "version": scvi.__version__, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "n_reference": reference.n_obs,
        "n_query": data.n_obs, "n_genes": reference.n_vars, "n_query_genes_in": data.n_vars,
        "pretrain_cpu_s": pretrain_cpu, "reference_cpu_s": reference_cpu,
        "query_cpu_s": query_cpu, "predict_cpu_s": predict_cpu,
        "cpu_s": reference_cpu + query_cpu + predict_cpu,
        "n_parameters_reference": sum(p.numel() for p in model.module.parameters()),
        "epochs": [len(vae.history["elbo_train"]), len(model.history["elbo_train"]),
                   len(mapped.history["elbo_train"])],
    })  # fmt: skip


def _lognorm(adata: Any) -> Any:
    import scanpy as sc

    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def _ovr_logistic_regression() -> bool:
    """Give CellTypist the ``LogisticRegression(multi_class="ovr")`` scikit-learn 1.8 removed.

    CellTypist 1.7.1 builds ``LogisticRegression(..., multi_class="ovr")``;
    scikit-learn >= 1.8 rejects that keyword. The replacement fits one binary
    logistic regression per class (exactly what ``"ovr"`` did) and stacks
    their coefficients, so ``decision_function`` (which CellTypist turns into
    probabilities with a sigmoid) is the old one. Returns whether it patched.
    """
    import importlib
    import inspect

    from sklearn.linear_model import LogisticRegression

    ct_train = importlib.import_module("celltypist.train")  # the attribute is the function

    if "multi_class" in inspect.signature(LogisticRegression).parameters:
        return False

    class OvRLogisticRegression(LogisticRegression):
        def __init__(self, C=1.0, solver="lbfgs", max_iter=100, n_jobs=None, multi_class="ovr"):  # noqa: N803
            super().__init__(C=C, solver=solver, max_iter=max_iter)
            self.n_jobs, self.multi_class = n_jobs, multi_class

        def fit(self, X: Any, y: Any) -> OvRLogisticRegression:  # noqa: N803
            self.classes_ = np.unique(y)
            if len(self.classes_) == 2:
                return super().fit(X, y)
            fits = [
                LogisticRegression(C=self.C, solver=self.solver, max_iter=self.max_iter).fit(
                    X, y == k
                )
                for k in self.classes_
            ]
            self.coef_ = np.vstack([f.coef_ for f in fits])
            self.intercept_ = np.concatenate([f.intercept_ for f in fits])
            self.n_iter_ = np.concatenate([f.n_iter_ for f in fits])
            self.n_features_in_ = fits[0].n_features_in_
            return self

    ct_train.LogisticRegression = OvRLogisticRegression
    return True


def celltypist(ref: str, query: str, out: str, seed: int = 0, **_: Any) -> dict[str, Any]:
    """CellTypist's logistic regression (defaults, all shared genes) trained and applied."""
    import celltypist as ct

    patched = _ovr_logistic_regression()
    np.random.seed(seed)
    reference, data, truth = _read(ref, query)
    started = time.process_time()
    reference = _lognorm(reference)
    model = ct.train(
        reference, labels="cell_type", use_SGD=False, feature_selection=False, n_jobs=1
    )
    reference_cpu = time.process_time() - started
    started = time.process_time()
    predictions = ct.annotate(_lognorm(data), model=model, majority_voting=False)
    predict_cpu = time.process_time() - started
    probabilities = predictions.probability_matrix
    classes = [str(c) for c in probabilities.columns]
    predicted = predictions.predicted_labels["predicted_labels"].astype(str).to_numpy()
    return _finish(out, truth, classes, probabilities.to_numpy(dtype=np.float64), predicted, {
        "tool": "celltypist", "version": ct.__version__, "n_reference": reference.n_obs,
        "n_query": data.n_obs, "n_genes": int(len(model.features)),
        "reference_cpu_s": reference_cpu, "query_cpu_s": 0.0, "predict_cpu_s": predict_cpu,
        "cpu_s": reference_cpu + predict_cpu,
        "probabilities": "sigmoid of each one-vs-rest decision (rows do not sum to 1)",
        "ovr_shim": patched,
    })  # fmt: skip


JOBS = {"scanvi": scanvi, "celltypist": celltypist}


def main() -> None:
    """Worker entry: ``python _peer_label_transfer.py JOB JSON_KWARGS`` prints one ``RESULT`` line."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "scvi", "celltypist"):
        logging.getLogger(name).setLevel(logging.ERROR)
    result = JOBS[sys.argv[1]](**json.loads(sys.argv[2]))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
