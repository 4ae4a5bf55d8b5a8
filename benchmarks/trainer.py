"""Trainer overhead: ``Trainer.fit`` seconds/epoch vs a bare PyTorch loop, and prediction speed.

The case is the reference page's example: ``vae`` with ``hidden_dims=(512, 256)``,
``latent_dim=32``, batch 128, on synthetic log-normalised CSR counts. The bare
loop trains the same architecture (same initial weights) with the same loss on
a pre-densified tensor of the already transformed training cells — the limit
a data loader could reach. Our side reads CSR minibatches, normalises and
log-transforms them on the fly, and runs a validation pass every epoch.

Times are CPU seconds (``time.process_time``) with one torch thread; each side
runs ``--repeats`` times, alternating, and the median per-epoch time is
reported. Prediction throughput is cells per CPU second of
``Trainer.predict_dataset`` (latent + reconstruction) vs ``model(x)`` over the
dense tensor.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/trainer.py            # 20,000 x 2,000
    OMP_NUM_THREADS=1 python benchmarks/trainer.py --quick    # CI smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, print_table, write_json  # noqa: E402

import scdlkit  # noqa: E402
from scdlkit import Trainer, create_model, prepare_data  # noqa: E402

MODEL_KWARGS = {"latent_dim": 32, "hidden_dims": (512, 256)}


def bare_epoch(
    model, optimizer, x: torch.Tensor, batch_size: int, generator: torch.Generator
) -> None:
    """One epoch of the hand-written loop: same loss as the representation task."""
    model.train()
    order = torch.randperm(x.shape[0], generator=generator)
    for start in range(0, x.shape[0], batch_size):
        batch = x[order[start : start + batch_size]]
        out = model(batch)
        loss = (out["reconstruction"] - batch).pow(2).sum(1).mean()
        loss = loss + model.extra_losses(out)["kl"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def bare_predict(model, x: torch.Tensor, batch_size: int) -> None:
    model.eval()
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            out = model(x[start : start + batch_size])
            out["latent"].numpy(), out["reconstruction"].numpy()


def run(n_cells: int, n_genes: int, epochs: int, repeats: int, batch_size: int) -> list[dict]:
    torch.set_num_threads(1)
    adata = scdlkit.datasets.synthetic_counts(n_cells, n_genes, seed=0)
    prepared = prepare_data(adata, normalize=True, log1p=True)
    dense = torch.from_numpy(prepared.train.to_numpy())
    n_train = len(prepared.train)

    # warm-up: the first optimizer imports torch._dynamo (seconds, once per process)
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())
    ours, bare = [], []
    for repeat in range(repeats):
        model = create_model("vae", input_dim=prepared.input_dim, **MODEL_KWARGS)
        trainer = Trainer(
            model, "representation", epochs=epochs, batch_size=batch_size, device="cpu",
            early_stopping_patience=None, progress=False, seed=repeat,
        )  # fmt: skip
        start = time.process_time()
        trainer.fit(prepared.train, prepared.val)
        ours.append((time.process_time() - start) / epochs)

        model = create_model("vae", input_dim=prepared.input_dim, **MODEL_KWARGS)
        model.on_epoch_start(epochs)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(repeat)
        start = time.process_time()
        for _ in range(epochs):
            bare_epoch(model, optimizer, dense, batch_size, generator)
        bare.append((time.process_time() - start) / epochs)

    start = time.process_time()
    trainer.predict_dataset(prepared.train, include_inputs=False)
    ours_predict = n_train / (time.process_time() - start)
    start = time.process_time()
    bare_predict(trainer.model, dense, batch_size)
    bare_predict_rate = n_train / (time.process_time() - start)

    ours_epoch, bare_epoch_s = statistics.median(ours), statistics.median(bare)
    size = f"{n_cells}x{n_genes}"
    return [
        {
            "case": f"trainer_epoch {size}",
            "unit": "CPU s/epoch",
            "ours": ours_epoch,
            "reference": bare_epoch_s,
            "ratio": ours_epoch / bare_epoch_s,
            "target": "<= 1.2",
            "notes": f"{n_train} train + {len(prepared.val)} val cells; ours includes validation",
        },
        {
            "case": f"predict {size}",
            "unit": "cells/CPU s",
            "ours": ours_predict,
            "reference": bare_predict_rate,
            "ratio": ours_predict / bare_predict_rate,
            "target": ">= 0.9",
            "notes": "latent + reconstruction; ours reads CSR and transforms per batch",
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes for a smoke test (< 30 s)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "trainer.json"
    )
    args = parser.parse_args()
    if args.quick:
        args.cells, args.genes, args.epochs, args.repeats = 2_000, 500, 2, 1
    rows = run(args.cells, args.genes, args.epochs, args.repeats, args.batch_size)
    print_table(rows)
    write_json(
        args.out,
        {"benchmark": "trainer", "args": vars(args), "machine": machine_info(), "rows": rows},
    )


if __name__ == "__main__":
    main()
