"""Tests of the ``scdlkit`` console command (``python -m scdlkit.cli``)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import mudata
import numpy as np
import pytest

import scdlkit
from scdlkit.cli import main


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "agg"}
    return subprocess.run(
        [sys.executable, "-m", "scdlkit.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory) -> Path:
    """A 300-cell subset of pbmc68k_reduced as .h5ad."""
    adata = scdlkit.datasets.pbmc68k_reduced()[::2].copy()
    path = tmp_path_factory.mktemp("cli") / "pbmc.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def fitted(small_h5ad) -> tuple[Path, subprocess.CompletedProcess]:
    """``scdlkit fit`` run once through a subprocess."""
    out = small_h5ad.parent / "out" / "fitted.h5ad"
    result = run_cli(
        "fit", str(small_h5ad), "--model", "vae", "--use-raw", "--label-key", "bulk_labels",
        "--epochs", "2", "--batch-size", "64", "--latent-dim", "6", "--patience", "1",
        "--val-size", "0.2", "--test-size", "0.1", "-o", str(out),
    )  # fmt: skip
    return out, result


def test_fit_writes_results(fitted, small_h5ad):
    from scdlkit import pipeline

    out, result = fitted
    assert result.returncode == 0, result.stderr
    adata = ad.read_h5ad(out)
    record = adata.uns["scdlkit"]
    assert record["model"] == "vae"
    assert record["task"] == "representation"
    params = record["params"]
    assert (params["epochs"], params["batch_size"], params["seed"]) == (2, 64, 42)
    assert (params["val_size"], params["test_size"]) == (0.2, 0.1)
    assert params["early_stopping_patience"] == 1
    assert params["model_kwargs"] == {"latent_dim": 6}
    assert record["label_key"] == "bulk_labels"
    assert list(record["label_categories"]) == list(adata.obs["bulk_labels"].cat.categories)
    checkpoint = Path(record["checkpoint"])
    assert checkpoint.parent == out.parent / "scdlkit_checkpoints"  # beside the output
    split = adata.obs["scdlkit_split"].value_counts()
    assert (split["train"], split["val"], split["test"]) == (245, 70, 35)  # 0.7 / 0.2 / 0.1 of 350
    np.testing.assert_array_equal(record["history"]["epoch"], [1.0, 2.0])
    # what the file holds is the bundle's prediction on the input cells
    loaded = pipeline.load_run(checkpoint, device="cpu")
    assert loaded.config["trainer"]["early_stopping_patience"] == 1
    outputs = loaded.outputs(loaded.query(ad.read_h5ad(small_h5ad)), needed=["latent"])
    np.testing.assert_allclose(adata.obsm["X_scdlkit"], outputs["latent"], rtol=1e-5, atol=1e-6)
    assert adata.obsm["X_scdlkit"].shape == (350, 6)
    reconstruction = adata.layers["scdlkit_reconstruction"]
    assert reconstruction.shape == adata.shape and np.isfinite(reconstruction).all()
    assert result.stdout.splitlines() == [
        f"trained vae (representation) for 2 epochs; best loss {float(record['best_loss']):.4g} "
        f"at epoch {record['best_epoch']}",
        f"checkpoint: {checkpoint}",
        f"wrote {out} (obsm['X_scdlkit'], layers['scdlkit_reconstruction'], obs['scdlkit_split'])",
    ]


def test_fit_defaults_are_the_shared_ones():
    import inspect

    from scdlkit import _defaults
    from scdlkit._defaults import DEFAULT_KEY, DEFAULT_SEED
    from scdlkit.cli import build_parser
    from scdlkit.train.options import TrainerOptions

    args = build_parser().parse_args(["fit", "in.h5ad", "-o", "out.h5ad", "--model", "vae"])
    trainer = TrainerOptions()
    assert (args.epochs, args.early_stopping_patience) == (trainer.epochs, 20)
    assert trainer.early_stopping_patience == _defaults.DEFAULT_PATIENCE
    assert (args.batch_size, args.lr) == (trainer.batch_size, trainer.lr)
    assert args.seed == DEFAULT_SEED == trainer.seed == _defaults.DEFAULT_SEED
    assert args.key_added == DEFAULT_KEY == _defaults.DEFAULT_KEY
    fit_defaults = inspect.signature(scdlkit.tl.fit).parameters
    for name in ("epochs", "batch_size", "lr", "seed", "key_added"):
        assert fit_defaults[name].default == getattr(args, name), name
    # the data options left out fall through to tl.fit's own defaults
    assert (args.n_top_genes, args.val_size, args.test_size) == (None, None, None)
    demo = build_parser().parse_args(["demo"])
    assert (demo.epochs, demo.seed) == (scdlkit.cli.DEMO_EPOCHS, DEFAULT_SEED)


def test_predict_and_info(fitted, capsys):
    out, result = fitted
    assert result.returncode == 0, result.stderr
    predicted = out.parent / "predicted.h5ad"
    code = main(
        ["predict", str(out), "--key-added", "again", "--outputs", "latent", "-o", str(predicted)]
    )
    assert code == 0
    adata = ad.read_h5ad(predicted)
    np.testing.assert_allclose(adata.obsm["X_again"], adata.obsm["X_scdlkit"], rtol=1e-5)
    assert "again_reconstruction" not in adata.layers
    assert list(adata.uns["again"]["outputs"]) == ["latent"]
    capsys.readouterr()

    info = run_cli("info", str(predicted))
    assert info.returncode == 0, info.stderr
    record = adata.uns["scdlkit"]
    header, *runs = info.stdout.strip().split("\n\n")
    assert header == f"{predicted}: AnnData with 350 cells x 765 features"
    blocks = {block.splitlines()[0]: block.splitlines() for block in runs}
    assert blocks["adata.uns['scdlkit']"] == [
        "adata.uns['scdlkit']",
        "  model       vae",
        "  task        representation",
        f"  version     scdlkit {scdlkit.__version__}",
        f"  training    2 epochs; best loss {float(record['best_loss']):.4g} at epoch "
        f"{record['best_epoch']}",
        "  labels      'bulk_labels' (10 classes)",
        f"  checkpoint  {record['checkpoint']} (exists)",
        "  results     obsm['X_scdlkit'], layers['scdlkit_reconstruction'], obs['scdlkit_split']",
    ]
    again = blocks["adata.uns['again']"]
    assert "  training    none recorded (written by predict)" in again
    assert again[-1] == "  results     obsm['X_again']"
    assert len(blocks) == 2


def test_info_reports_missing_checkpoint_and_empty_file(fitted, tmp_path, capsys):
    out, _ = fitted
    adata = ad.read_h5ad(out)
    adata.uns["scdlkit"]["checkpoint"] = str(tmp_path / "gone")
    moved = tmp_path / "moved.h5ad"
    adata.write_h5ad(moved)
    assert main(["info", str(moved)]) == 0
    assert "(MISSING)" in capsys.readouterr().out
    plain = tmp_path / "plain.h5ad"
    ad.AnnData(np.ones((3, 2), dtype=np.float32)).write_h5ad(plain)
    assert main(["info", str(plain)]) == 0
    assert "no scdlkit runs" in capsys.readouterr().out


def test_errors_are_one_line(small_h5ad, tmp_path):
    missing = tmp_path / "missing.h5ad"
    assert_clean_error(run_cli("info", str(missing)), str(missing))
    assert_clean_error(run_cli("fit", str(missing), "--model", "vae", "-o", "x.h5ad"), "missing")


def test_errors_in_process(small_h5ad, tmp_path, capsys):
    never = str(tmp_path / "never.h5ad")
    cases = [
        (["predict", str(small_h5ad), "-o", str(tmp_path / "p.h5ad")], "tl.fit"),
        (["fit", str(small_h5ad), "--model", "nope", "-o", str(tmp_path / "f.h5ad")], "nope"),
        (["fit", str(small_h5ad), "--model", "vae", "-o", str(tmp_path / "f.h5mu")], ".h5mu"),
        (["fit", str(small_h5ad), "--model", "vae", "--layer", "x", "-o", "f.h5ad"], "'x'"),
        (["info", str(tmp_path)], "directory"),
        (["fit", str(small_h5ad), "--model", "vae", "--patience", "-1", "-o", never], "patience"),
        (
            ["fit", str(small_h5ad), "--model", "vae", "--label-key", "celltype", "-o", never],
            "'celltype' in adata.obs (columns: 'bulk_labels'",
        ),
    ]
    for argv, fragment in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and fragment in err, (argv, err)
        assert err.count("\n") == 1
    assert not Path(never).exists()


def test_usage_and_version():
    result = run_cli("fit", "in.h5ad", "--model", "vae")  # no -o
    assert result.returncode == 2
    assert "-o" in result.stderr
    assert run_cli().returncode == 2
    version = run_cli("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"scdlkit {scdlkit.__version__}"


def _quick_neighbors(adata, *, use_rep=None, **kwargs):
    """Stand-in for sc.pp.neighbors (numba compilation takes longer than the demo itself)."""
    adata.uns["neighbors"] = {"params": {"use_rep": use_rep}}


def _quick_umap(adata, **kwargs):
    """Stand-in for sc.tl.umap: the first two latent dimensions."""
    assert adata.uns["neighbors"]["params"]["use_rep"] == "X_scdlkit"
    adata.obsm["X_umap"] = np.asarray(adata.obsm["X_scdlkit"][:, :2])


@pytest.mark.parametrize(
    "real_umap", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["quick", "umap"]
)
def test_demo(tmp_path, capsys, monkeypatch, real_umap):
    import scanpy as sc

    if not real_umap:
        monkeypatch.setattr(sc.pp, "neighbors", _quick_neighbors)
        monkeypatch.setattr(sc.tl, "umap", _quick_umap)
    out_dir = tmp_path / "demo"
    assert main(["demo", "--epochs", "2", "--out-dir", str(out_dir)]) == 0
    stdout = capsys.readouterr().out
    for name in ("pbmc68k_scdlkit.h5ad", "umap_bulk_labels.png", "loss_history.png"):
        assert (out_dir / name).is_file(), name
        assert str(out_dir / name) in stdout
    assert "2 epochs" in stdout
    adata = ad.read_h5ad(out_dir / "pbmc68k_scdlkit.h5ad")
    assert "X_umap" in adata.obsm and "X_scdlkit" in adata.obsm
    assert adata.uns["neighbors"]["params"]["use_rep"] == "X_scdlkit"
    assert adata.uns["scdlkit"]["params"]["seed"] == 42
    # the accuracy printed is scdlkit.evaluation.knn_accuracy: test cells against training cells
    split = adata.obs["scdlkit_split"].to_numpy()
    latent, labels = adata.obsm["X_scdlkit"], adata.obs["bulk_labels"].astype(str).to_numpy()
    train, test = split == "train", split == "test"
    expected = scdlkit.evaluation.knn_accuracy(
        latent[test], labels[test], reference_latent=latent[train], reference_labels=labels[train]
    )
    assert f"held-out test cells with accuracy {expected:.2f}." in stdout


def test_h5mu_fit_and_info(small_mudata, tmp_path, capsys):
    source = tmp_path / "small.h5mu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mudata's pull_on_update notice
        small_mudata.write(source)
    out = tmp_path / "small_out.h5mu"
    argv = ["fit", str(source), "--model", "autoencoder", "--mod", "rna", "--normalize"]
    argv += ["--log1p", "--epochs", "1", "--batch-size", "16", "-o", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = mudata.read_h5mu(out)
    rna = mdata.mod["rna"]
    assert rna.obsm["X_scdlkit"].shape[0] == rna.n_obs
    assert "scdlkit_reconstruction" in rna.layers
    assert "rna:scdlkit_split" in mdata.obs.columns
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "MuData" in stdout and "mdata.mod['rna'].uns['scdlkit']" in stdout
    assert "layers['scdlkit_reconstruction']" in stdout
