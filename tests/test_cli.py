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
        "--epochs", "2", "--batch-size", "64", "--latent-dim", "6", "-o", str(out),
    )  # fmt: skip
    return out, result


def test_fit_writes_results(fitted):
    out, result = fitted
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    adata = ad.read_h5ad(out)
    record = adata.uns["scdlkit"]
    assert record["model"] == "vae"
    assert record["params"]["epochs"] == 2
    assert record["label_key"] == "bulk_labels"
    checkpoint = Path(record["checkpoint"])
    assert checkpoint.is_dir()
    assert checkpoint.parent == out.parent / "scdlkit_checkpoints"  # beside the output
    assert adata.obsm["X_scdlkit"].shape == (adata.n_obs, 6)
    assert adata.layers["scdlkit_reconstruction"].shape == adata.shape
    assert set(adata.obs["scdlkit_split"].cat.categories) == {"train", "val", "test"}
    assert len(record["history"]["epoch"]) == 2


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
    assert "adata.uns['scdlkit']" in info.stdout and "adata.uns['again']" in info.stdout
    assert "vae" in info.stdout and "representation" in info.stdout
    assert "2 epochs" in info.stdout
    assert "(exists)" in info.stdout
    assert (
        "obsm['X_scdlkit'], layers['scdlkit_reconstruction'], obs['scdlkit_split']" in info.stdout
    )


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
