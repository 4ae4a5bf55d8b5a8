"""Regenerate ``tests/data/scib_metrics_fixture.npz``: integration metrics computed by scib-metrics.

``tests/test_integration_metrics.py`` checks that
:func:`scdlkit.evaluation.integration_metrics` agrees with these values. The
script needs ``scib-metrics<0.6`` (0.6 needs Python >= 3.12) and scanpy in the
Python that runs it, not scdlkit; for example::

    python -m venv /tmp/scib && /tmp/scib/bin/pip install "scib-metrics<0.6"
    OMP_NUM_THREADS=1 /tmp/scib/bin/python benchmarks/make_scib_fixture.py

Two datasets of 300 cells:

- ``synthetic``: a seeded 8-dimensional latent with 4 labels and 2 batches
  (label ``D`` only in batch ``b2``, so it is an isolated label) and a residual
  batch shift; the unintegrated data are 60 columns with a larger batch shift,
  reduced to 50 PCs by the Benchmarker's ``sc.tl.pca`` (``svd_solver="arpack"``);
- ``kang``: 300 cells of ``pbmc_kang2018_ifnb_counts.h5ad`` (5 cell types,
  ``sample_id`` as batch: 2 donors x control/IFN-beta); unintegrated = the
  30-PC PCA of the normalised, log-transformed counts (passed as
  ``pre_integrated_embedding_obsm_key``), latent = its first 10 PCs with half
  of each batch's mean removed (a partial correction).

Each dataset is scored twice, as the embedding ``latent`` and as the
embedding ``unintegrated``, with the Benchmarker's defaults
(``get_results(min_max_scale=False, clean_names=False)``); ``silhouette_batch``
and the Leiden NMI/ARI (off by default in the Benchmarker) come from the
metric functions on the same pynndescent neighbours (90, ``random_state=0``).
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
import scib_metrics
from scib_metrics.benchmark import Benchmarker
from scib_metrics.nearest_neighbors import pynndescent

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "scib_metrics_fixture.npz"
KANG = ROOT.parent / "shared" / "data" / "pbmc_kang2018_ifnb_counts.h5ad"


def synthetic() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.array(["A"] * 100 + ["B"] * 80 + ["C"] * 80 + ["D"] * 40)
    batches = np.where(np.arange(300) % 2 == 0, "b1", "b2")
    batches[labels == "D"] = "b2"
    centers = {name: rng.normal(scale=3.0, size=8) for name in "ABCD"}
    shift = rng.normal(size=8)
    base = np.array([centers[label] for label in labels])
    is_b2 = (batches == "b2")[:, None]
    latent = base + 0.6 * shift * is_b2 + rng.normal(size=(300, 8))
    loadings = rng.normal(size=(8, 60)) / np.sqrt(8)
    unintegrated = (base + 2.5 * shift * is_b2) @ loadings + rng.normal(scale=0.5, size=(300, 60))
    return {
        "latent": latent.astype(np.float32),
        "unintegrated": unintegrated.astype(np.float32),
        "labels": labels,
        "batches": batches,
    }


def kang() -> dict[str, np.ndarray]:
    adata = ad.read_h5ad(KANG)
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, size=300, replace=False))].copy()
    adata.X = adata.X.astype(np.float32)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=30, svd_solver="arpack", random_state=0)
    pcs = adata.obsm["X_pca"].astype(np.float64)
    batches = np.asarray(adata.obs["sample_id"], dtype=str)
    latent = pcs[:, :10].copy()
    for batch in np.unique(batches):
        mask = batches == batch
        latent[mask] -= 0.5 * latent[mask].mean(axis=0)
    return {
        "latent": latent.astype(np.float32),
        "unintegrated": pcs.astype(np.float32),
        "labels": np.asarray(adata.obs["cell_type"], dtype=str),
        "batches": batches,
    }


def score(data: dict[str, np.ndarray], *, precomputed_pca: bool) -> dict[str, dict[str, float]]:
    adata = ad.AnnData(
        X=data["unintegrated"].copy(),
        obs={"cell_type": data["labels"], "batch": data["batches"]},
    )
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    adata.obsm["latent"] = data["latent"]
    adata.obsm["unintegrated"] = data["unintegrated"]
    bench = Benchmarker(
        adata,
        batch_key="batch",
        label_key="cell_type",
        embedding_obsm_keys=["latent", "unintegrated"],
        pre_integrated_embedding_obsm_key="unintegrated" if precomputed_pca else None,
        n_jobs=1,
        progress_bar=False,
    )
    bench.benchmark()
    table = bench.get_results(min_max_scale=False, clean_names=False)
    table = table.drop(index="Metric Type")
    results = {}
    for embedding in ("latent", "unintegrated"):
        row = {str(k): float(v) for k, v in table.loc[embedding].items()}
        values = data[embedding]
        neighbours = pynndescent(values, n_neighbors=90, random_state=0)
        row["silhouette_batch"] = float(
            scib_metrics.silhouette_batch(values, data["labels"], data["batches"])
        )
        leiden = scib_metrics.nmi_ari_cluster_labels_leiden(
            neighbours.subset_neighbors(15), data["labels"]
        )
        row["nmi_ari_cluster_labels_leiden_nmi"] = float(leiden["nmi"])
        row["nmi_ari_cluster_labels_leiden_ari"] = float(leiden["ari"])
        results[embedding] = row
    return results


def main() -> None:
    arrays: dict[str, np.ndarray] = {}
    results = {}
    for name, make, precomputed in (("synthetic", synthetic, False), ("kang", kang, True)):
        data = make()
        for field, values in data.items():
            arrays[f"{name}_{field}"] = values
        results[name] = score(data, precomputed_pca=precomputed)
        print(name, json.dumps(results[name], indent=1))
    meta = {
        "scib_metrics": scib_metrics.__version__,
        "scanpy": sc.__version__,
        "results": results,
    }
    np.savez_compressed(OUT, meta=np.array(json.dumps(meta)), **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
