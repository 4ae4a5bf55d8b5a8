"""The public surface: lazy sub-modules, top-level names, and what scDLKit 0.1.6 users rely on."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import scdlkit
from scdlkit.data.spec import DataSpec
from scdlkit.evaluation._benchmark_result import BenchmarkResult
from scdlkit.models import AutoEncoder, ScdlModel, create_model, register_model
from scdlkit.train.options import DEFAULT_EPOCHS, DEFAULT_PATIENCE, TrainerOptions

#: The names scDLKit 0.1.6 exported at the top level (its ``__all__``).
NAMES_0_1_6 = (
    "AnnotationRunner",
    "BaseModel",
    "BenchmarkResult",
    "PreparedData",
    "TaskRunner",
    "Trainer",
    "adapt_annotation",
    "compare_models",
    "create_model",
    "inspect_annotation_data",
    "prepare_data",
)


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter, so no earlier import has set a sub-module attribute."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300
    )


# -- defect 1: sub-modules reachable as attributes of the package -----------------------------


def test_submodules_are_attributes_after_a_bare_import():
    result = _fresh_python(
        "import scdlkit\n"
        "print(scdlkit.evaluation.__name__, scdlkit.pipeline.__name__)\n"
        "print(scdlkit.evaluation.classification_metrics(['a', 'b'], ['a', 'a'])['accuracy'])\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["scdlkit.evaluation", "scdlkit.pipeline", "0.5"]


def test_evaluation_is_listed_and_usable_as_the_docs_use_it():
    assert {"evaluation", "pipeline"} <= set(dir(scdlkit))
    metrics = scdlkit.evaluation.classification_metrics(["a", "b", "b"], ["a", "b", "a"])
    assert metrics["accuracy"] == pytest.approx(2 / 3)


def test_import_stays_cheap():
    result = _fresh_python(
        "import sys, scdlkit\n"
        "print(scdlkit.__version__)\n"
        "print(sorted(m for m in ('torch', 'scanpy', 'anndata') if m in sys.modules))\n"
    )
    assert result.returncode == 0, result.stderr
    version, heavy = result.stdout.strip().splitlines()
    assert version == scdlkit.__version__
    assert heavy == "[]"


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="module 'scdlkit' has no attribute 'nonsense'"):
        scdlkit.nonsense  # noqa: B018


def test_every_public_name_resolves():
    for name in scdlkit.__all__:
        assert getattr(scdlkit, name) is not None, name


# -- defect 4: the scDLKit 0.1.6 top-level names -------------------------------------------------


def test_scdlkit_0_1_6_top_level_names_exist():
    missing = [name for name in NAMES_0_1_6 if name not in scdlkit.__all__]
    assert missing == []
    from scdlkit import foundation

    assert scdlkit.AnnotationRunner is foundation.AnnotationRunner
    assert scdlkit.adapt_annotation is foundation.adapt_annotation
    assert scdlkit.inspect_annotation_data is foundation.inspect_annotation_data
    assert scdlkit.BaseModel is ScdlModel
    assert scdlkit.BenchmarkResult is BenchmarkResult


def test_new_typed_specs_are_top_level():
    assert scdlkit.DataSpec is DataSpec
    assert scdlkit.TrainerOptions is TrainerOptions
    options = scdlkit.TrainerOptions()
    assert (options.epochs, options.early_stopping_patience) == (DEFAULT_EPOCHS, DEFAULT_PATIENCE)
    assert scdlkit.DataSpec(use_raw=True).to_kwargs()["use_raw"] is True


def test_a_0_1_6_style_basemodel_subclass_registers_and_trains(clean_registry, synthetic):
    @register_model("legacy_linear_ae")
    class LegacyAE(scdlkit.BaseModel):
        """Linear autoencoder written against the scDLKit 0.1.6 name BaseModel."""

        supported_tasks = ("representation",)

        def __init__(self, *, input_dim: int, latent_dim: int = 3):
            super().__init__()
            self.input_dim = input_dim
            self.encoder = nn.Linear(input_dim, latent_dim)
            self.decoder = nn.Linear(latent_dim, input_dim)

        def forward(self, x):
            latent = self.encoder(x)
            return {"latent": latent, "reconstruction": self.decoder(latent)}

    prepared = scdlkit.prepare_data(synthetic, normalize=True, log1p=True, seed=0)
    model = create_model("legacy_linear_ae", input_dim=prepared.input_dim, seed=0)
    assert model.config == {
        "name": "legacy_linear_ae",
        "kwargs": {"input_dim": 120, "latent_dim": 3},
    }
    trainer = scdlkit.Trainer(model, "representation", epochs=3, device="cpu", progress=False)
    trainer.fit(prepared.train, prepared.val)
    assert (
        trainer.history_frame["train_loss"].iloc[-1] < trainer.history_frame["train_loss"].iloc[0]
    )
    latent = trainer.predict_dataset(prepared.test)["latent"]
    assert latent.shape == (prepared.test.n_obs, 3) and np.isfinite(latent).all()


# -- defect 4: model aliases through every front ----------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("ae", "autoencoder"),
        ("dae", "denoising_autoencoder"),
        ("classifier", "mlp_classifier"),
        ("transformer_autoencoder", "transformer_ae"),
    ],
)
def test_alias_builds_the_same_model_as_its_name(alias, name):
    extra = {"num_classes": 3} if name == "mlp_classifier" else {}
    by_alias = create_model(alias, input_dim=24, seed=5, **extra)
    by_name = create_model(name, input_dim=24, seed=5, **extra)
    assert type(by_alias) is type(by_name)
    assert by_alias.config == by_name.config
    assert by_alias.config["name"] == name  # the bundle stores the registry name
    for (key, left), (_, right) in zip(
        by_alias.state_dict().items(), by_name.state_dict().items(), strict=True
    ):
        assert torch.equal(left, right), key


def test_alias_through_tl_fit_records_the_registry_name(synthetic, tmp_path):
    scdlkit.tl.fit(
        synthetic, "ae", normalize=True, log1p=True, epochs=2, device="cpu", seed=0,
        checkpoint_dir=tmp_path, model_kwargs={"latent_dim": 4, "hidden_dims": (16,)},
    )  # fmt: skip
    record = synthetic.uns["scdlkit"]
    assert record["model"] == "autoencoder"
    assert record["params"]["model"] == "ae"
    scdlkit.tl.predict(synthetic, outputs="latent")
    loaded = scdlkit.pipeline.load_run(record["checkpoint"], device="cpu")
    assert isinstance(loaded.trainer.model, AutoEncoder)
    assert synthetic.obsm["X_scdlkit"].shape == (synthetic.n_obs, 4)


def test_alias_through_taskrunner(synthetic):
    runner = scdlkit.TaskRunner(
        "classifier", task="classification", label_key="cell_type", normalize=True, log1p=True,
        epochs=3, batch_size=64, device="cpu", seed=0, model_kwargs={"hidden_dims": (16,)},
    )  # fmt: skip
    assert runner.task == "classification"
    runner.fit(synthetic)
    assert runner.trainer_.model.config["name"] == "mlp_classifier"
    assert runner.classes_ == ["type_0", "type_1", "type_2"]


# -- defect 4: SplitData attributes of 0.1.6 ----------------------------------------------------------


def test_split_data_has_the_0_1_6_attributes(synthetic):
    prepared = scdlkit.prepare_data(
        synthetic, label_key="cell_type", batch_key="batch", normalize=True, log1p=True, seed=0
    )
    split = prepared.train
    np.testing.assert_array_equal(split.X, split.to_numpy())
    assert split.X.shape == (split.n_obs, 120) and split.X.dtype == np.float32
    np.testing.assert_array_equal(split.labels, split.y)
    np.testing.assert_array_equal(split.batches, split.batch)
    decoded = prepared.label_encoder.decode(split.labels)
    expected = synthetic.obs["cell_type"].to_numpy()[split.rows]
    np.testing.assert_array_equal(np.asarray(decoded, dtype=str), np.asarray(expected, dtype=str))
    unlabelled = scdlkit.prepare_data(synthetic, seed=0).train
    assert unlabelled.labels is None and unlabelled.batches is None


# -- BenchmarkResult -------------------------------------------------------------------------------


def test_benchmark_result_from_a_real_comparison(synthetic):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # compare_models uses the new keywords
        frame = scdlkit.compare_models(
            synthetic, ["ae"], label_key="cell_type", normalize=True, log1p=True, epochs=2,
            batch_size=64, device="cpu", seed=0, clustering="kmeans", n_pcs=5,
            model_kwargs={"latent_dim": 4, "hidden_dims": (16,)},
        )  # fmt: skip
    result = scdlkit.BenchmarkResult.from_comparison(frame, output_paths={"csv": "x.csv"})
    wide = result.metrics_frame
    assert wide["model"].tolist() == ["ae", "PCA-5 (baseline)"]
    assert wide["baseline"].tolist() == [False, True]
    for row in wide.itertuples(index=False):
        rows = frame[frame["model"] == row.model]
        assert row.runtime_sec == rows["seconds"].iloc[0]
        assert row.parameters == rows["parameters"].iloc[0]
        for metric, value in zip(rows["metric"], rows["value"], strict=True):
            assert wide.loc[wide["model"] == row.model, metric].item() == value
    assert result.output_paths == {"csv": "x.csv"} and result.runners == {}


def test_benchmark_result_refuses_a_table_of_another_shape():
    with pytest.raises(ValueError, match="lacks the column\\(s\\) 'metric', 'value'"):
        BenchmarkResult.from_comparison(
            pd.DataFrame({"model": ["a"], "baseline": [False], "seconds": [1.0], "parameters": [1]})
        )
    twice = pd.DataFrame(
        {
            "model": ["a", "a"],
            "baseline": [False, False],
            "metric": ["mse", "mse"],
            "value": [1.0, 2.0],
            "seconds": [1.0, 1.0],
            "parameters": [3, 3],
        }
    )
    with pytest.raises(ValueError, match="metric 'mse' of model 'a' more than once"):
        BenchmarkResult.from_comparison(twice)


# -- one randomness keyword ------------------------------------------------------------------------


def test_random_state_still_works_with_a_future_warning(synthetic):
    with pytest.warns(
        FutureWarning, match=r"prepare_data: random_state= is deprecated; pass seed="
    ):
        old = scdlkit.prepare_data(synthetic, label_key="cell_type", random_state=7)
    new = scdlkit.prepare_data(synthetic, label_key="cell_type", seed=7)
    np.testing.assert_array_equal(old.split, new.split)
    np.testing.assert_array_equal(old.train.rows, new.train.rows)
    assert old.seed == new.seed == 7
    assert not np.array_equal(
        new.split, scdlkit.prepare_data(synthetic, label_key="cell_type").split
    )
