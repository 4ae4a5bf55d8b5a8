"""Surviving a kill: periodic training states, resume, preemption and integrity.

A resumed run must equal an uninterrupted one bit for bit on CPU (history
without the timing column, final weights), whether it was killed with SIGKILL,
stopped by SIGTERM, or lost a rank under ``torchrun --max-restarts``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

import scdlkit
from scdlkit import Trainer, create_model, prepare_data
from scdlkit.cli import main as cli_main
from scdlkit.pipeline.fit import resume_point
from scdlkit.train import Callback
from scdlkit.train.bundle import DamagedCheckpointError, read_training_state, read_weights
from scdlkit.train.preemption import StopSignals, TrainingInterrupted
from scdlkit.train.state import find_state, list_states

sys.path.insert(0, str(Path(__file__).parent))
from resume_fit_script import FIT_OPTIONS, run  # noqa: E402

SCRIPT = Path(__file__).parent / "resume_fit_script.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "agg"}


def assert_same_history(a, b):
    """Equal histories, bit for bit, except the wall-clock column."""
    a, b = dict(a), dict(b)
    assert sorted(a) == sorted(b)
    for key in a:
        if key != "seconds":
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class SignalAt(Callback):
    """Send a signal to this process at the end of an epoch (as a scheduler would)."""

    def __init__(self, epoch: int, number: int = signal.SIGTERM) -> None:
        self.epoch, self.number = epoch, number

    def on_epoch_end(self, trainer, logs):
        if logs["epoch"] == self.epoch:
            os.kill(os.getpid(), self.number)


# --------------------------------------------------------------------------- kill -9, tl.fit


@pytest.mark.parametrize("backed", [False, True], ids=["in_memory", "backed"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, backed):
    killed = tmp_path / "killed"
    killed.mkdir()
    command = [sys.executable, str(SCRIPT), str(killed), "--kill-rank", "0", "--kill-at", "4"]
    done = subprocess.run(
        command + (["--backed"] if backed else []),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    (folder,) = (killed / "checkpoints").iterdir()
    # states after epochs 2 and 3 (the newest two); epoch 4 died before its save point
    assert [p.name for p in list_states(folder / "state")] == [
        "state-000003-00000000",
        "state-000002-00000000",
    ]

    resumed = run(killed, backed=backed)  # the job started again: same script, resume=True
    reference = tmp_path / "reference"
    reference.mkdir()
    uninterrupted = run(reference, backed=backed)

    assert resumed["checkpoint"] == str(folder.resolve())  # the same run folder, completed
    assert not (folder / "state").exists()  # the final bundle replaced the states
    assert resumed["epochs_run"] == uninterrupted["epochs_run"] == FIT_OPTIONS["epochs"]
    assert_same_history(resumed["history"], uninterrupted["history"])
    assert_same_weights(read_weights(folder), read_weights(uninterrupted["checkpoint"]))
    last = read_training_state(folder)["last_weights"]
    assert_same_weights(last, read_training_state(uninterrupted["checkpoint"])["last_weights"])


# --------------------------------------------------------------------------- SIGTERM, CLI


def test_sigterm_writes_a_state_and_exits_with_the_resume_hint(tmp_path):
    data = tmp_path / "cells.h5ad"
    scdlkit.datasets.synthetic_counts(1500, 200, n_types=4, seed=3).write_h5ad(data)
    arguments = [
        "fit", str(data), "--model", "vae", "--normalize", "--log1p", "--label-key", "cell_type",
        "--epochs", "20", "--patience", "100", "--batch-size", "64", "--latent-dim", "8",
        "--save-every", "3",
    ]  # fmt: skip
    out = tmp_path / "stopped" / "out.h5ad"
    child = subprocess.Popen(
        [sys.executable, "-m", "scdlkit.cli", *arguments, "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    checkpoints = out.parent / "scdlkit_checkpoints"
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("*/state/state-000003-*")) and time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()
        time.sleep(0.01)
    child.send_signal(signal.SIGTERM)
    stdout, stderr = child.communicate(timeout=120)

    assert child.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "Training stopped by SIGTERM" in stderr
    assert "Resume with the same command and --resume." in stderr
    assert not out.exists()  # nothing written but the state
    (folder,) = checkpoints.iterdir()
    newest = list_states(folder / "state")[0]
    assert str(newest) in stderr and newest.name > "state-000003-00000000"

    assert cli_main([*arguments, "-o", str(out), "--resume"]) == 0
    reference = tmp_path / "reference" / "out.h5ad"
    assert cli_main([*arguments, "-o", str(reference)]) == 0
    resumed, uninterrupted = ad.read_h5ad(out), ad.read_h5ad(reference)
    assert resumed.uns["scdlkit"]["checkpoint"] == str(folder.resolve())
    assert_same_history(resumed.uns["scdlkit"]["history"], uninterrupted.uns["scdlkit"]["history"])
    np.testing.assert_array_equal(resumed.obsm["X_scdlkit"], uninterrupted.obsm["X_scdlkit"])


# --------------------------------------------------------------------------- Trainer level


@pytest.fixture(scope="module")
def prepared():
    adata = scdlkit.datasets.synthetic_counts(600, 80, n_types=3, seed=0)
    return prepare_data(adata, normalize=True, log1p=True, label_key="cell_type")


def make_trainer(prepared, epochs=6, **kwargs):
    model = create_model("vae", input_dim=prepared.input_dim, latent_dim=8, seed=3, dropout=0.1)
    return Trainer(
        model, "representation", epochs=epochs, batch_size=64, device="cpu",
        early_stopping_patience=None, progress=False, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(prepared):
    return make_trainer(prepared).fit(prepared.train, prepared.val)


def test_sigterm_mid_epoch_finishes_the_step_and_resumes_exactly(prepared, uninterrupted, tmp_path):
    trainer = make_trainer(prepared, save_every=2, state_dir=tmp_path)
    steps = {"n": 0}

    def terminate_at_step_20(module, args):
        steps["n"] += module.training
        if steps["n"] == 20:
            os.kill(os.getpid(), signal.SIGTERM)

    trainer.model.register_forward_pre_hook(terminate_at_step_20)
    with pytest.raises(TrainingInterrupted, match="resume_from=") as stopped:
        trainer.fit(prepared.train, prepared.val, prepared=prepared)
    # 7 steps per epoch: step 20 is the 6th of epoch 3, trained to its end before stopping
    assert stopped.value.state == tmp_path / "state-000002-00000006"
    assert stopped.value.exit_code == 143
    assert "after step 6 of epoch 3" in str(stopped.value)
    assert trainer.interrupted and len(trainer.history) == 2

    resumed = make_trainer(prepared, save_every=2, state_dir=tmp_path)
    resumed.fit(prepared.train, prepared.val, resume_from=tmp_path, prepared=prepared)
    assert resumed.resumed_from == stopped.value.state
    assert_same_history(resumed.history_frame, uninterrupted.history_frame)
    assert_same_weights(resumed.model.state_dict(), uninterrupted.model.state_dict())
    assert_same_weights(resumed._last_state, uninterrupted._last_state)


def test_time_based_states_resume_exactly(prepared, uninterrupted, tmp_path):
    trainer = make_trainer(prepared, save_every_minutes=1e-9, state_dir=tmp_path)
    trainer.fit(prepared.train, prepared.val)  # a state after every step
    newest = list_states(tmp_path)
    assert [p.name for p in newest] == ["state-000005-00000007", "state-000005-00000006"]
    resumed = make_trainer(prepared).fit(prepared.train, prepared.val, resume_from=newest[1])
    assert_same_history(resumed.history_frame, uninterrupted.history_frame)
    assert_same_weights(resumed.model.state_dict(), uninterrupted.model.state_dict())


def test_a_damaged_state_is_refused_and_the_previous_one_used(prepared, uninterrupted, tmp_path):
    make_trainer(prepared, epochs=4, save_every=1, state_dir=tmp_path).fit(
        prepared.train, prepared.val, prepared=prepared
    )
    newest, previous = list_states(tmp_path)
    assert (newest.name, previous.name) == ("state-000003-00000000", "state-000002-00000000")
    file = newest / "training_state.pt"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # cut off mid-write
    with pytest.raises(DamagedCheckpointError, match=r"bytes instead of \d+ \(cut off\?\)"):
        read_training_state(newest)
    with pytest.warns(UserWarning, match="Skipped a damaged training state"):
        assert find_state(tmp_path) == previous

    resumed = make_trainer(prepared)
    with pytest.warns(UserWarning, match="resuming from the previous one"):
        resumed.fit(prepared.train, prepared.val, resume_from=tmp_path, prepared=prepared)
    assert resumed.resumed_from == previous
    assert_same_history(resumed.history_frame, uninterrupted.history_frame)
    assert_same_weights(resumed.model.state_dict(), uninterrupted.model.state_dict())

    weights = previous / "model.pt"
    damaged = bytearray(weights.read_bytes())
    damaged[-100] ^= 0xFF  # same size, one byte changed
    weights.write_bytes(bytes(damaged))
    with pytest.raises(DamagedCheckpointError, match="Every training state .* SHA-256"):
        find_state(tmp_path)


def test_resume_refuses_other_settings_data_or_model(prepared, tmp_path):
    make_trainer(prepared, epochs=3, save_every=1, state_dir=tmp_path).fit(
        prepared.train, prepared.val, prepared=prepared
    )
    with pytest.raises(ValueError, match=r"setting lr: 0.001 saved, 0.003 now"):
        make_trainer(prepared, lr=3e-3).fit(prepared.train, prepared.val, resume_from=tmp_path)
    with pytest.raises(
        ValueError,
        match=r"training data train cells: 420 saved, 90 now; training data train: other cells",
    ):
        make_trainer(prepared).fit(prepared.test, prepared.val, resume_from=tmp_path)
    wider = create_model("vae", input_dim=prepared.input_dim, latent_dim=4, seed=3)
    with pytest.raises(ValueError, match=r"model kwargs latent_dim: 8 saved, 4 now"):
        Trainer(wider, "representation", device="cpu").fit(
            prepared.train, prepared.val, resume_from=tmp_path
        )
    # a larger epochs trains further
    longer = make_trainer(prepared, epochs=5).fit(
        prepared.train, prepared.val, resume_from=tmp_path
    )
    assert longer.history_frame["epoch"].tolist() == [1, 2, 3, 4, 5]


def test_state_options_are_checked(prepared, tmp_path):
    with pytest.raises(ValueError, match="need state_dir="):
        make_trainer(prepared, save_every=2)
    with pytest.raises(ValueError, match="save_every must be an integer > 0"):
        make_trainer(prepared, save_every=0, state_dir=tmp_path)
    with pytest.raises(ValueError, match="save_every_minutes must be a number > 0"):
        make_trainer(prepared, save_every_minutes=-1, state_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no training state"):
        make_trainer(prepared).fit(prepared.train, resume_from=tmp_path)


def test_second_ctrl_c_stops_at_once():
    with StopSignals(enabled=True) as signals:
        signal.raise_signal(signal.SIGINT)
        assert signals.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --------------------------------------------------------------------------- tl.fit


def test_tl_fit_resume_continues_the_stopped_run_and_refuses_changes(synthetic, tmp_path):
    options = {
        "normalize": True, "log1p": True, "epochs": 5, "batch_size": 64, "seed": 1,
        "device": "cpu", "progress": False, "checkpoint_dir": tmp_path,
        "model_kwargs": {"latent_dim": 6, "hidden_dims": (32,)}, "early_stopping_patience": None,
    }  # fmt: skip
    with pytest.raises(TrainingInterrupted, match=r"same tl.fit call and resume=True") as stopped:
        scdlkit.tl.fit(synthetic, "vae", save_every=1, callbacks=[SignalAt(2)], **options)
    assert "scdlkit" not in synthetic.uns  # nothing recorded
    (folder,) = tmp_path.iterdir()
    assert stopped.value.state == folder / "state" / "state-000002-00000000"
    assert str(folder) in str(stopped.value)

    changed = [
        ({"lr": 1e-2}, "setting lr: 0.001 saved, 0.01 now"),
        ({"model_kwargs": {"latent_dim": 4, "hidden_dims": (32,)}}, "model kwargs latent_dim"),
        ({"log1p": False}, "data spec log1p: True saved, False now"),
    ]
    for change, message in changed:
        with pytest.raises(ValueError, match=message):
            scdlkit.tl.fit(synthetic, "vae", resume=True, **{**options, **change})
    with pytest.raises(ValueError, match="feature names: 120 saved, 100 now"):
        scdlkit.tl.fit(synthetic[:, :100].copy(), "vae", resume=True, **options)

    state = stopped.value.state
    for where in (folder, folder / "state", state):  # run folder, state folder, one state
        assert resume_point(tmp_path, "scdlkit", where) == (folder, state)
    assert resume_point(tmp_path, "scdlkit", True) == (folder, state)
    assert resume_point(tmp_path, "other_key", True)[1] is None

    scdlkit.tl.fit(synthetic, "vae", resume=True, **options)
    record = synthetic.uns["scdlkit"]
    assert resume_point(tmp_path, "scdlkit", folder) == (folder, folder)  # a finished bundle
    assert record["checkpoint"] == str(folder.resolve()) and record["epochs_run"] == 5
    again = synthetic.copy()
    scdlkit.tl.fit(again, "vae", **{**options, "checkpoint_dir": tmp_path / "reference"})
    assert_same_history(record["history"], again.uns["scdlkit"]["history"])
    assert_same_weights(read_weights(folder), read_weights(again.uns["scdlkit"]["checkpoint"]))

    # the newest run is finished: resume=True starts a new one
    scdlkit.tl.fit(synthetic, "vae", resume=True, **{**options, "epochs": 1})
    assert len(list(tmp_path.glob("scdlkit_*"))) == 2


def test_tl_fit_refuses_state_dir(synthetic, tmp_path):
    with pytest.raises(TypeError, match="checkpoint_dir= instead of state_dir="):
        scdlkit.tl.fit(synthetic, "vae", epochs=1, state_dir=tmp_path)


def test_damaged_bundle_is_refused(synthetic, tmp_path):
    scdlkit.tl.fit(synthetic, "vae", epochs=1, device="cpu", checkpoint_dir=tmp_path)
    bundle = Path(synthetic.uns["scdlkit"]["checkpoint"])
    manifest = json.loads((bundle / "manifest.json").read_text())["files"]
    assert sorted(manifest) == ["config.json", "model.pt", "training_state.pt"]
    weights = bundle / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(DamagedCheckpointError, match="model.pt' is damaged"):
        scdlkit.tl.predict(synthetic)


# --------------------------------------------------------------------------- TaskRunner


def test_task_runner_saves_states_and_resumes(synthetic, tmp_path):
    settings = {
        "normalize": True, "log1p": True, "epochs": 4, "batch_size": 64, "device": "cpu",
        "early_stopping_patience": None, "latent_dim": 6, "seed": 2,
    }  # fmt: skip
    with pytest.raises(ValueError, match="need output_dir="):
        scdlkit.TaskRunner("vae", trainer_kwargs={"save_every": 1}, **settings).fit(synthetic)
    runner = scdlkit.TaskRunner(
        "vae",
        output_dir=tmp_path / "runner",
        trainer_kwargs={"save_every": 1, "callbacks": [SignalAt(2)]},
        **settings,
    )
    with pytest.raises(TrainingInterrupted, match=r"runner.fit\(adata, resume=True\)"):
        runner.fit(synthetic)
    resumed = scdlkit.TaskRunner(
        "vae", output_dir=tmp_path / "runner", trainer_kwargs={"save_every": 1}, **settings
    ).fit(synthetic, resume=True)
    reference = scdlkit.TaskRunner("vae", **settings).fit(synthetic)
    assert_same_history(resumed.trainer_.history_frame, reference.trainer_.history_frame)
    np.testing.assert_array_equal(resumed.encode(synthetic), reference.encode(synthetic))


# --------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_torchrun_restart_after_a_rank_dies_resumes_exactly(tmp_path):
    def launch(out: Path, *extra: str) -> subprocess.CompletedProcess:
        out.mkdir()
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            *extra, str(SCRIPT), str(out),
        ]  # fmt: skip
        if extra:
            command += ["--kill-rank", "1", "--kill-at", "3"]
        return subprocess.run(
            command, capture_output=True, text=True, env=ENV, timeout=600, check=False
        )

    restarted = launch(tmp_path / "restarted", "--max-restarts=1")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "exitcode: -9" in restarted.stderr  # rank 1 died; torchrun restarted both
    reference = launch(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    a = json.loads((tmp_path / "restarted" / "result.json").read_text())
    b = json.loads((tmp_path / "reference" / "result.json").read_text())
    assert a["epochs_run"] == b["epochs_run"] == FIT_OPTIONS["epochs"]
    assert_same_history(a["history"], b["history"])
    assert_same_weights(read_weights(a["checkpoint"]), read_weights(b["checkpoint"]))
