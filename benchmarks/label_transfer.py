"""Side-by-side label-transfer benchmark: scdlkit against scANVI + scArches and CellTypist.

Transfers (reference cells → query cells; labels ``obs["cell_type"]``):

- ``pbmc_3tech`` (``batch``: V3, V2, VDJ — three technologies): the reference
  is two batches, the query the third, each in turn (``3tech-V3``,
  ``3tech-V2``, ``3tech-VDJ``);
- ``pbmc_kang`` (IFN-β, batch ``sample_id``): the reference is one donor, the
  query the other (``kang-101``, ``kang-107``: the query donor), so the query
  brings two new batches (its ctrl and stim samples).

The count models read 2,000 ``seurat_v3`` HVGs of the reference counts (per
reference batch; all 1,267 genes of ``pbmc_kang``); the query keeps all its
genes (both mappers match them by name). Methods, one process each, one
thread, seeds 0, 1, 2:

- ``scanvi_scarches`` (peers, ``_peer_label_transfer.py``): scvi-tools'
  reference-mapping tutorial — ``SCVI`` (layer norm, no batch norm,
  ``encode_covariates=True``, dropout 0.2, 2 layers, NB) → ``SCANVI.from_scvi_model``
  → ``load_query_data`` + query training (``weight_decay=0``) → ``predict``;
- ``count_scanvi`` (ours): ``tl.fit("count_vae")`` → ``tl.fit("count_scanvi",
  init_from=...)`` → ``tl.map_query(weight_decay=0)``, the same architecture
  and epochs, no early stopping;
- ``celltypist`` (peers): ``celltypist.train`` (logistic regression, defaults)
  on the log1p-normalised reference, all genes;
- ``mlp_classifier`` (ours): ``tl.fit("mlp_classifier", normalize, log1p,
  use_hvg)`` on the reference, ``tl.predict(query, checkpoint=...)``;
- ``knn_pca`` (scanpy + scikit-learn): log1p-normalise, the reference HVGs,
  scale, 50-PC PCA fitted on the reference, query projected, 15-NN vote.

Metrics on the query cells against their true labels: accuracy, macro-F1,
per-class F1, expected calibration error (15 equal-width bins of the maximum
probability), CPU seconds (``time.process_time`` of training + mapping +
prediction in the method's own process; split into reference and query for
the two count-model pipelines).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/label_transfer.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/label_transfer.py --transfers 3tech-VDJ --seeds 0
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/label_transfer.py --quick   # smoke test (< 1 min)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/label_transfer.py --methods count_scanvi --kl scvi

KL warm-up: each side's default (``--kl scvi`` gives ours scvi-tools' 400-epoch
schedule, restarted by every training call, as scvi-tools does).

Results go to ``benchmarks/results/label_transfer.json`` (``label_transfer-quick.json``
with ``--quick``); the tables are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _peer_label_transfer import TRUTH, expected_calibration_error  # noqa: E402
from common import machine_info, run_job_or_main, write_json  # noqa: E402
from peers import call, markdown  # noqa: E402

DATA_DIR = HERE.parent.parent / "shared" / "data"
#: transfer -> (file, batch column, column that splits reference / query, query value)
TRANSFERS = {
    "3tech-V3": ("pbmc_3tech_batches_counts.h5ad", "batch", "batch", "V3"),
    "3tech-V2": ("pbmc_3tech_batches_counts.h5ad", "batch", "batch", "V2"),
    "3tech-VDJ": ("pbmc_3tech_batches_counts.h5ad", "batch", "batch", "VDJ"),
    "kang-101": ("pbmc_kang2018_ifnb_counts.h5ad", "sample_id", "donor", "101"),
    "kang-107": ("pbmc_kang2018_ifnb_counts.h5ad", "sample_id", "donor", "107"),
}
CROSS_TECHNOLOGY = ("3tech-V3", "3tech-V2", "3tech-VDJ")
PEER_METHODS = ("scanvi_scarches", "celltypist")
METHODS = ("scanvi_scarches", "count_scanvi", "celltypist", "mlp_classifier", "knn_pca")
LABELS = {
    "scanvi_scarches": "scANVI+scArches", "count_scanvi": "scdlkit count_scanvi",
    "celltypist": "CellTypist", "mlp_classifier": "scdlkit mlp_classifier",
    "knn_pca": "kNN on PCA",
}  # fmt: skip
INSTALL = (
    "python -m venv peersvenv && echo torch==2.13.0 > torchpin.txt && "
    "peersvenv/bin/pip install -c torchpin.txt -r benchmarks/requirements-peers.txt"
)
DEFAULT_PEERS = Path("/work/peers/venv/bin/python")
QUICK = {"transfers": ["3tech-VDJ"], "seeds": [0], "pretrain_epochs": 3, "annotate_epochs": 2,
         "query_epochs": 3, "mlp_epochs": 3}  # fmt: skip
#: CPU-time target of the count-model pipelines: scANVI/scArches ÷ ours ≥ this.
SPEED_TARGET = 1.45


# -- data ------------------------------------------------------------------------------------


def prepare(transfer: str, folder: Path, n_top_genes: int) -> dict[str, Any]:
    """Write the reference (all genes and HVGs) and the query of ``transfer`` as count ``.h5ad``.

    ``obs``: ``batch`` and ``cell_type`` (reference) or ``true_cell_type`` (query).
    """
    import anndata as ad
    import scanpy as sc

    file, batch_key, split_key, query_value = TRANSFERS[transfer]
    out = folder / transfer
    paths = {n: out / f"{n}.h5ad" for n in ("reference", "reference_hvg", "query")}
    if not all(p.is_file() for p in paths.values()):
        adata = ad.read_h5ad(DATA_DIR / file)
        is_query = adata.obs[split_key].astype(str).to_numpy() == query_value
        parts = {}
        for name, rows, label in (
            ("reference", ~is_query, "cell_type"),
            ("query", is_query, TRUTH),
        ):
            part = adata[rows]
            obs = part.obs[[batch_key, "cell_type"]].astype(str).astype("category")
            obs.columns = ["batch", label]
            parts[name] = ad.AnnData(part.X.astype(np.float32), obs=obs, var=part.var[[]])
        reference = parts["reference"]
        hvg = reference
        if reference.n_vars > n_top_genes:
            ranked = reference.copy()
            sc.pp.highly_variable_genes(
                ranked, flavor="seurat_v3", n_top_genes=n_top_genes, batch_key="batch"
            )
            hvg = reference[:, ranked.var["highly_variable"].to_numpy()].copy()
        out.mkdir(parents=True, exist_ok=True)
        reference.write_h5ad(paths["reference"])
        hvg.write_h5ad(paths["reference_hvg"])
        parts["query"].write_h5ad(paths["query"])
    shapes = {n: list(ad.read_h5ad(p, backed="r").shape) for n, p in paths.items()}
    return {**{n: str(p) for n, p in paths.items()}, "shapes": shapes}


# -- our side (run in a subprocess of this interpreter) ----------------------------------------


def _read(ref: str, query: str) -> tuple[Any, Any]:
    import anndata as ad
    import torch

    torch.set_num_threads(1)
    reference = ad.read_h5ad(ref)
    data = ad.read_h5ad(query)
    del data.obs[TRUTH]
    return reference, data


def _save(out: str, classes: Any, probabilities: Any, predicted: Any) -> list[str]:
    classes = [str(c) for c in classes]
    np.savez(
        out, classes=np.asarray(classes, dtype=str),
        probabilities=np.asarray(probabilities, dtype=np.float64),
        predicted=np.asarray(predicted).astype(str),
    )  # fmt: skip
    return classes


def count_scanvi(
    ref: str, query: str, out: str, seed: int = 0, n_latent: int = 10, n_hidden: int = 128,
    n_layers: int = 2, dropout: float = 0.2, pretrain_epochs: int = 200,
    annotate_epochs: int = 20, query_epochs: int = 100, batch_size: int = 128, lr: float = 1e-3,
    likelihood: str = "nb", kl: str = "default", **_: Any,
) -> dict[str, Any]:  # fmt: skip
    """``count_vae`` → ``count_scanvi`` (``init_from``) on the reference, ``map_query`` on the query."""
    import scdlkit

    reference, data = _read(ref, query)
    model_kwargs = {
        "n_latent": n_latent, "n_hidden": n_hidden, "n_layers": n_layers, "dropout": dropout,
        "norm": "layer", "encode_covariates": True, "likelihood": likelihood,
    }  # fmt: skip
    if kl == "scvi":  # scvi-tools' schedule: linear over 400 epochs, restarted by every train()
        model_kwargs.update(kl_schedule="scvi", kl_warmup_epochs=400)
    with tempfile.TemporaryDirectory() as folder:
        common = {
            "batch_size": batch_size, "lr": lr, "seed": seed, "device": "cpu", "progress": False,
            "checkpoint_dir": folder, "early_stopping_patience": None,
        }  # fmt: skip
        started = time.process_time()
        scdlkit.tl.fit(
            reference, "count_vae", batch_key="batch", model_kwargs=model_kwargs,
            epochs=pretrain_epochs, val_size=0.1, test_size=0.0, key_added="vae", **common,
        )  # fmt: skip
        pretrain_cpu = time.process_time() - started
        scdlkit.tl.fit(
            reference, "count_scanvi", batch_key="batch", label_key="cell_type", init_from="vae",
            epochs=annotate_epochs, val_size=0.1, test_size=0.0, key_added="scanvi", **common,
        )  # fmt: skip
        reference_cpu = time.process_time() - started
        started = time.process_time()
        scdlkit.tl.map_query(
            data, reference, key="scanvi", key_added="query", epochs=query_epochs,
            weight_decay=0.0, **common,
        )  # fmt: skip
        query_cpu = time.process_time() - started
    record = data.uns["query"]
    classes = record.get("label_categories", reference.uns["scanvi"]["label_categories"])
    classes = _save(out, classes, data.obsm["query_probabilities"], data.obs["query_prediction"])
    return {
        "tool": "scdlkit", "version": scdlkit.__version__, "classes": classes,
        "n_reference": reference.n_obs, "n_query": data.n_obs, "n_genes": reference.n_vars,
        "pretrain_cpu_s": pretrain_cpu, "reference_cpu_s": reference_cpu,
        "query_cpu_s": query_cpu, "predict_cpu_s": 0.0, "cpu_s": reference_cpu + query_cpu,
        "calibration": reference.uns["scanvi"].get("calibration"),
        "epochs": [int(reference.uns[k]["epochs_run"]) for k in ("vae", "scanvi")]
        + [int(record.get("epochs_run", -1))],
        "best_epochs": [int(reference.uns[k]["best_epoch"]) for k in ("vae", "scanvi")]
        + [int(record.get("best_epoch", -1))],
        "new_batches": [str(b) for b in record.get("new_batches", [])],
        "missing_genes": int(record.get("missing_genes", -1)),  # a count
        "n_trainable": len(record.get("trainable", [])),
    }  # fmt: skip


def mlp_classifier(
    ref: str, query: str, out: str, seed: int = 0, n_top_genes: int = 2000,
    mlp_epochs: int | None = None, **_: Any,
) -> dict[str, Any]:  # fmt: skip
    """``mlp_classifier`` (log-normalised HVGs, defaults) on the reference, predicted on the query."""
    import scdlkit

    reference, data = _read(ref, query)
    epochs = {} if mlp_epochs is None else {"epochs": mlp_epochs}
    with tempfile.TemporaryDirectory() as folder:
        started = time.process_time()
        scdlkit.tl.fit(
            reference, "mlp_classifier", label_key="cell_type", normalize=True, log1p=True,
            use_hvg=reference.n_vars > n_top_genes, n_top_genes=n_top_genes, val_size=0.1,
            test_size=0.0, seed=seed, device="cpu", progress=False, checkpoint_dir=folder,
            key_added="mlp", **epochs,
        )  # fmt: skip
        reference_cpu = time.process_time() - started
        started = time.process_time()
        scdlkit.tl.predict(
            data, checkpoint=reference.uns["mlp"]["checkpoint"], key_added="mlp", device="cpu",
            outputs=["probabilities", "prediction"],
        )  # fmt: skip
        predict_cpu = time.process_time() - started
    classes = _save(
        out, reference.uns["mlp"]["label_categories"], data.obsm["mlp_probabilities"],
        data.obs["mlp_prediction"],
    )  # fmt: skip
    return {
        "tool": "scdlkit", "version": scdlkit.__version__, "classes": classes,
        "n_reference": reference.n_obs, "n_query": data.n_obs,
        "reference_cpu_s": reference_cpu, "query_cpu_s": 0.0, "predict_cpu_s": predict_cpu,
        "cpu_s": reference_cpu + predict_cpu,
        "epochs": [int(reference.uns["mlp"]["epochs_run"])],
    }  # fmt: skip


def knn_pca(
    ref: str, query: str, out: str, hvg: str, seed: int = 0, n_pcs: int = 50,
    n_neighbors: int = 15, **_: Any,
) -> dict[str, Any]:  # fmt: skip
    """15-NN vote on 50 PCs (fitted on the reference) of the scaled log-normalised HVGs."""
    import anndata as ad
    import scanpy as sc
    import sklearn
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    reference, data = _read(ref, query)
    genes = ad.read_h5ad(hvg, backed="r").var_names
    started = time.process_time()
    matrices = []
    for adata in (reference, data):
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
        matrices.append(np.asarray(adata[:, genes].X.toarray(), dtype=np.float64))
    mean, sd = matrices[0].mean(0), matrices[0].std(0, ddof=1)
    sd[sd == 0] = 1.0
    scaled = [np.clip((m - mean) / sd, None, 10.0) for m in matrices]  # sc.pp.scale(max_value=10)
    pca = PCA(n_components=n_pcs, random_state=seed).fit(scaled[0])
    knn = KNeighborsClassifier(n_neighbors=n_neighbors).fit(
        pca.transform(scaled[0]), reference.obs["cell_type"].astype(str).to_numpy()
    )
    probabilities = knn.predict_proba(pca.transform(scaled[1]))
    predicted = knn.classes_[probabilities.argmax(axis=1)]
    cpu = time.process_time() - started
    classes = _save(out, knn.classes_, probabilities, predicted)
    return {
        "tool": "scikit-learn", "version": sklearn.__version__, "classes": classes,
        "n_reference": reference.n_obs, "n_query": data.n_obs, "n_genes": len(genes),
        "reference_cpu_s": cpu, "query_cpu_s": 0.0, "predict_cpu_s": 0.0, "cpu_s": cpu,
    }  # fmt: skip


OURS_JOBS = {"count_scanvi": count_scanvi, "mlp_classifier": mlp_classifier, "knn_pca": knn_pca}


# -- scoring ---------------------------------------------------------------------------------


def score(npz: str, truth: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class F1 and ECE of one run's saved predictions."""
    from sklearn.metrics import accuracy_score, f1_score

    stored = np.load(npz)
    classes, probabilities = list(stored["classes"]), stored["probabilities"]
    predicted = stored["predicted"]
    labels = sorted(set(truth))
    index = {name: i for i, name in enumerate(classes)}
    codes = np.array([index.get(name, -1) for name in truth])
    per_class = f1_score(truth, predicted, labels=labels, average=None, zero_division=0.0)
    result = {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(np.mean(per_class)),
        "per_class_f1": dict(zip(labels, map(float, per_class), strict=True)),
        "ece_local": expected_calibration_error(codes, probabilities),
    }
    try:
        from scdlkit.evaluation import expected_calibration_error as ours
    except ImportError:  # an older scdlkit
        result["ece"] = result["ece_local"]
        result["ece_source"] = "benchmarks/_peer_label_transfer.py (scdlkit has none yet)"
    else:
        # a true class the model cannot predict (code -1) is out of scdlkit's range
        known = codes >= 0
        result["ece"] = float(ours(codes[known], probabilities[known], n_bins=15))
        result["ece_source"] = "scdlkit.evaluation.expected_calibration_error"
        result["n_unpredictable"] = int((~known).sum())
    return result


# -- the harness -----------------------------------------------------------------------------


def peers_python(candidate: str | None) -> str | None:
    """Find the peers' interpreter (``--peers-python``, else the default venv) if it imports them."""
    import subprocess

    python = candidate or (str(DEFAULT_PEERS) if DEFAULT_PEERS.exists() else None)
    if python is None:
        return None
    try:
        done = subprocess.run([python, "-c", "import scvi, celltypist"], capture_output=True)
    except OSError:  # no such interpreter
        return None
    return python if done.returncode == 0 else None


def run_one(method: str, files: dict[str, Any], out: Path, seed: int, args: argparse.Namespace,
            peers: str | None) -> dict[str, Any]:  # fmt: skip
    """Run ``method`` on one transfer and seed in its own process; its result dict."""
    settings = {
        "seed": seed, "n_latent": args.n_latent, "n_hidden": args.n_hidden,
        "n_layers": args.n_layers, "dropout": args.dropout, "batch_size": args.batch_size,
        "lr": args.lr, "pretrain_epochs": args.pretrain_epochs,
        "annotate_epochs": args.annotate_epochs, "query_epochs": args.query_epochs,
        "out": str(out),
    }  # fmt: skip
    if method == "scanvi_scarches":
        return call(peers, HERE / "_peer_label_transfer.py", "scanvi", ref=files["reference_hvg"],
                    query=files["query"], **settings)  # fmt: skip
    if method == "celltypist":
        return call(peers, HERE / "_peer_label_transfer.py", "celltypist",
                    ref=files["reference"], query=files["query"], **settings)  # fmt: skip
    script = HERE / "label_transfer.py"
    if method == "count_scanvi":
        return call(sys.executable, script, method, ref=files["reference_hvg"],
                    query=files["query"], kl=args.kl, **settings)  # fmt: skip
    if method == "mlp_classifier":
        return call(sys.executable, script, method, ref=files["reference"], query=files["query"],
                    n_top_genes=args.n_top_genes, mlp_epochs=args.mlp_epochs, **settings)  # fmt: skip
    return call(sys.executable, script, method, ref=files["reference"], query=files["query"],
                hvg=files["reference_hvg"], **settings)  # fmt: skip


def _mean_sd(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _column(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [run[key] for run in runs]


def summary_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for transfer, block in results.items():
        for method, runs in block["methods"].items():
            ok = [run for run in runs if "error" not in run]
            if not ok:
                rows.append([transfer, LABELS[method], "0", *["failed"] * 5])
                continue
            split = "—"
            if method in ("scanvi_scarches", "count_scanvi"):
                split = (f"{_mean_sd(_column(ok, 'reference_cpu_s'), 1)} / "
                         f"{_mean_sd(_column(ok, 'query_cpu_s'), 1)}")  # fmt: skip
            rows.append([
                transfer, LABELS[method], str(len(ok)), _mean_sd(_column(ok, "accuracy")),
                _mean_sd(_column(ok, "macro_f1")), _mean_sd(_column(ok, "ece")),
                _mean_sd(_column(ok, "cpu_s"), 1), split,
            ])  # fmt: skip
    return rows


SUMMARY_HEADER = ["transfer", "method", "seeds", "accuracy", "macro-F1", "ECE", "CPU s",
                  "CPU s reference / query"]  # fmt: skip


def per_class_tables(results: dict[str, Any]) -> list[str]:
    """One per-class F1 table per dataset (mean over seeds)."""
    tables: dict[str, tuple[list[str], list[list[str]]]] = {}
    for transfer, block in results.items():
        dataset = TRANSFERS[transfer][0].split("_counts")[0]
        for method, runs in block["methods"].items():
            ok = [run for run in runs if "error" not in run]
            if not ok:
                continue
            classes = sorted(ok[0]["per_class_f1"])
            header, rows = tables.setdefault(dataset, (["transfer", "method", *classes], []))
            rows.append([transfer, LABELS[method], *(
                f"{statistics.mean(r['per_class_f1'][c] for r in ok):.3f}" for c in classes
            )])  # fmt: skip
    return [f"per-class F1, {name}\n\n" + markdown(h, r) for name, (h, r) in tables.items()]


def targets(results: dict[str, Any]) -> list[list[str]]:
    """Check (a) macro-F1 ≥ best peer − its sd, (b) > CellTypist across technologies, (c) CPU."""
    rows = []
    for transfer, block in results.items():
        runs = {m: [r for r in rs if "error" not in r] for m, rs in block["methods"].items()}
        ours = runs.get("count_scanvi")
        if not ours:
            continue
        f1 = statistics.mean(_column(ours, "macro_f1"))
        peers = {m: _column(runs[m], "macro_f1") for m in PEER_METHODS if runs.get(m)}
        if peers:
            best = max(peers, key=lambda m: statistics.mean(peers[m]))
            bar = statistics.mean(peers[best]) - _sd(peers[best])
            rows.append([transfer, "(a) macro-F1 ≥ best peer − sd", f"{f1:.3f}",
                         f"{bar:.3f} ({LABELS[best]})", "met" if f1 >= bar else "missed"])  # fmt: skip
        if transfer in CROSS_TECHNOLOGY and "celltypist" in peers:
            bar = statistics.mean(peers["celltypist"])
            rows.append([transfer, "(b) macro-F1 > CellTypist", f"{f1:.3f}", f"{bar:.3f}",
                         "met" if f1 > bar else "missed"])  # fmt: skip
        if runs.get("scanvi_scarches"):
            cpu = [r["reference_cpu_s"] + r["query_cpu_s"] for r in ours]
            peer = [r["reference_cpu_s"] + r["query_cpu_s"] for r in runs["scanvi_scarches"]]
            ratio = statistics.mean(peer) / statistics.mean(cpu)
            rows.append([transfer, f"(c) CPU s reference + query ≤ scANVI ÷ {SPEED_TARGET}",
                         f"{statistics.mean(cpu):.1f}", f"{statistics.mean(peer):.1f} "
                         f"({ratio:.2f}×)", "met" if ratio >= SPEED_TARGET else "missed"])  # fmt: skip
    return rows


TARGET_HEADER = ["transfer", "target", "ours (count_scanvi)", "bar", "verdict"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transfers", nargs="+", choices=list(TRANSFERS), default=list(TRANSFERS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pretrain-epochs", type=int, default=200, help="count VAE / SCVI")
    parser.add_argument("--annotate-epochs", type=int, default=20, help="count_scanvi / SCANVI")
    parser.add_argument("--query-epochs", type=int, default=100, help="query mapping")
    parser.add_argument("--mlp-epochs", type=int, default=None, help="default: tl.fit's")
    parser.add_argument("--n-latent", type=int, default=10)
    parser.add_argument("--n-hidden", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-top-genes", type=int, default=2000)
    parser.add_argument(
        "--kl", choices=["default", "scvi"], default="default",
        help="our KL warm-up: our default (2,000 steps) or scvi-tools' (400 epochs per train())",
    )  # fmt: skip
    parser.add_argument(
        "--peers-python", default=None, help="interpreter with scvi-tools, celltypist"
    )
    parser.add_argument("--quick", action="store_true", help="one transfer, one seed, few epochs")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    peers = peers_python(args.peers_python)
    methods = list(args.methods)
    if peers is None and set(methods) & set(PEER_METHODS):
        print(
            f"scvi-tools or celltypist is not installed; skipping the peers. Install with:\n{INSTALL}"
        )
        methods = [m for m in methods if m not in PEER_METHODS]
    started = time.perf_counter()
    scratch = args.results / "label_transfer"
    results: dict[str, Any] = {}
    for transfer in args.transfers:
        if not (DATA_DIR / TRANSFERS[transfer][0]).is_file():
            print(f"skipping {transfer}: {DATA_DIR / TRANSFERS[transfer][0]} is absent")
            continue
        files = prepare(transfer, scratch, args.n_top_genes)
        import anndata as ad

        truth = ad.read_h5ad(files["query"]).obs[TRUTH].astype(str).to_numpy()
        block = results[transfer] = {"files": files, "methods": {m: [] for m in methods}}
        for seed in args.seeds:
            for method in methods:
                out = scratch / transfer / f"{method}_s{seed}.npz"
                try:
                    run = run_one(method, files, out, seed, args, peers)
                    run.update(score(str(out), truth))
                except RuntimeError as err:
                    run = {"error": str(err)}
                    print(f"{transfer} {method} seed {seed} FAILED:\n{err}", flush=True)
                run["seed"] = seed
                block["methods"][method].append(run)
                if "error" not in run:
                    print(f"{transfer:10s} {method:16s} seed {seed}: acc {run['accuracy']:.3f} "
                          f"F1 {run['macro_f1']:.3f} ECE {run['ece']:.3f} CPU {run['cpu_s']:.1f} s",
                          flush=True)  # fmt: skip
    tables = [
        "label transfer (mean ± sd over seeds)\n\n"
        + markdown(SUMMARY_HEADER, summary_rows(results)),
        *per_class_tables(results),
        "targets\n\n" + markdown(TARGET_HEADER, targets(results)),
    ]
    for table in tables:
        print(table + "\n", flush=True)
    seconds = time.perf_counter() - started
    print(f"{seconds:.0f} s in all")
    payload = {
        "benchmark": "label_transfer", "machine": machine_info(), "peers_python": peers,
        "command": "python benchmarks/label_transfer.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seconds": seconds, "results": results, "tables": tables,
    }  # fmt: skip
    default = args.results / ("label_transfer-quick.json" if args.quick else "label_transfer.json")
    write_json(args.out or default, payload)


if __name__ == "__main__":
    run_job_or_main(OURS_JOBS, main)
