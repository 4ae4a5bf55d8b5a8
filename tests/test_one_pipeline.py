"""One path under every front: ``tl.fit``, ``TaskRunner`` and ``scdlkit fit`` train the same model.

With the same data, model, options and seed the three fronts must write
bundles that predict identical latents, and they must share one default for
epochs and early-stopping patience.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import scdlkit
from scdlkit import cli, pipeline
from scdlkit.train.options import DEFAULT_EPOCHS, DEFAULT_PATIENCE, TrainerOptions

#: The run every front is asked for: a small VAE on pbmc68k_reduced's log-normalised .raw.
SEED = 3
EPOCHS = 3
BATCH_SIZE = 128
LATENT_DIM = 8
PATIENCE = 20


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _fit_with_tl(adata, directory: Path) -> Path:
    scdlkit.tl.fit(
        adata, "vae", use_raw=True, model_kwargs={"latent_dim": LATENT_DIM}, epochs=EPOCHS,
        batch_size=BATCH_SIZE, early_stopping_patience=PATIENCE, device="cpu", seed=SEED,
        checkpoint_dir=directory,
    )  # fmt: skip
    return Path(adata.uns["scdlkit"]["checkpoint"])


def _fit_with_runner(adata, directory: Path) -> Path:
    runner = scdlkit.TaskRunner(
        "vae", use_raw=True, latent_dim=LATENT_DIM, epochs=EPOCHS, batch_size=BATCH_SIZE,
        early_stopping_patience=PATIENCE, device="cpu", seed=SEED, output_dir=directory,
    )  # fmt: skip
    runner.fit(adata)
    return Path(runner.checkpoint_)


def _fit_with_cli(adata, directory: Path) -> tuple[Path, ad.AnnData]:
    directory.mkdir(parents=True)
    source, written = directory / "in.h5ad", directory / "out.h5ad"
    adata.write_h5ad(source)
    code = cli.main(
        [
            "fit", str(source), "-o", str(written), "--model", "vae", "--use-raw",
            "--latent-dim", str(LATENT_DIM), "--epochs", str(EPOCHS),
            "--batch-size", str(BATCH_SIZE), "--patience", str(PATIENCE), "--seed", str(SEED),
            "--device", "cpu",
            "--checkpoint-dir", str(directory / "checkpoints"),
        ]
    )  # fmt: skip
    assert code == cli.EXIT_OK
    result = ad.read_h5ad(written)
    return Path(result.uns["scdlkit"]["checkpoint"]), result


def _latent(bundle: Path, adata) -> np.ndarray:
    run = pipeline.load_run(bundle, device="cpu")
    return run.outputs(run.query(adata), needed=["latent"])["latent"]


def _config(bundle: Path) -> dict:
    return json.loads((bundle / "config.json").read_text())


def test_tl_fit_taskrunner_and_cli_write_bundles_with_identical_latents(tmp_path):
    cells = scdlkit.datasets.pbmc68k_reduced()
    by_tl = _fit_with_tl(cells.copy(), tmp_path / "tl")
    by_runner = _fit_with_runner(cells.copy(), tmp_path / "runner")
    by_cli, cli_result = _fit_with_cli(cells.copy(), tmp_path / "cli")
    assert len({by_tl, by_runner, by_cli}) == 3

    configs = {
        name: _config(path)
        for name, path in [("tl", by_tl), ("runner", by_runner), ("cli", by_cli)]
    }
    # everything but the front's own metadata and the timings is the same
    for name, config in configs.items():
        assert set(config) == set(configs["tl"]), f"{name}: other bundle fields than tl.fit's"
        for part, value in config.items():
            reference = configs["tl"][part]
            if part == "metadata":
                continue
            if part == "history":
                value = {k: v for k, v in value.items() if k != "seconds"}
                reference = {k: v for k, v in reference.items() if k != "seconds"}
            assert value == reference, f"{name}: {part} differs from tl.fit's"
    assert configs["tl"]["trainer"]["seed"] == SEED
    assert configs["tl"]["trainer"]["early_stopping_patience"] == PATIENCE
    assert configs["tl"]["model"]["kwargs"]["latent_dim"] == LATENT_DIM

    latents = {
        name: _latent(path, cells)
        for name, path in [("tl", by_tl), ("runner", by_runner), ("cli", by_cli)]
    }
    assert latents["tl"].shape == (cells.n_obs, LATENT_DIM)
    assert np.isfinite(latents["tl"]).all() and latents["tl"].std() > 0
    np.testing.assert_array_equal(latents["runner"], latents["tl"])
    np.testing.assert_array_equal(latents["cli"], latents["tl"])
    # what the command wrote into its output file is the same latent
    np.testing.assert_array_equal(cli_result.obsm["X_scdlkit"], latents["tl"])


def test_every_front_defaults_to_the_same_epochs_and_patience():
    defaults = TrainerOptions()
    assert (defaults.epochs, defaults.early_stopping_patience) == (DEFAULT_EPOCHS, DEFAULT_PATIENCE)
    assert (DEFAULT_EPOCHS, DEFAULT_PATIENCE) == (200, 20)

    def signature_defaults(function) -> dict:
        return {
            name: parameter.default
            for name, parameter in inspect.signature(function).parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }

    fronts = {
        "scdlkit.tl.fit": signature_defaults(scdlkit.tl.fit),
        "scdlkit.TaskRunner": signature_defaults(scdlkit.TaskRunner),
        "scdlkit.Trainer": signature_defaults(scdlkit.Trainer),
    }
    args = cli.build_parser().parse_args(["fit", "in.h5ad", "-o", "out.h5ad", "--model", "vae"])
    fronts["scdlkit fit"] = vars(args)
    for front, values in fronts.items():
        assert values["epochs"] == DEFAULT_EPOCHS, f"{front}: epochs default {values['epochs']}"
        # a front without its own patience option falls through to the Trainer's default
        patience = values.get("early_stopping_patience", values.get("patience", DEFAULT_PATIENCE))
        assert patience == DEFAULT_PATIENCE, f"{front}: patience default {patience}"
    assert (
        "early_stopping_patience" not in fronts["scdlkit.tl.fit"]
    )  # passes through to TrainerOptions


def test_tl_fit_without_training_options_records_the_shared_defaults(synthetic, tmp_path):
    # epochs=1 keeps it fast; everything else is left to the defaults of the one path
    scdlkit.tl.fit(synthetic, "autoencoder", normalize=True, log1p=True, epochs=1, device="cpu")
    settings = _config(Path(synthetic.uns["scdlkit"]["checkpoint"]))["trainer"]
    expected = TrainerOptions(epochs=1).to_dict()
    assert settings == expected
    assert settings["early_stopping_patience"] == DEFAULT_PATIENCE
    assert settings["batch_size"] == TrainerOptions().batch_size
