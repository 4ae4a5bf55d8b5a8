"""Minibatch loader: throughput and peak memory of CSR minibatches vs a pre-densified tensor.

Throughput: minibatches per CPU second of ``prepared.train.loader(batch_size=128,
shuffle=True)`` with ``normalize=True, log1p=True`` on seeded synthetic CSR counts
(``scdlkit.datasets.synthetic_counts(cells, genes, seed=0)``), against the
reference a hand-written loop reaches: slicing a pre-densified float32 torch
tensor of the same, already transformed training cells with random index
batches of 128 (``x[order[start:start + 128]]``, as in a bare PyTorch loop).
Both sides run ``--repeats`` times, alternating; the median is reported. The
faster ``x.index_select(0, idx)`` is reported too, for information.

Memory: peak RSS (``VmHWM`` on Linux, else ``ru_maxrss``) of a separate process that only loads the CSR
matrix, runs ``prepare_data`` and iterates the loader, against the CSR bytes plus
the peak RSS of a process that only imports numpy/scipy/torch/scanpy/anndata/
scdlkit. Each runs in its own subprocess so the dense reference of the
throughput part cannot pollute it. The CSR matrix is handed to the workers as
``.npy`` files, which load without a transient copy.

Targets: throughput ratio >= 0.5, memory ratio <= 1.5.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/loader.py            # 100,000 x 2,000
    OMP_NUM_THREADS=1 python benchmarks/loader.py --quick    # small, < 30 s
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

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, peak_rss_bytes, print_table, write_json  # noqa: E402

BATCH_SIZE = 128
THROUGHPUT_TARGET = 0.5
MEMORY_TARGET = 1.5
MIB = 2**20


# --------------------------------------------------------------------------- throughput


def time_loader(loader, n_batches: int, epoch: int) -> float:
    """CPU seconds per minibatch over ``n_batches`` batches (crossing epochs as needed)."""
    done = 0
    start = time.process_time()
    while done < n_batches:
        loader.set_epoch(epoch)
        for batch in loader:
            _ = batch["x"]
            done += 1
            if done == n_batches:
                break
        epoch += 1
    return (time.process_time() - start) / n_batches


def time_dense(x: torch.Tensor, n_batches: int, seed: int, *, index_select: bool) -> float:
    """CPU seconds per minibatch of random index batches sliced from a dense tensor."""
    generator = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    done = 0
    start = time.process_time()
    while done < n_batches:
        order = torch.randperm(n, generator=generator)
        for begin in range(0, n, BATCH_SIZE):
            index = order[begin : begin + BATCH_SIZE]
            _ = x.index_select(0, index) if index_select else x[index]
            done += 1
            if done == n_batches:
                break
    return (time.process_time() - start) / n_batches


def throughput(adata, n_batches: int, repeats: int) -> dict:
    from scdlkit import prepare_data

    start = time.process_time()
    prepared = prepare_data(adata, normalize=True, log1p=True)
    prepare_s = time.process_time() - start
    train = prepared.train
    loader = train.loader(batch_size=BATCH_SIZE, shuffle=True, seed=0)

    dense = torch.from_numpy(train.to_numpy())  # the same cells, already transformed
    first = next(iter(train.loader(batch_size=BATCH_SIZE, shuffle=False)))
    if not torch.allclose(first["x"], dense[:BATCH_SIZE], rtol=1e-6, atol=1e-6):
        msg = "the dense reference does not hold the loader's values"
        raise RuntimeError(msg)

    time_loader(loader, min(20, n_batches), epoch=1000)  # warm-up
    time_dense(dense, min(20, n_batches), seed=1000, index_select=False)
    ours, reference, selected = [], [], []
    for repeat in range(repeats):
        ours.append(time_loader(loader, n_batches, epoch=repeat * 1000))
        reference.append(time_dense(dense, n_batches, seed=repeat, index_select=False))
        selected.append(time_dense(dense, n_batches, seed=repeat, index_select=True))
    return {
        "train_cells": len(train),
        "prepare_cpu_s": prepare_s,
        "loader_s_per_batch": statistics.median(ours),
        "dense_index_s_per_batch": statistics.median(reference),
        "dense_index_select_s_per_batch": statistics.median(selected),
        "loader_s_per_batch_all": ours,
        "dense_index_s_per_batch_all": reference,
        "dense_index_select_s_per_batch_all": selected,
    }


# --------------------------------------------------------------------------- memory (subprocesses)


def import_stack() -> None:
    """Everything the sparse path imports, and nothing else."""
    import anndata  # noqa: F401
    import scanpy  # noqa: F401
    import scipy.sparse  # noqa: F401

    import scdlkit.data  # noqa: F401


def load_csr(folder: Path):
    import scipy.sparse as sp

    shape = tuple(json.loads((folder / "shape.json").read_text()))
    parts = [np.load(folder / f"{name}.npy") for name in ("data", "indices", "indptr")]
    return sp.csr_matrix(tuple(parts), shape=shape, copy=False)


def worker(kind: str, folder: Path, n_batches: int) -> None:
    torch.set_num_threads(1)
    import_stack()
    result: dict = {"kind": kind}
    if kind == "sparse":
        from anndata import AnnData

        from scdlkit import prepare_data

        adata = AnnData(load_csr(folder))
        prepared = prepare_data(adata, normalize=True, log1p=True)
        loader = prepared.train.loader(batch_size=BATCH_SIZE, shuffle=True, seed=0)
        result["loader_s_per_batch"] = time_loader(loader, n_batches, epoch=0)
        result["x_is_source"] = prepared.train.matrix is adata.X
    result["peak_rss_bytes"] = peak_rss_bytes()
    print(json.dumps(result))


def run_workers(folder: Path, n_batches: int) -> dict[str, dict]:
    """Run the memory workers, two at a time (RSS is per process; no CPU time is compared)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = {
        kind: subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, "--data", str(folder)]
            + ["--batches", str(n_batches)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for kind in ("baseline", "sparse")
    }
    results = {}
    for kind, process in processes.items():
        out, err = process.communicate()
        if process.returncode != 0:
            msg = f"memory worker {kind!r} failed:\n{err}"
            raise RuntimeError(msg)
        results[kind] = json.loads(out.strip().splitlines()[-1])
    return results


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--batches", type=int, default=1_000, help="minibatches timed per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10,000 x 1,000, 200 batches (< 30 s)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "loader.json"
    )
    parser.add_argument("--worker", choices=["baseline", "sparse"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.cells, args.genes, args.batches, args.repeats = 10_000, 1_000, 200, 3
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.data, args.batches)
        return {}
    torch.set_num_threads(1)
    from scdlkit.datasets import synthetic_counts

    wall = time.perf_counter()
    adata = synthetic_counts(args.cells, args.genes, seed=0)
    matrix = adata.X
    csr_bytes = int(matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes)
    nnz = int(matrix.nnz)
    speed = throughput(adata, args.batches, args.repeats)

    with tempfile.TemporaryDirectory(prefix="scdlkit-loader-") as tmp:
        folder = Path(tmp)
        for name in ("data", "indices", "indptr"):
            np.save(folder / f"{name}.npy", getattr(matrix, name))
        (folder / "shape.json").write_text(json.dumps(list(matrix.shape)))
        del adata, matrix
        memory = run_workers(folder, min(args.batches, 500))

    baseline = memory["baseline"]["peak_rss_bytes"]
    sparse_peak = memory["sparse"]["peak_rss_bytes"]
    memory_reference = csr_bytes + baseline
    loader_rate = 1.0 / speed["loader_s_per_batch"]
    dense_rate = 1.0 / speed["dense_index_s_per_batch"]
    select_rate = 1.0 / speed["dense_index_select_s_per_batch"]
    rows = [
        {
            "case": f"loader vs dense x[idx] ({args.cells:,} x {args.genes:,}, batch {BATCH_SIZE})",
            "unit": "batches/CPU s",
            "ours": loader_rate,
            "reference": dense_rate,
            "ratio": loader_rate / dense_rate,
            "target": f">= {THROUGHPUT_TARGET}",
        },
        {
            "case": "loader vs dense x.index_select(0, idx) (information)",
            "unit": "batches/CPU s",
            "ours": loader_rate,
            "reference": select_rate,
            "ratio": loader_rate / select_rate,
            "target": "",
        },
        {
            "case": "peak RSS of the sparse path vs CSR + import baseline",
            "unit": "MiB",
            "ours": sparse_peak / MIB,
            "reference": memory_reference / MIB,
            "ratio": sparse_peak / memory_reference,
            "target": f"<= {MEMORY_TARGET}",
        },
    ]
    print_table(rows)
    payload = {
        "benchmark": "loader",
        "machine": machine_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
        "details": {
            **speed,
            "nnz": nnz,
            "density": nnz / (args.cells * args.genes),
            "csr_bytes": csr_bytes,
            "import_baseline_peak_rss_bytes": baseline,
            "sparse_peak_rss_bytes": sparse_peak,
            "sparse_worker_loader_s_per_batch": memory["sparse"]["loader_s_per_batch"],
            "sparse_worker_x_is_source": memory["sparse"]["x_is_source"],
            "wall_s": time.perf_counter() - wall,
        },
        "meets_targets": {
            "throughput": loader_rate / dense_rate >= THROUGHPUT_TARGET,
            "memory": sparse_peak / memory_reference <= MEMORY_TARGET,
        },
    }
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
