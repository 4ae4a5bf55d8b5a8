"""Side-by-side benchmark of scdlkit's ``count_vae`` against scvi-tools' ``SCVI``.

Each side runs in its own process with its own interpreter (scdlkit: this one;
the peers: ``--peers-python``, a virtual environment with
``benchmarks/requirements-peers.txt``), one torch thread, batch 128, the same
data (``.h5ad`` files under ``benchmarks/results/``) and the same architecture
(n_hidden 128, n_latent 10, one layer; both parameter counts are printed).
Times are CPU seconds (``time.process_time``) per training epoch.

Cases:

- ``speed``: s/epoch of NB and ZINB on synthetic counts (``synthetic_counts``,
  2 batches) at every ``--cells`` size, median excluding the first epoch;
  scvi-tools runs no validation, so our like-for-like row validates only after
  the last epoch (``val_every = epochs + 1``) and leaves that epoch out; a
  second row keeps our default (a validation pass every epoch). Peak RSS
  (``VmHWM``, reset after the data are read) of setup + training.
- ``parity``: final training ELBO (NLL + unweighted KL per cell, the mean over
  the last epoch's minibatches, scvi-tools' ``elbo_train``) of both with
  scvi-tools' schedule (KL warm-up over 400 epochs, Adam lr 1e-3, eps 0.01,
  weight decay 1e-6, 90 % of the cells) after ``--parity-epochs`` epochs.
- ``quality``: scIB integration scores on the shared real datasets
  (2,000 ``seurat_v3`` HVGs of the counts, chosen once for every method):
  ``count_vae`` (defaults, and ``encode_covariates=True``) vs ``SCVI``
  (defaults), PCA (50 PCs of log-normalised counts) and Harmony on them, one
  run per seed, both deep models for scvi-tools' epoch heuristic
  ``min(400, 20,000 / n_cells · 400)``; scored by
  :func:`scdlkit.evaluation.integration_metrics` and by scib-metrics'
  ``Benchmarker`` (the external judge).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/peers.py --peers-python peersvenv/bin/python
    OMP_NUM_THREADS=1 python benchmarks/peers.py --cases speed --cells 20000 100000
    OMP_NUM_THREADS=1 python benchmarks/peers.py --quick        # smoke test (a few minutes)

The table is printed and every figure written to ``benchmarks/results/peers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine_info, peak_rss_bytes, run_job_or_main, write_json  # noqa: E402

CASES = ("speed", "parity", "quality")
INSTALL = (
    "python -m venv peersvenv && peersvenv/bin/pip install torch==2.13.0 && "
    "echo torch==2.13.0 > torchpin.txt && "
    "peersvenv/bin/pip install -c torchpin.txt -r benchmarks/requirements-peers.txt"
)
#: Real datasets of the quality case: file, batch column, label column.
DATASETS = {
    "pbmc_3tech": ("pbmc_3tech_batches_counts.h5ad", "batch", "cell_type"),
    "pbmc_kang": ("pbmc_kang2018_ifnb_counts.h5ad", "donor", "cell_type"),
}
DATA_DIR = HERE.parent.parent / "shared" / "data"
#: scvi-tools' optimizer, for the parity case.
PARITY_ADAM = {"lr": 1e-3, "eps": 0.01, "weight_decay": 1e-6}
QUICK = {
    "cells": [2000], "genes": 500, "epochs": 3, "likelihoods": ["nb"], "parity_epochs": 3,
    "seeds": [0], "datasets": ["pbmc_kang"], "quality_epochs": 5, "variants": ["default"],
}  # fmt: skip
VARIANTS = {"default": {}, "encode_covariates": {"encode_covariates": True}}


# -- the scdlkit side (run in a subprocess of this interpreter) ------------------------------


def _epoch_clock() -> Any:
    from scdlkit.train import Callback

    class EpochClock(Callback):
        """CPU and wall seconds and the history row of every epoch (validation included)."""

        def on_fit_start(self, trainer: Any) -> None:
            self.cpu: list[float] = []
            self.wall: list[float] = []
            self.rows: list[dict[str, float]] = []
            self._cpu, self._wall = time.process_time(), time.perf_counter()

        def on_epoch_end(self, trainer: Any, logs: dict[str, Any]) -> None:
            cpu, wall = time.process_time(), time.perf_counter()
            self.cpu.append(cpu - self._cpu)
            self.wall.append(wall - self._wall)
            self.rows.append({k: float(v) for k, v in logs.items()})
            self._cpu, self._wall = cpu, wall

    return EpochClock()


def ours_train(
    path: str, likelihood: str, epochs: int, val_every: int, parity: bool = False,
    batch_size: int = 128, seed: int = 0, **_: Any,
) -> dict[str, Any]:  # fmt: skip
    """``tl.fit(count_vae)`` on ``path`` with 10 % validation cells; the time of every epoch."""
    import anndata as ad
    import torch
    from _peer_scvi import reset_peak_rss, rss_bytes

    import scdlkit

    torch.set_num_threads(1)
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())  # imports torch._dynamo once, not timed
    adata = ad.read_h5ad(path)
    rss_data = rss_bytes()
    reset_ok = reset_peak_rss()
    model_kwargs: dict[str, Any] = {"likelihood": likelihood}
    extra: dict[str, Any] = {}
    if parity:
        model_kwargs.update(kl_schedule="scvi", kl_warmup_epochs=400)
        extra["optimizer"] = lambda params: torch.optim.Adam(params, **PARITY_ADAM, fused=True)
    clock = _epoch_clock()
    with tempfile.TemporaryDirectory() as folder:
        started = time.process_time()
        scdlkit.tl.fit(
            adata, "count_vae", batch_key="batch", model_kwargs=model_kwargs, epochs=epochs,
            batch_size=batch_size, early_stopping_patience=None, val_size=0.1, test_size=0,
            val_every=val_every, seed=seed, device="cpu", progress=False, checkpoint_dir=folder,
            callbacks=[clock], **extra,
        )  # fmt: skip
        fit_cpu = time.process_time() - started
    peak = peak_rss_bytes()
    model = scdlkit.create_model(
        "count_vae", input_dim=adata.n_vars, n_batch=adata.obs["batch"].nunique(), **model_kwargs
    )
    elbo = []
    for epoch, row in enumerate(clock.rows):
        weight = model.kl_weight_at(epoch=epoch) if parity else model.kl_weight
        kl = row["train_kl"] / weight if weight > 0 else float("nan")
        elbo.append(row["train_reconstruction"] + kl)
    return {
        "tool": "scdlkit",
        "version": scdlkit.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "likelihood": likelihood,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_train": int((adata.obs["scdlkit_split"] == "train").sum()),
        "epochs": epochs,
        "val_every": val_every,
        "validated": ["val_loss" in row for row in clock.rows],
        "epoch_cpu_s": clock.cpu,
        "epoch_wall_s": clock.wall,
        "fit_call_cpu_s": fit_cpu,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "elbo_train": elbo,
        "rss_after_data_mib": rss_data / 2**20,
        "peak_rss_mib": peak / 2**20,
        "peak_reset_ok": reset_ok,
    }


def ours_quality(
    path: str, out: str, seeds: list[int], epochs: int, variants: list[str], **_: Any
) -> dict[str, Any]:
    """``count_vae`` latent spaces of ``path``, one per variant and seed, saved to ``out`` (``.npz``)."""
    import anndata as ad
    import numpy as np
    import torch

    import scdlkit

    torch.set_num_threads(1)
    embeddings, seconds = {}, {}
    for variant in variants:
        for seed in seeds:
            adata = ad.read_h5ad(path)
            name = f"X_count_vae{'' if variant == 'default' else '_' + variant}_s{seed}"
            with tempfile.TemporaryDirectory() as folder:
                started = time.process_time()
                scdlkit.tl.fit(
                    adata, "count_vae", batch_key="batch", model_kwargs=VARIANTS[variant],
                    epochs=epochs, batch_size=128, early_stopping_patience=None, val_size=0.1,
                    test_size=0, val_every=epochs, seed=seed, device="cpu", progress=False,
                    checkpoint_dir=folder,
                )  # fmt: skip
                seconds[name] = time.process_time() - started
                scdlkit.tl.predict(adata, device="cpu")
            embeddings[name] = np.asarray(adata.obsm["X_scdlkit"], dtype=np.float32)
    np.savez(out, **embeddings)
    return {"embeddings": list(embeddings), "cpu_s": seconds, "epochs": epochs}


def ours_metrics(path: str, embeddings: str, **_: Any) -> dict[str, Any]:
    """:func:`scdlkit.evaluation.integration_metrics` of every embedding (``X_pca`` unintegrated)."""
    import anndata as ad
    import numpy as np

    try:
        from scdlkit.evaluation import integration_metrics
    except ImportError:
        from scdlkit.evaluation._integration import integration_metrics

    adata = ad.read_h5ad(path, backed="r")
    labels, batches = adata.obs["cell_type"].to_numpy(), adata.obs["batch"].to_numpy()
    stored = np.load(embeddings)
    started = time.perf_counter()
    table = {
        key: integration_metrics(stored[key], labels, batches, unintegrated=stored["X_pca"])
        for key in stored.files
    }
    return {"seconds": time.perf_counter() - started, "table": table}


OURS_JOBS = {"train": ours_train, "quality": ours_quality, "metrics": ours_metrics}


# -- the harness ------------------------------------------------------------------------------


def call(python: str, script: Path, job: str, **kwargs: Any) -> dict[str, Any]:
    """Run ``script JOB JSON`` with ``python`` in a fresh process; its ``RESULT`` line as a dict."""
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }  # fmt: skip
    load = os.getloadavg()[0]
    command = [python, str(script), job, json.dumps(kwargs)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        msg = f"{script.name} {job} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        raise RuntimeError(msg)
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result["loadavg1_before_after"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    return result


def peers_python(candidate: str | None) -> str | None:
    """Find an interpreter that imports scvi-tools, scib-metrics and harmonypy (else ``None``)."""
    options = [candidate] if candidate else []
    options += [os.environ.get("SCDLKIT_PEERS_PYTHON"), sys.executable]
    for python in filter(None, options):
        check = [python, "-c", "import scvi, scib_metrics, harmonypy"]
        if subprocess.run(check, capture_output=True, check=False).returncode == 0:
            return python
    return None


def median_epoch(result: dict[str, Any], *, clean: bool) -> float:
    """Median CPU s/epoch without the first epoch (and, with ``clean``, the validated ones)."""
    times = result["epoch_cpu_s"]
    keep = [
        t for i, t in enumerate(times)
        if i > 0 and not (clean and result.get("validated", [False] * len(times))[i])
    ]  # fmt: skip
    return statistics.median(keep or times[1:] or times)


def speed(args: argparse.Namespace, peers: str, scratch: Path) -> dict[str, Any]:
    from cases import counts_file

    runs: list[dict[str, Any]] = []
    for n_cells in args.cells:
        path = str(counts_file(scratch / "data", n_cells, args.genes))
        for likelihood in args.likelihoods:
            common = {"path": path, "likelihood": likelihood, "epochs": args.epochs}
            scvi = call(peers, HERE / "_peer_scvi.py", "train", **common)
            like = call(
                sys.executable, HERE / "peers.py", "train", val_every=args.epochs + 1, **common
            )
            default = call(sys.executable, HERE / "peers.py", "train", val_every=1, **common)
            runs.append({"n_cells": n_cells, "likelihood": likelihood, "scvi": scvi,
                         "ours": like, "ours_default": default})  # fmt: skip
    return {"runs": runs}


def speed_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for run in result["runs"]:
        scvi = median_epoch(run["scvi"], clean=False)
        like = median_epoch(run["ours"], clean=True)
        default = median_epoch(run["ours_default"], clean=False)
        rows.append([
            f"{run['n_cells']:,} × {run['scvi']['n_genes']:,}", run["likelihood"], f"{scvi:.3f}",
            f"{like:.3f}", f"{scvi / like:.2f}×", f"{default:.3f}", f"{scvi / default:.2f}×",
            f"{run['scvi']['n_parameters']:,} / {run['ours']['n_parameters']:,}",
            f"{run['scvi']['peak_rss_mib']:,.0f} / {run['ours']['peak_rss_mib']:,.0f}",
        ])  # fmt: skip
    return rows


SPEED_HEADER = [
    "cells × genes", "likelihood", "scvi-tools CPU s/epoch", "ours (no val.)", "speed-up",
    "ours (val. every epoch)", "speed-up", "parameters scvi / ours", "peak RSS MiB scvi / ours",
]  # fmt: skip


def parity(args: argparse.Namespace, peers: str, scratch: Path) -> dict[str, Any]:
    from cases import counts_file

    path = str(counts_file(scratch / "data", args.parity_cells, args.genes))
    runs = []
    for likelihood in args.likelihoods:
        common = {"path": path, "likelihood": likelihood, "epochs": args.parity_epochs}
        scvi = call(peers, HERE / "_peer_scvi.py", "train", **common)
        ours = call(
            sys.executable, HERE / "peers.py", "train", val_every=args.parity_epochs + 1,
            parity=True, **common,
        )  # fmt: skip
        runs.append({"likelihood": likelihood, "scvi": scvi, "ours": ours})
    return {"n_cells": args.parity_cells, "epochs": args.parity_epochs, "runs": runs}


def parity_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for run in result["runs"]:
        scvi, ours = run["scvi"]["elbo_train"][-1], run["ours"]["elbo_train"][-1]
        rows.append([
            f"{result['n_cells']:,}", run["likelihood"], str(result["epochs"]), f"{scvi:.2f}",
            f"{ours:.2f}", f"{100 * (ours - scvi) / scvi:+.2f} %",
            f"{median_epoch(run['scvi'], clean=False):.3f}",
            f"{median_epoch(run['ours'], clean=True):.3f}",
        ])  # fmt: skip
    return rows


PARITY_HEADER = [
    "cells", "likelihood", "epochs", "scvi-tools ELBO", "ours ELBO", "difference",
    "scvi CPU s/epoch", "ours CPU s/epoch",
]  # fmt: skip


def prepare_dataset(name: str, scratch: Path, n_top_genes: int) -> Path:
    """Write the dataset's counts on ``n_top_genes`` seurat_v3 HVGs with ``obs`` ``batch``, ``cell_type``."""
    import anndata as ad
    import scanpy as sc

    file, batch_key, label_key = DATASETS[name]
    out = scratch / f"{name}_hvg{n_top_genes}.h5ad"
    if out.is_file():
        return out
    adata = ad.read_h5ad(DATA_DIR / file)
    if adata.n_vars > n_top_genes:
        sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=n_top_genes)
        adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    obs = adata.obs[[batch_key, label_key]].astype(str).astype("category")
    obs.columns = ["batch", "cell_type"]
    small = ad.AnnData(adata.X.astype("int32"), obs=obs, var=adata.var[[]])
    out.parent.mkdir(parents=True, exist_ok=True)
    small.write_h5ad(out)
    return out


def quality(args: argparse.Namespace, peers: str, scratch: Path) -> dict[str, Any]:
    import anndata as ad
    import numpy as np

    results = {}
    for name in args.datasets:
        if not (DATA_DIR / DATASETS[name][0]).is_file():
            print(f"skipping {name}: {DATA_DIR / DATASETS[name][0]} is absent")
            continue
        path = prepare_dataset(name, scratch / "quality", args.n_top_genes)
        n_cells = ad.read_h5ad(path, backed="r").n_obs
        epochs = args.quality_epochs or max(1, min(round(20_000 / n_cells * 400), 400))
        base = scratch / "quality" / name
        peer = call(
            peers, HERE / "_peer_scvi.py", "quality", path=str(path), out=f"{base}_peers.npz",
            seeds=args.seeds, max_epochs=args.quality_epochs,
        )  # fmt: skip
        ours = call(
            sys.executable, HERE / "peers.py", "quality", path=str(path), out=f"{base}_ours.npz",
            seeds=args.seeds, epochs=epochs, variants=args.variants,
        )  # fmt: skip
        merged = {**np.load(f"{base}_peers.npz"), **np.load(f"{base}_ours.npz")}
        np.savez(f"{base}_all.npz", **merged)
        scores = call(
            sys.executable, HERE / "peers.py", "metrics", path=str(path), embeddings=f"{base}_all.npz"
        )  # fmt: skip
        judge = call(
            peers, HERE / "_peer_scvi.py", "judge", path=str(path), embeddings=f"{base}_all.npz"
        )
        results[name] = {
            "path": str(path), "n_cells": n_cells, "epochs": epochs, "peers": peer, "ours": ours,
            "ours_metrics": scores, "scib_metrics": judge,
        }  # fmt: skip
    return results


def _method(key: str) -> str:
    return key.removeprefix("X_").rsplit("_s", 1)[0] if "_s" in key else key.removeprefix("X_")


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def quality_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, result in results.items():
        ours, judge = result["ours_metrics"]["table"], result["scib_metrics"]["table"]
        methods: dict[str, list[str]] = {}
        for key in ours:
            methods.setdefault(_method(key), []).append(key)
        for method, keys in methods.items():
            judged = [_mean_sd([judge[k][c] for k in keys]) for c in JUDGE_COLUMNS]
            scored = [_mean_sd([ours[k][c] for k in keys]) for c in OUR_COLUMNS]
            rows.append([name, method, str(len(keys)), *judged, *scored])
    return rows


JUDGE_COLUMNS = ("Total", "Bio conservation", "Batch correction")
OUR_COLUMNS = ("total", "bio_conservation", "batch_correction", "knn_accuracy")
QUALITY_HEADER = [
    "dataset", "method", "seeds", "scib-metrics Total", "Bio", "Batch", "ours Total", "Bio",
    "Batch", "kNN accuracy",
]  # fmt: skip


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """Format a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--cells", nargs="+", type=int, default=[20_000, 100_000])
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each speed run")
    parser.add_argument("--likelihoods", nargs="+", default=["nb", "zinb"])
    parser.add_argument("--parity-cells", type=int, default=20_000)
    parser.add_argument("--parity-epochs", type=int, default=20)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--n-top-genes", type=int, default=2_000)
    parser.add_argument(
        "--quality-epochs", type=int, default=None,
        help="epochs of both deep models (default: scvi-tools' heuristic)",
    )  # fmt: skip
    parser.add_argument("--peers-python", default=None, help="interpreter with scvi-tools")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke test")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON file (default: results/peers.json)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
        args.parity_cells = args.cells[0]
    peers = peers_python(args.peers_python)
    if peers is None:
        print(
            f"scvi-tools, scib-metrics or harmonypy is not installed; install them with:\n{INSTALL}"
        )
        return
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "benchmark": "peers",
        "machine": machine_info(),
        "peers_python": peers,
    }
    tables = []
    for case, runner, header, to_rows in (
        ("speed", speed, SPEED_HEADER, speed_rows),
        ("parity", parity, PARITY_HEADER, parity_rows),
        ("quality", quality, QUALITY_HEADER, quality_rows),
    ):
        if case in args.cases:
            payload[case] = runner(args, peers, args.results)
            tables.append(f"{case}\n\n" + markdown(header, to_rows(payload[case])))
            print(tables[-1] + "\n", flush=True)
    payload.update(
        command="python benchmarks/peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        seconds=time.perf_counter() - started, tables=tables,
    )  # fmt: skip
    print(f"{time.perf_counter() - started:.0f} s in all")
    default = args.results / ("peers-quick.json" if args.quick else "peers.json")
    write_json(args.out or default, payload)


if __name__ == "__main__":
    run_job_or_main(OURS_JOBS, main)
