"""scdlkit's benchmark suite: every case against a reference measured in the same run.

Cases (each in its own process, one torch thread, CPU seconds):

- ``trainer_epoch``: ``Trainer.fit`` s/epoch (validation included) vs a bare
  PyTorch loop over a pre-densified tensor of the training cells, ``vae`` with
  ``hidden_dims=(512, 256)``, ``latent_dim=32``, batch 128, synthetic
  log-normalised CSR at every ``--cells`` size; two rows per size, the bare
  loop stepping torch's default Adam and ``Adam(fused=True)`` (the best bare
  loop, and the Trainer's default step);
- ``predict``: cells/s of ``tl.predict`` (latent + reconstruction into the
  AnnData) vs a bare ``model(x)`` loop over the dense tensor that keeps its
  outputs as whole arrays (a list of parts per output, concatenated);
- ``memory``: peak RSS of ``tl.fit`` on the ``--memory-cells`` CSR file vs the
  CSR bytes plus the baseline of a process that ran a tiny ``tl.fit``;
- ``backed``: CPU s per training cell and peak RSS of ``tl.fit`` from a backed
  ``.h5ad`` of ``--backed-cells`` cells vs the in-memory run of the memory case;
- ``import``: wall time of ``import scdlkit`` vs ``import scanpy`` (best of 3).

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks                  # the default run (< 10 min on 2 cores)
    OMP_NUM_THREADS=1 python -m benchmarks --quick          # CI smoke test (< 1 min)
    OMP_NUM_THREADS=1 python benchmarks/run.py --cases backed --backed-cells 1000000

Synthetic count files are cached under ``benchmarks/results/data``. The table
is printed and every figure is written to ``benchmarks/results/benchmarks.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine_info, print_table, write_json  # noqa: E402

CASES = ("trainer_epoch", "predict", "memory", "backed", "import")
QUICK = {"cells": [2000], "genes": 500, "memory_cells": 3000, "backed_cells": 3000, "repeats": 1}


def worker(case: str, **kwargs: Any) -> dict[str, Any]:
    """Run ``cases.<case>(**kwargs)`` in a fresh process and return its result."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "NUMBA_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    command = [sys.executable, str(HERE / "cases.py"), case, json.dumps(kwargs)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        msg = f"benchmark case {case} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        raise RuntimeError(msg)
    return json.loads(lines[-1].removeprefix("RESULT "))


def import_seconds(statement: str, repeats: int = 3) -> float:
    """Best wall time of ``statement`` in a fresh interpreter."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    times = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        times.append(float(done.stdout.strip().splitlines()[-1]))
    return min(times)


def row(case: str, unit: str, ours: float, reference: float, target: str, **extra: Any) -> dict:
    return {
        "case": case,
        "unit": unit,
        "ours": ours,
        "reference": reference,
        "ratio": ours / reference,
        "target": target,
        **extra,
    }


def trainer_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for n_cells in args.cells:
        result = worker(
            "trainer_epoch", n_cells=n_cells, n_genes=args.genes, epochs=args.epochs,
            repeats=args.repeats, batch_size=args.batch_size,
        )  # fmt: skip
        notes = f"{result['n_train']} train cells; ours also validates {result['n_val']} cells"
        rows.append(
            row(
                f"trainer_epoch {n_cells}x{args.genes}",
                "CPU s/epoch",
                result["ours"],
                result["reference"],
                "<= 1.10",
                notes=notes + "; bare loop with the default Adam step",
            )  # fmt: skip
        )
        rows.append(
            row(
                f"trainer_epoch {n_cells}x{args.genes} vs fused bare loop",
                "CPU s/epoch",
                result["ours"],
                result["reference_fused"],
                "<= 1.10",
                notes=notes + "; bare loop with Adam(fused=True), the Trainer's default step",
            )  # fmt: skip
        )
    return rows


def predict_rows(args: argparse.Namespace) -> list[dict]:
    n_cells = args.cells[0]
    result = worker(
        "predict", n_cells=n_cells, n_genes=args.genes, batch_size=args.batch_size,
        repeats=args.repeats,
    )  # fmt: skip
    return [
        row(
            f"predict {n_cells}x{args.genes}",
            "cells/CPU s",
            result["ours"],
            result["reference"],
            ">= 0.9",
            notes="tl.predict writes latent + reconstruction; bare: model(x) on dense, outputs kept",
        )  # fmt: skip
    ]


def memory_and_backed_rows(args: argparse.Namespace, cases: list[str]) -> list[dict]:
    from cases import counts_file

    cache = args.results / "data"
    rows = []
    path = counts_file(cache, args.memory_cells, args.genes)
    common = {"batch_size": args.batch_size, "epochs": 1}
    in_memory = worker("fit_from_file", path=str(path), backed=False, **common)
    size = f"{args.memory_cells}x{args.genes}"
    if "memory" in cases:
        base = worker("baseline", batch_size=args.batch_size)
        reference = in_memory["csr_mib"] + base["peak_rss_mib"]
        rows.append(
            row(
                f"memory {size}",
                "peak RSS MiB",
                in_memory["peak_rss_mib"],
                reference,
                "<= 1.5",
                notes=f"CSR {in_memory['csr_mib']:.0f} MiB + baseline {base['peak_rss_mib']:.0f} MiB",
            )  # fmt: skip
        )
    if "backed" in cases:
        backed_path = counts_file(cache, args.backed_cells, args.genes)
        backed = worker("fit_from_file", path=str(backed_path), backed=True, **common)
        backed_size = f"{args.backed_cells}x{args.genes}"
        rows.append(
            row(
                f"backed speed {backed_size}",
                "train cells/CPU s",
                1e6 / backed["cpu_us_per_train_cell"],
                1e6 / in_memory["cpu_us_per_train_cell"],
                ">= 0.6",
                notes=f"reference: the in-memory run of {size}",
            )  # fmt: skip
        )
        rows.append(
            {
                "case": f"backed memory {backed_size}",
                "unit": "peak RSS MiB",
                "ours": backed["peak_rss_mib"],
                "reference": in_memory["peak_rss_mib"],
                "ratio": backed["peak_rss_mib"] / in_memory["peak_rss_mib"],
                "target": "< 2048 MiB",
                "notes": f"reference: the in-memory run of {size}",
            }
        )
    return rows


def import_rows(repeats: int) -> list[dict]:
    ours = import_seconds("import scdlkit", repeats)
    scanpy = import_seconds("import scanpy", repeats)
    full = import_seconds("import scdlkit; scdlkit.tl; scdlkit.Trainer", repeats)
    return [
        row("import scdlkit", "wall s", ours, scanpy, "< 2 s and <= 1", notes="vs import scanpy"),
        row(
            "import scdlkit + tl + Trainer",
            "wall s",
            full,
            scanpy,
            "",
            notes="first use loads scanpy and torch",
        ),  # fmt: skip
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--cells", nargs="+", type=int, default=[20_000, 100_000])
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--memory-cells", type=int, default=100_000)
    parser.add_argument("--backed-cells", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke test (< 1 min)")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON file (default: results/benchmarks.json)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    started = time.perf_counter()
    rows: list[dict] = []
    for case in args.cases:
        if case == "trainer_epoch":
            rows += trainer_rows(args)
        elif case == "predict":
            rows += predict_rows(args)
        elif case == "import":
            rows += import_rows(1 if args.quick else 3)
    if {"memory", "backed"} & set(args.cases):
        rows += memory_and_backed_rows(args, args.cases)
    print_table(rows)
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    write_json(
        args.out or args.results / ("benchmarks-quick.json" if args.quick else "benchmarks.json"),
        {
            "benchmark": "suite",
            "command": "python -m benchmarks "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": machine_info(),
            "seconds": time.perf_counter() - started,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
