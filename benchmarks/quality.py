"""Quality of the bundled models' defaults against honest baselines, over several seeds.

For every dataset and seed, :func:`scdlkit.compare_models` prepares the data
once (same split, same input for every model) and scores on the held-out
test cells:

- representation: ``vae`` with the current defaults, against the PCA-50
  baseline (fitted on the training cells' model input) by the kNN label
  accuracy of the latent space (k=15, fitted on the training cells' latent);
  plus two reference configurations: the defaults of scdlkit 0.1.0 before
  tuning, and a ``vae`` with KL weight 1 and no warm-up (the setting whose
  latent collapses in the reference release);
- classification: ``mlp_classifier`` with the current defaults (and with the
  0.1.0 defaults), against logistic regression on the same input, by macro F1.

Data recipes: ``pbmc68k_reduced`` reads the log-normalised ``.raw``
(``bulk_labels``); the real count datasets in ``../shared/data`` and the
synthetic counts are normalised, log-transformed and cut to 2,000 highly
variable genes (``cell_type``). The synthetic counts (1,500 cells x 3,000
genes, 6 types, 3 batches, a dataset no default was tuned on) check the
defaults only, without the reference configurations.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/quality.py                 # 4 datasets x 5 seeds
    OMP_NUM_THREADS=1 python benchmarks/quality.py --quick         # smoke test (1 seed, pbmc68k)
    OMP_NUM_THREADS=1 python benchmarks/quality.py --datasets pbmc_kang --seeds 0 1

Prints a table of mean ± sd per dataset and model and writes every row, the
summary and the pass/fail checks to ``benchmarks/results/quality.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, write_json  # noqa: E402

import scdlkit  # noqa: E402
from scdlkit.workflows import compare_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data"
COUNTS_RECIPE = {"normalize": True, "log1p": True, "use_hvg": True, "n_top_genes": 2000}
DATASETS = {
    "pbmc68k_reduced": {"label_key": "bulk_labels", "use_raw": True},
    "pbmc_3tech": {
        "file": "pbmc_3tech_batches_counts.h5ad",
        "label_key": "cell_type",
        **COUNTS_RECIPE,
    },
    "pbmc_kang": {
        "file": "pbmc_kang2018_ifnb_counts.h5ad",
        "label_key": "cell_type",
        **COUNTS_RECIPE,
    },
    "synthetic": {"label_key": "cell_type", **COUNTS_RECIPE},
}

#: Settings of scdlkit 0.1.0, before the defaults were tuned with this study.
PREVIOUS_TRAINING = {"epochs": 50, "batch_size": 256, "early_stopping_patience": 10}
PREVIOUS_VAE = {"hidden_dims": (256, 128), "dropout": 0.1, "kl_weight": 0.1, "kl_warmup_epochs": 10}
PREVIOUS_MLP = {"hidden_dims": (256, 128), "dropout": 0.1}

REPRESENTATION_MODELS = {
    "vae": {},
    "vae (0.1.0 defaults)": {"model": "vae", **PREVIOUS_TRAINING, "model_kwargs": PREVIOUS_VAE},
    "vae (KL weight 1, no warm-up)": {
        "model": "vae",
        "model_kwargs": {"kl_weight": 1.0, "kl_warmup_epochs": 0},
    },
}
CLASSIFICATION_MODELS = {
    "mlp_classifier": {},
    "mlp_classifier (0.1.0 defaults)": {
        "model": "mlp_classifier",
        **PREVIOUS_TRAINING,
        "model_kwargs": PREVIOUS_MLP,
    },
}
PCA = "PCA-50 (baseline)"
LOGREG = "logistic regression (baseline)"


def load(name: str, data_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Return the dataset and its preparation options."""
    import anndata as ad

    options = dict(DATASETS[name])
    if name == "pbmc68k_reduced":
        return scdlkit.datasets.pbmc68k_reduced(), options
    if name == "synthetic":
        adata = scdlkit.datasets.synthetic_counts(1500, 3000, n_types=6, n_batches=3, seed=2024)
        return adata, options
    path = data_dir / options.pop("file")
    if not path.is_file():
        raise SystemExit(f"{path} not found; pass --data-dir or leave {name} out of --datasets.")
    return ad.read_h5ad(path), options


def run(name: str, seed: int, data_dir: Path, *, quick: bool) -> pd.DataFrame:
    adata, options = load(name, data_dir)
    shared = {"seed": seed, "device": "cpu", **options}
    frames = []
    for task, models in (
        ("representation", REPRESENTATION_MODELS),
        ("classification", CLASSIFICATION_MODELS),
    ):
        if quick:  # a smoke test: few epochs, default model only
            models = {label: {**spec, "epochs": 10} for label, spec in list(models.items())[:1]}
        elif name == "synthetic":  # the unseen-data check: the defaults only
            models = dict(list(models.items())[:1])
        frame = compare_models(
            adata,
            models,
            task=task,
            metrics=[task] if task != "representation" else None,
            **shared,
        )
        frame.insert(0, "task", task)
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "seed", seed)
    out.insert(0, "dataset", name)
    return out


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    grouped = rows.groupby(["dataset", "task", "model", "metric"], sort=False)
    return grouped.agg(
        mean=("value", "mean"),
        sd=("value", "std"),
        n=("value", "size"),
        seconds=("seconds", "mean"),
        parameters=("parameters", "first"),
    ).reset_index()


def checks(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """Quality targets: vae kNN >= PCA-50 kNN; mlp macro-F1 >= logistic regression macro-F1."""

    def mean(dataset: str, model: str, metric: str) -> float:
        hit = summary[
            (summary["dataset"] == dataset)
            & (summary["model"] == model)
            & (summary["metric"] == metric)
        ]
        return float(hit["mean"].iloc[0]) if len(hit) else float("nan")

    out = []
    for dataset in summary["dataset"].unique():
        for ours, reference, metric in (
            ("vae", PCA, "knn_accuracy"),
            ("mlp_classifier", LOGREG, "f1_macro"),
        ):
            a, b = mean(dataset, ours, metric), mean(dataset, reference, metric)
            out.append(
                {
                    "dataset": dataset,
                    "check": f"{ours} {metric} >= {reference}",
                    "ours": a,
                    "reference": b,
                    "difference": a - b,
                    "passed": bool(a >= b),
                }
            )
        collapsed = mean(dataset, "vae (KL weight 1, no warm-up)", "knn_accuracy")
        if np.isfinite(collapsed):
            pca = mean(dataset, PCA, "knn_accuracy")
            out.append(
                {
                    "dataset": dataset,
                    "check": "vae (KL weight 1, no warm-up) knn >= 0.5 x PCA",
                    "ours": collapsed,
                    "reference": 0.5 * pca,
                    "difference": collapsed - 0.5 * pca,
                    "passed": bool(collapsed >= 0.5 * pca),
                }
            )
    return out


def print_summary(summary: pd.DataFrame, results: list[dict[str, Any]]) -> None:
    shown = summary[summary["metric"].isin(["knn_accuracy", "ari", "f1_macro", "accuracy"])]
    table = shown.assign(
        value=[
            f"{m:.3f} ± {0.0 if np.isnan(s) else s:.3f}"
            for m, s in zip(shown["mean"], shown["sd"], strict=True)
        ]
    ).pivot_table(
        index=["dataset", "model"], columns="metric", values="value", aggfunc="first", sort=False
    )
    seconds = (
        shown.groupby(["dataset", "model"], sort=False)["seconds"].first().map("{:.1f}".format)
    )
    table["seconds"] = seconds
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.fillna("").to_string())
    print()
    for row in results:
        mark = "PASS" if row["passed"] else "FAIL"
        print(
            f"{mark}  {row['dataset']:16s} {row['check']:52s} {row['ours']:.3f} vs "
            f"{row['reference']:.3f} ({row['difference']:+.3f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=list(DATASETS),
        default=["pbmc68k_reduced", "pbmc_kang", "synthetic", "pbmc_3tech"],
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--quick", action="store_true", help="1 seed, pbmc68k_reduced, 10 epochs")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON file to write (default: results/quality.json; --quick writes none)",
    )
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.seeds = ["pbmc68k_reduced"], args.seeds[:1]
    warnings.filterwarnings("ignore", category=FutureWarning)
    output = args.output
    if output is None and not args.quick:
        output = Path(__file__).resolve().parent / "results" / "quality.json"
    started = time.perf_counter()
    frames = []
    for name in args.datasets:
        for seed in args.seeds:
            begin = time.perf_counter()
            frames.append(run(name, seed, args.data_dir, quick=args.quick))
            print(f"{name} seed {seed}: {time.perf_counter() - begin:.0f} s", flush=True)
        rows = pd.concat(frames, ignore_index=True)
        summary = summarise(rows)
        results = checks(summary) if not args.quick else []
        payload = {
            "command": "OMP_NUM_THREADS=1 python benchmarks/quality.py " + " ".join(sys.argv[1:]),
            "machine": machine_info(),
            "scdlkit": scdlkit.__version__,
            "seconds": time.perf_counter() - started,
            "datasets": args.datasets,
            "seeds": args.seeds,
            "checks": results,
            "summary": json.loads(summary.to_json(orient="records")),
            "rows": json.loads(rows.to_json(orient="records")),
        }
        if output is not None:  # after every dataset, so a long run keeps what it finished
            write_json(output, payload)
    print()
    print_summary(summary, results)


if __name__ == "__main__":
    main()
