"""The peers' side of ``benchmarks/peers.py``: scvi-tools, harmonypy and scib-metrics.

Runs in the interpreter of a separate virtual environment that has the peers
installed (``benchmarks/requirements-peers.txt``); it never imports scdlkit.
``peers.py`` calls it as ``python _peer_scvi.py JOB JSON_KWARGS`` and reads the
``RESULT {...}`` line it prints. Jobs:

- ``train``: ``SCVI`` on a count ``.h5ad`` (``obs["batch"]``) for a fixed
  number of epochs at batch 128 without validation (scvi-tools' default), with
  CPU and wall seconds of every training epoch (a Lightning callback around
  ``on_train_epoch_start`` / ``on_train_epoch_end``), the per-epoch training
  ELBO, the parameter count and the peak RSS of setup + training;
- ``quality``: PCA (50 PCs of log-normalised counts), Harmony on those PCs and
  ``SCVI`` with scvi-tools' defaults (its epoch heuristic), one embedding per
  seed, saved to an ``.npz``;
- ``judge``: scib-metrics' ``Benchmarker`` (default metrics, unscaled) on the
  embeddings of an ``.npz``, with ``X_pca`` as the unintegrated embedding.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_bytes  # noqa: E402

#: The architecture both sides train in the speed and parity cases.
ARCHITECTURE = {"n_hidden": 128, "n_latent": 10, "n_layers": 1}


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); whether it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return peak_rss_bytes() <= rss_bytes() + 8 * 2**20


def rss_bytes() -> int:
    """Return the current resident set size (``VmRSS``), 0 where ``/proc`` is absent."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _import_scvi() -> tuple[Any, float]:
    started = time.perf_counter()
    import scvi
    import torch

    torch.set_num_threads(1)
    return scvi, time.perf_counter() - started


def epoch_timer() -> Any:
    """Build a Lightning callback that records CPU and wall seconds of every training epoch."""
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self) -> None:
            self.cpu: list[float] = []
            self.wall: list[float] = []

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._cpu, self._wall = time.process_time(), time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.cpu.append(time.process_time() - self._cpu)
            self.wall.append(time.perf_counter() - self._wall)

    return EpochTimer()


def _history(model: Any, key: str) -> list[float]:
    frame = model.history.get(key)
    return [] if frame is None else [float(v) for v in np.asarray(frame).ravel()]


def train(
    path: str, likelihood: str, epochs: int, batch_size: int = 128, seed: int = 0, **_: Any
) -> dict[str, Any]:
    """Train ``SCVI`` for ``epochs`` epochs on ``path`` and time every training epoch."""
    scvi, import_s = _import_scvi()
    import anndata as ad
    import torch

    scvi.settings.seed = seed
    adata = ad.read_h5ad(path)
    rss_data = rss_bytes()
    reset_ok = reset_peak_rss()
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.SCVI(adata, gene_likelihood=likelihood, **ARCHITECTURE)
    timer = epoch_timer()
    started = time.process_time()
    model.train(
        max_epochs=epochs, accelerator="cpu", devices=1, batch_size=batch_size, train_size=0.9,
        early_stopping=False, enable_progress_bar=False, callbacks=[timer],
    )  # fmt: skip
    train_cpu = time.process_time() - started
    peak = peak_rss_bytes()
    n_train = len(model.train_indices)
    return {
        "tool": "scvi-tools",
        "version": scvi.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "likelihood": likelihood,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_train": n_train,
        "epochs": epochs,
        "batch_size": batch_size,
        "epoch_cpu_s": timer.cpu,
        "epoch_wall_s": timer.wall,
        "train_call_cpu_s": train_cpu,
        "n_parameters": sum(p.numel() for p in model.module.parameters()),
        "elbo_train": _history(model, "elbo_train"),
        "reconstruction_loss_train": _history(model, "reconstruction_loss_train"),
        "kl_local_train": _history(model, "kl_local_train"),
        "import_s": import_s,
        "rss_after_data_mib": rss_data / 2**20,
        "peak_rss_mib": peak / 2**20,
        "peak_reset_ok": reset_ok,
    }


def log_normalised_pcs(adata: Any, n_pcs: int = 50) -> np.ndarray:
    """50 PCs of ``log1p(normalize_total(counts, 1e4))`` (unscaled), scanpy's defaults."""
    import scanpy as sc

    work = adata.copy()
    sc.pp.normalize_total(work, target_sum=1e4)
    sc.pp.log1p(work)
    n_pcs = min(n_pcs, min(work.shape) - 1)
    sc.tl.pca(work, n_comps=n_pcs)
    return np.asarray(work.obsm["X_pca"], dtype=np.float32)


def harmony(pcs: np.ndarray, batches: Any, seed: int) -> np.ndarray:
    """Harmony (harmonypy defaults) on ``pcs`` with ``batches`` as the one covariate."""
    import harmonypy
    import pandas as pd

    meta = pd.DataFrame({"batch": np.asarray(batches).astype(str)})
    result = harmonypy.run_harmony(pcs, meta, "batch", random_state=seed, verbose=False)
    corrected = np.asarray(result.Z_corr, dtype=np.float32)
    return corrected if corrected.shape[0] == pcs.shape[0] else corrected.T


def quality(path: str, out: str, seeds: list[int], max_epochs: int | None = None, **_: Any) -> dict:
    """PCA, Harmony and ``SCVI`` (defaults) embeddings of ``path``, saved to ``out`` (``.npz``).

    ``max_epochs=None`` keeps scvi-tools' heuristic ``min(400, round(20,000 / n_cells * 400))``.
    """
    scvi, _ = _import_scvi()
    import anndata as ad

    adata = ad.read_h5ad(path)
    embeddings: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    started = time.process_time()
    embeddings["X_pca"] = log_normalised_pcs(adata)
    seconds["X_pca"] = time.process_time() - started
    for seed in seeds:
        started = time.process_time()
        embeddings[f"X_harmony_s{seed}"] = harmony(embeddings["X_pca"], adata.obs["batch"], seed)
        seconds[f"X_harmony_s{seed}"] = time.process_time() - started
    epochs_used = None
    n_parameters = None
    for seed in seeds:
        scvi.settings.seed = seed
        data = adata.copy()
        scvi.model.SCVI.setup_anndata(data, batch_key="batch")
        model = scvi.model.SCVI(data)
        n_parameters = sum(p.numel() for p in model.module.parameters())
        started = time.process_time()
        model.train(max_epochs=max_epochs, accelerator="cpu", devices=1, enable_progress_bar=False)
        seconds[f"X_scvi_s{seed}"] = time.process_time() - started
        epochs_used = len(_history(model, "elbo_train"))
        embeddings[f"X_scvi_s{seed}"] = np.asarray(
            model.get_latent_representation(), dtype=np.float32
        )
    np.savez(out, **embeddings)
    return {
        "embeddings": list(embeddings),
        "cpu_s": seconds,
        "scvi_epochs": epochs_used,
        "scvi_parameters": n_parameters,
        "scvi_version": scvi.__version__,
    }


def judge(path: str, embeddings: str, **_: Any) -> dict[str, Any]:
    """scib-metrics' ``Benchmarker`` (defaults, unscaled) on every embedding of ``embeddings``."""
    import anndata as ad
    import scib_metrics
    from scib_metrics.benchmark import Benchmarker

    adata = ad.read_h5ad(path)
    stored = np.load(embeddings)
    for key in stored.files:
        adata.obsm[key] = stored[key]
    keys = [key for key in stored.files if key != "X_pca"]
    started = time.perf_counter()
    bench = Benchmarker(
        adata, batch_key="batch", label_key="cell_type", embedding_obsm_keys=["X_pca", *keys],
        pre_integrated_embedding_obsm_key="X_pca", n_jobs=1, progress_bar=False,
    )  # fmt: skip
    bench.benchmark()
    table = bench.get_results(min_max_scale=False)
    table = table.drop(index="Metric Type", errors="ignore").astype(float)
    return {
        "scib_metrics": scib_metrics.__version__,
        "seconds": time.perf_counter() - started,
        "table": {name: row.to_dict() for name, row in table.iterrows()},
    }


JOBS = {"train": train, "quality": quality, "judge": judge}


def main() -> None:
    """Worker entry: ``python _peer_scvi.py JOB JSON_KWARGS`` prints one ``RESULT`` line."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    result = JOBS[sys.argv[1]](**json.loads(sys.argv[2]))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
