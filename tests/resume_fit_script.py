"""Run by ``tests/test_resume.py``: a training job that writes its state every epoch.

Usage::

    python tests/resume_fit_script.py OUT_DIR [--backed] [--kill-rank R --kill-at E]
    torchrun --standalone --nproc_per_node=2 --max-restarts=1 tests/resume_fit_script.py OUT_DIR \\
        --kill-rank 1 --kill-at 3

It calls ``tl.fit(..., save_every=1, resume=True)`` as a cluster job script
would: started again after a kill (or by ``torchrun`` after a rank died), it
continues from the newest state. ``--kill-rank R --kill-at E`` makes rank ``R``
of the first attempt kill itself (SIGKILL) at the end of epoch ``E``. Rank 0
writes ``OUT_DIR/result.json`` (the run record) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import anndata as ad
import torch

import scdlkit
from scdlkit.train import Callback

#: Shared with the uninterrupted runs of the tests.
FIT_OPTIONS = {
    "normalize": True,
    "log1p": True,
    "label_key": "cell_type",
    "epochs": 10,
    "batch_size": 64,
    "seed": 0,
    "device": "cpu",
    "progress": False,
    "early_stopping_patience": None,
    "save_every": 1,
    "model_kwargs": {"latent_dim": 8, "hidden_dims": (64,), "dropout": 0.1},
}


def dataset(out: Path, *, backed: bool) -> ad.AnnData:
    """The synthetic dataset every run trains on (read backed from ``out/data.h5ad`` if asked)."""
    adata = scdlkit.datasets.synthetic_counts(1500, 200, n_types=4, seed=3)
    if not backed:
        return adata
    path = out / "data.h5ad"
    if not path.exists():
        adata.write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


class KillAt(Callback):
    """Kill this process (SIGKILL: no clean-up at all) at the end of an epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, logs):  # noqa: D102
        if logs["epoch"] == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def run(out: Path, *, backed: bool = False, callbacks: tuple[Callback, ...] = ()) -> dict:
    """Train as the job does (resuming the newest stopped run) and return the run record."""
    adata = dataset(out, backed=backed)
    scdlkit.tl.fit(
        adata,
        "vae",
        checkpoint_dir=out / "checkpoints",
        resume=True,
        callbacks=list(callbacks),
        **FIT_OPTIONS,
    )
    return adata.uns.get("scdlkit", {})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--backed", action="store_true")
    parser.add_argument("--kill-rank", type=int)
    parser.add_argument("--kill-at", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", 0))
    first_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) == 0
    kill = first_attempt and args.kill_rank == rank
    record = run(args.out, backed=args.backed, callbacks=(KillAt(args.kill_at),) if kill else ())
    if scdlkit.train.is_main_process():
        summary = {
            "checkpoint": record["checkpoint"],
            "epochs_run": int(record["epochs_run"]),
            "history": {key: list(map(float, value)) for key, value in record["history"].items()},
        }
        (args.out / "result.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
