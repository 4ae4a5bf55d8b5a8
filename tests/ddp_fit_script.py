"""Run by ``tests/test_distributed.py`` under ``torchrun``: an unchanged ``tl.fit`` call.

Usage: ``torchrun --standalone --nproc_per_node=2 tests/ddp_fit_script.py OUT_DIR``.
Rank 0 writes ``OUT_DIR/result.h5ad``; every rank writes ``OUT_DIR/rank<r>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

import scdlkit

#: Shared with the single-process run of the test, so both train the same way.
FIT_OPTIONS = {
    "normalize": True,
    "log1p": True,
    "label_key": "cell_type",
    "epochs": 80,
    "batch_size": 64,
    "seed": 0,
    "device": "cpu",
    "progress": False,
    "early_stopping_patience": None,
    "model_kwargs": {"latent_dim": 8, "hidden_dims": (64,)},
}
#: The count model's run: raw counts, batches in the decoder.
COUNT_OPTIONS = {
    "batch_key": "batch",
    "label_key": "cell_type",
    "epochs": 50,
    "batch_size": 64,
    "seed": 0,
    "device": "cpu",
    "progress": False,
    "early_stopping_patience": None,
    "key_added": "counts",
    "model_kwargs": {"n_hidden": 32, "n_latent": 6, "kl_warmup_steps": 50},
}


def dataset():
    """The small synthetic dataset both runs train on."""
    return scdlkit.datasets.synthetic_counts(1200, 300, n_types=4, seed=3)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    adata = dataset()
    scdlkit.tl.fit(adata, "vae", checkpoint_dir=out / "checkpoints", **FIT_OPTIONS)
    scdlkit.tl.predict(adata, outputs="latent")
    scdlkit.tl.fit(adata, "count_vae", checkpoint_dir=out / "count_checkpoints", **COUNT_OPTIONS)
    scdlkit.tl.predict(adata, key="counts", outputs="latent")
    rank = int(os.environ["RANK"])
    record = {
        "rank": rank,
        "world_size": torch.distributed.get_world_size(),
        "backend": torch.distributed.get_backend(),
        "has_record": "scdlkit" in adata.uns,
        "has_latent": "X_scdlkit" in adata.obsm,
        "has_count_latent": "X_counts" in adata.obsm,
    }
    if scdlkit.train.is_main_process():
        adata.write_h5ad(out / "result.h5ad")
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
