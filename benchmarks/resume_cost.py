"""What a training state costs: seconds per save and their share of an epoch.

Run from the repository root::

    python benchmarks/resume_cost.py                  # 100,000 x 2,000 CSR, vae (512, 256)/32
    python benchmarks/resume_cost.py --cells 20000    # a quicker check

The setting of the benchmark suite (``python -m benchmarks``): synthetic
counts prepared with ``normalize=True, log1p=True``, the reference page's VAE,
batch 128, one torch thread, CPU seconds (``time.process_time``). The Trainer
writes its state after every epoch (``save_every=1``); each write is timed
(CPU and wall seconds) and compared with the CPU seconds of the epoch it
follows. The state is what ``fit(resume_from=...)`` needs: config, best
weights, last weights, optimizer, RNG states, history, and the SHA-256
manifest of the files. Reading the newest state back (checksums verified) is
timed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402

MODEL_KWARGS = {"latent_dim": 32, "hidden_dims": (512, 256)}
RECIPE = {"normalize": True, "log1p": True}


def measure(n_cells: int, n_genes: int, epochs: int, batch_size: int) -> dict[str, Any]:
    """Train ``epochs`` epochs writing a state after each; return the timings."""
    import scdlkit
    from scdlkit import Trainer, create_model, prepare_data
    from scdlkit.train.bundle import read_training_state
    from scdlkit.train.state import find_state

    class TimedTrainer(Trainer):
        """A Trainer that times every state it writes."""

        writes: list[tuple[float, float]] = []

        def _write_state(self, position):
            cpu, wall = time.process_time(), time.perf_counter()
            path = super()._write_state(position)
            self.writes.append((time.process_time() - cpu, time.perf_counter() - wall))
            return path

    torch.set_num_threads(1)
    adata = scdlkit.datasets.synthetic_counts(n_cells, n_genes, seed=0)
    prepared = prepare_data(adata, **RECIPE)
    model = create_model("vae", input_dim=prepared.input_dim, seed=0, **MODEL_KWARGS)

    class EpochClock(scdlkit.train.Callback):
        """CPU clock at the start of training and at the end of every epoch."""

        marks: list[float] = []

        def on_fit_start(self, trainer):
            self.marks.append(time.process_time())

        def on_epoch_end(self, trainer, logs):
            self.marks.append(time.process_time())

    with tempfile.TemporaryDirectory(prefix="scdlkit-resume-cost-") as folder:
        trainer = TimedTrainer(
            model, "representation", epochs=epochs + 1, batch_size=batch_size, device="cpu",
            early_stopping_patience=None, progress=False, save_every=1, state_dir=folder,
            callbacks=[EpochClock()],
        )  # fmt: skip
        trainer.fit(prepared.train, prepared.val, prepared=prepared)
        writes = TimedTrainer.writes
        state = find_state(folder)
        size = sum(f.stat().st_size for f in state.iterdir())
        start = time.perf_counter()
        read_training_state(find_state(folder))
        read_seconds = time.perf_counter() - start
    marks = EpochClock.marks
    # a save follows every epoch but the last: its CPU time is not the next epoch's
    saved = [0.0] + [cpu for cpu, _ in writes]
    epochs_cpu = [b - a - s for a, b, s in zip(marks, marks[1:], saved, strict=False)]
    save_cpu = statistics.median(cpu for cpu, _ in writes)
    save_wall = statistics.median(wall for _, wall in writes)
    epoch = statistics.median(epochs_cpu)
    return {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_train": len(prepared.train),
        "batch_size": batch_size,
        "epoch_cpu_s": epoch,
        "save_cpu_s": save_cpu,
        "save_wall_s": save_wall,
        "save_share_of_epoch": save_cpu / epoch,
        "state_mb": size / 2**20,
        "read_state_wall_s": read_seconds,
        "saves": len(writes),
        "all_epoch_cpu_s": epochs_cpu,
        "all_saves_cpu_s": [cpu for cpu, _ in writes],
        "all_saves_wall_s": [wall for _, wall in writes],
    }


def main() -> None:
    """Run the measurement and print (and optionally write) the result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=3, help="epochs followed by a save")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = measure(args.cells, args.genes, args.epochs, args.batch_size)
    result["machine"] = machine_info()
    print(
        f"{result['n_cells']} x {result['n_genes']} cells x genes, batch {result['batch_size']}: "
        f"epoch {result['epoch_cpu_s']:.2f} CPU s; state {result['state_mb']:.1f} MB written in "
        f"{result['save_cpu_s']:.3f} CPU s ({result['save_wall_s']:.3f} s wall) = "
        f"{100 * result['save_share_of_epoch']:.2f}% of an epoch; read back (verified) in "
        f"{result['read_state_wall_s']:.3f} s"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
