"""The cases of the benchmark suite, each run in its own process by ``benchmarks/run.py``.

Every case measures our figure and its reference in the same process run and
returns plain numbers; ``run.py`` turns them into table rows. Times are CPU
seconds (``time.process_time``) with one torch thread, so a busy machine slows
both sides alike; peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_bytes  # noqa: E402

#: The reference page's example model.
MODEL_KWARGS = {"latent_dim": 32, "hidden_dims": (512, 256)}
#: How the synthetic counts are prepared for the model, in every case.
RECIPE = {"normalize": True, "log1p": True}


def counts_file(cache: Path, n_cells: int, n_genes: int) -> Path:
    """Path of the cached synthetic count matrix (generated and written once)."""
    import scdlkit

    path = cache / f"synthetic_{n_cells}x{n_genes}.h5ad"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    adata = scdlkit.datasets.synthetic_counts(n_cells, n_genes, seed=0)
    temporary = path.with_suffix(".h5ad.tmp")
    adata.write_h5ad(temporary)
    temporary.replace(path)
    return path


def _warm_up() -> None:
    # the first optimizer in a process imports torch._dynamo (seconds, once): not training time
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())


def bare_epoch(
    model: Any, optimizer: Any, x: torch.Tensor, batch_size: int, generator: torch.Generator
) -> None:
    """One epoch of the hand-written loop: the representation task's loss, no validation."""
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


def bare_predict(model: Any, x: torch.Tensor, batch_size: int) -> dict[str, np.ndarray]:
    """``model(x)`` over a dense tensor, keeping latent and reconstruction as whole arrays.

    What a hand-written loop does to keep its results: a list of numpy parts
    per output, concatenated at the end.
    """
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"latent": [], "reconstruction": []}
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            out = model(x[start : start + batch_size])
            for key, values in parts.items():
                values.append(out[key].numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def trainer_epoch(
    n_cells: int, n_genes: int, epochs: int, repeats: int, batch_size: int, **_: Any
) -> dict[str, Any]:
    """``Trainer.fit`` CPU s/epoch (validation included) vs the bare loop on a dense tensor.

    The bare loop runs twice per repeat: with torch's default Adam step (the
    reference of the first row) and with ``Adam(fused=True)``, the fastest
    correct step torch offers on CPU and the one the Trainer uses by default,
    so the limit we compare against stays the best loop one can write.
    """
    import scdlkit
    from scdlkit import Trainer, create_model, prepare_data

    adata = scdlkit.datasets.synthetic_counts(n_cells, n_genes, seed=0)
    prepared = prepare_data(adata, **RECIPE)
    dense = torch.from_numpy(prepared.train.to_numpy())
    _warm_up()
    ours, bare, fused = [], [], []
    for repeat in range(repeats):  # alternate the sides so drifts in machine load hit all of them
        model = create_model("vae", input_dim=prepared.input_dim, seed=repeat, **MODEL_KWARGS)
        trainer = Trainer(
            model, "representation", epochs=epochs, batch_size=batch_size, device="cpu",
            early_stopping_patience=None, progress=False, seed=repeat,
        )  # fmt: skip
        start = time.process_time()
        trainer.fit(prepared.train, prepared.val)
        ours.append((time.process_time() - start) / epochs)

        model = create_model("vae", input_dim=prepared.input_dim, seed=repeat, **MODEL_KWARGS)
        model.on_epoch_start(epochs)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(repeat)
        start = time.process_time()
        for _ in range(epochs):
            bare_epoch(model, optimizer, dense, batch_size, generator)
        bare.append((time.process_time() - start) / epochs)

        model = create_model("vae", input_dim=prepared.input_dim, seed=repeat, **MODEL_KWARGS)
        model.on_epoch_start(epochs)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        generator = torch.Generator().manual_seed(repeat)
        start = time.process_time()
        for _ in range(epochs):
            bare_epoch(model, optimizer, dense, batch_size, generator)
        fused.append((time.process_time() - start) / epochs)
    return {
        "ours": statistics.median(ours),
        "reference": statistics.median(bare),
        "reference_fused": statistics.median(fused),
        "n_train": len(prepared.train),
        "n_val": len(prepared.val),
        "all_ours": ours,
        "all_reference": bare,
        "all_reference_fused": fused,
    }


def predict(n_cells: int, n_genes: int, batch_size: int, repeats: int, **_: Any) -> dict[str, Any]:
    """``tl.predict`` (latent + reconstruction written to the AnnData) vs a bare ``model(x)`` loop."""
    import tempfile

    import scdlkit
    from scdlkit import prepare_data

    adata = scdlkit.datasets.synthetic_counts(n_cells, n_genes, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        scdlkit.tl.fit(
            adata, "vae", **RECIPE, model_kwargs=MODEL_KWARGS, epochs=1, batch_size=batch_size,
            device="cpu", progress=False, checkpoint_dir=folder,
        )  # fmt: skip
        checkpoint = adata.uns["scdlkit"]["checkpoint"]
        trainer = scdlkit.Trainer.load_checkpoint(checkpoint, device="cpu")
        dense = torch.from_numpy(
            prepare_data(adata, **RECIPE, val_size=0, test_size=0).train.to_numpy()
        )
        ours, bare = [], []
        for _ in range(repeats):
            start = time.process_time()
            scdlkit.tl.predict(adata, outputs=["latent", "reconstruction"], device="cpu")
            ours.append(adata.n_obs / (time.process_time() - start))
            start = time.process_time()
            bare_predict(trainer.model, dense, batch_size)
            bare.append(adata.n_obs / (time.process_time() - start))
    return {"ours": statistics.median(ours), "reference": statistics.median(bare)}


def fit_from_file(
    path: str, backed: bool, batch_size: int, epochs: int, **_: Any
) -> dict[str, Any]:
    """Peak RSS and CPU s per training cell of ``tl.fit`` reading ``path`` in memory or backed."""
    import tempfile

    import anndata as ad

    import scdlkit

    adata = ad.read_h5ad(path, backed="r" if backed else None)
    matrix = adata.X
    csr_bytes = 0
    if not backed:
        csr_bytes = matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes
    _warm_up()
    with tempfile.TemporaryDirectory() as folder:
        start = time.process_time()
        wall = time.perf_counter()
        scdlkit.tl.fit(
            adata, "vae", **RECIPE, model_kwargs=MODEL_KWARGS, epochs=epochs, batch_size=batch_size,
            device="cpu", progress=False, checkpoint_dir=folder, early_stopping_patience=None,
        )  # fmt: skip
        cpu = time.process_time() - start
        wall = time.perf_counter() - wall
    n_train = int((adata.obs["scdlkit_split"] == "train").sum())
    return {
        "peak_rss_mib": peak_rss_bytes() / 2**20,
        "csr_mib": csr_bytes / 2**20,
        "cpu_s_per_epoch": cpu / epochs,
        "wall_s_per_epoch": wall / epochs,
        "n_cells": adata.n_obs,
        "n_train": n_train,
        "cpu_us_per_train_cell": 1e6 * cpu / epochs / n_train,
    }


def baseline(batch_size: int, **_: Any) -> dict[str, Any]:
    """Peak RSS of the interpreter with torch and scdlkit after a tiny ``tl.fit`` (no data to speak of)."""
    import tempfile

    import scdlkit

    adata = scdlkit.datasets.synthetic_counts(500, 2000, seed=0)
    _warm_up()
    with tempfile.TemporaryDirectory() as folder:
        scdlkit.tl.fit(
            adata, "vae", **RECIPE, model_kwargs=MODEL_KWARGS, epochs=1, batch_size=batch_size,
            device="cpu", progress=False, checkpoint_dir=folder,
        )  # fmt: skip
    return {"peak_rss_mib": peak_rss_bytes() / 2**20}


CASES = {
    "trainer_epoch": trainer_epoch,
    "predict": predict,
    "fit_from_file": fit_from_file,
    "baseline": baseline,
}


def main() -> None:
    """Worker entry: ``python cases.py CASE JSON_KWARGS`` prints one JSON line."""
    import json

    torch.set_num_threads(1)
    result = CASES[sys.argv[1]](**json.loads(sys.argv[2]))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
