"""Bundles written before the one-pipeline refactor still load and predict the same values.

``tests/data/bundle_v0_1_0/`` was written by scdlkit 0.1.0: ``cells.h5ad``
(120 cells x 40 genes, counts) holds the outputs that version wrote, and
``vae/`` and ``clf/`` are its checkpoint bundles (no ``data_spec`` in
``config.json``). The fixture is read, never modified: the tests work on copies.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scdlkit
from scdlkit import pipeline
from scdlkit.models import VAE, MLPClassifier

FIXTURE = Path(__file__).parent / "data" / "bundle_v0_1_0"
#: What 0.1.0 wrote into cells.h5ad, per bundle: slot -> (stored key, key written with key_added="new").
STORED = {
    "vae": {
        "obsm": [("X_vae", "X_new")],
        "layers": [("vae_reconstruction", "new_reconstruction")],
    },
    "clf": {
        "obsm": [
            ("X_clf", "X_new"),
            ("clf_logits", "new_logits"),
            ("clf_probabilities", "new_probabilities"),
        ],
        "obs": [("clf_confidence", "new_confidence")],
    },
}
OUTPUT_KEYS = {
    "obsm": ("X_vae", "X_clf", "clf_logits", "clf_probabilities"),
    "layers": ("vae_reconstruction",),
    "obs": ("clf_prediction", "clf_confidence"),
}


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def fixture_digest():
    before = _digest(FIXTURE)
    yield before
    assert _digest(FIXTURE) == before, "a test modified the committed fixture"


@pytest.fixture
def bundles(tmp_path, fixture_digest) -> Path:
    """A copy of the fixture folder."""
    copy = tmp_path / "bundle_v0_1_0"
    shutil.copytree(FIXTURE, copy)
    return copy


@pytest.fixture(scope="module")
def stored() -> ad.AnnData:
    return ad.read_h5ad(FIXTURE / "cells.h5ad")


def _without_outputs(stored: ad.AnnData) -> ad.AnnData:
    cells = stored.copy()
    for slot, keys in OUTPUT_KEYS.items():
        for key in keys:
            del getattr(cells, slot)[key]
    cells.uns.clear()
    return cells


def test_fixture_has_no_data_spec_and_the_expected_outputs(stored):
    for name in ("vae", "clf"):
        config = (FIXTURE / name / "config.json").read_text()
        assert '"data_spec"' not in config
        assert '"scdlkit_version": "0.1.0"' in config
    assert stored.shape == (120, 40)
    for slot, keys in OUTPUT_KEYS.items():
        present = getattr(stored, slot)
        assert set(keys) <= set(present.columns if slot == "obs" else present.keys())


@pytest.mark.parametrize("name", ["vae", "clf"])
def test_tl_predict_with_an_old_bundle_reproduces_its_outputs(name, bundles, stored):
    cells = _without_outputs(stored)
    scdlkit.tl.predict(cells, checkpoint=bundles / name, key_added="new", device="cpu")
    for slot, pairs in STORED[name].items():
        for old, new in pairs:
            expected = getattr(stored, slot)[old]
            got = getattr(cells, slot)[new]
            np.testing.assert_allclose(
                np.asarray(got),
                np.asarray(expected),
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"{slot}[{new}]",
            )
    if name == "clf":
        prediction = cells.obs["new_prediction"]
        assert isinstance(prediction.dtype, pd.CategoricalDtype)
        assert list(prediction.cat.categories) == ["type_0", "type_1", "type_2"]
        pd.testing.assert_series_equal(
            prediction.astype(str), stored.obs["clf_prediction"].astype(str), check_names=False
        )
    record = cells.uns["new"]
    assert Path(record["checkpoint"]) == (bundles / name).resolve()


def test_trainer_loads_an_old_bundle(bundles, stored):
    trainer = scdlkit.Trainer.load_checkpoint(bundles / "vae", device="cpu")
    assert isinstance(trainer.model, VAE)
    assert trainer.model.config["kwargs"]["latent_dim"] == 4
    assert trainer.best_epoch == 3 and trainer.epochs_run == 3
    assert trainer.history_frame["epoch"].tolist() == [1, 2, 3]
    assert trainer.best_loss == pytest.approx(548.0749782986111)
    settings = trainer.settings()
    assert (settings["epochs"], settings["batch_size"], settings["seed"]) == (3, 32, 0)

    classifier = scdlkit.Trainer.load_checkpoint(bundles / "clf", device="cpu")
    assert isinstance(classifier.model, MLPClassifier)
    data = scdlkit.transform_adata(
        _without_outputs(stored), classifier.checkpoint_config["preprocessing"]
    )
    logits = classifier.predict_dataset(data)["logits"]
    np.testing.assert_allclose(logits, stored.obsm["clf_logits"], rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", ["vae", "clf"])
def test_load_run_recovers_the_reading_part_of_the_spec(name, bundles):
    run = pipeline.load_run(bundles / name, device="cpu")
    spec = run.spec
    assert spec.layer is None and spec.mod is None and spec.use_raw is False
    assert spec.normalize is True and spec.log1p is True
    assert spec.use_hvg is False and spec.scale is False
    assert run.task == ("representation" if name == "vae" else "classification")
    assert run.model == ("vae" if name == "vae" else "mlp_classifier")
    encoder = run.encoder("label")
    assert encoder.key == "cell_type" and list(encoder.categories) == ["type_0", "type_1", "type_2"]
    assert run.encoder("batch") is None
