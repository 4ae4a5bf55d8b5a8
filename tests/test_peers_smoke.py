"""Smoke tests of ``benchmarks/peers.py`` and ``benchmarks/label_transfer.py`` (tiny sizes).

Needs scvi-tools, scib-metrics and harmonypy in this interpreter or in the one
named by ``SCDLKIT_PEERS_PYTHON``; skipped otherwise, and by default (marked
``benchmark``: run with ``pytest -m benchmark tests/test_peers_smoke.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _peers_module():
    spec = importlib.util.spec_from_file_location("scdlkit_bench_peers", BENCHMARKS / "peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.benchmark
def test_peers_quick_speed_and_parity(tmp_path):
    peers = _peers_module()
    python = peers.peers_python(os.environ.get("SCDLKIT_PEERS_PYTHON"))
    if python is None:
        pytest.skip(
            "scvi-tools, scib-metrics or harmonypy is absent; install them in a separate venv "
            f"and set SCDLKIT_PEERS_PYTHON to its interpreter: {peers.INSTALL}"
        )
    command = [
        sys.executable, str(BENCHMARKS / "peers.py"), "--quick", "--cases", "speed", "parity",
        "--peers-python", python, "--results", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "peers-quick.json").read_text())

    (run,) = payload["speed"]["runs"]
    assert run["n_cells"] == 2000 and run["likelihood"] == "nb"
    for side in ("scvi", "ours", "ours_default"):
        assert run[side]["n_train"] == 1800
        assert run[side]["torch_threads"] == 1
        assert len(run[side]["epoch_cpu_s"]) == 3
        assert all(t > 0 for t in run[side]["epoch_cpu_s"])
    # same network; scvi-tools also builds the unused library encoder and extra heads
    assert run["ours"]["n_parameters"] < run["scvi"]["n_parameters"]
    # the like-for-like run validates only after its last epoch, the default one every epoch
    assert run["ours"]["validated"] == [False, False, True]
    assert run["ours_default"]["validated"] == [True, True, True]

    (parity,) = payload["parity"]["runs"]
    scvi, ours = parity["scvi"]["elbo_train"][-1], parity["ours"]["elbo_train"][-1]
    assert abs(ours - scvi) / scvi < 0.05
    assert "| nb |" in payload["tables"][0]


@pytest.mark.benchmark
def test_label_transfer_quick(tmp_path):
    """``benchmarks/label_transfer.py --quick``: our methods always, the peers when installed."""
    if not (Path(__file__).resolve().parents[2] / "shared" / "data").is_dir():
        pytest.skip("../shared/data (pbmc_3tech) is absent")
    command = [
        sys.executable, str(BENCHMARKS / "label_transfer.py"), "--quick",
        "--results", str(tmp_path), "--seeds", "0",
    ]  # fmt: skip
    python = os.environ.get("SCDLKIT_PEERS_PYTHON")
    if python:
        command += ["--peers-python", python]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "label_transfer-quick.json").read_text())
    methods = payload["results"]["3tech-VDJ"]["methods"]
    for name in ("count_scanvi", "mlp_classifier", "knn_pca"):
        (run,) = methods[name]
        assert run["accuracy"] > 0.8, name
        assert 0.0 <= run["ece"] <= 1.0
    (ours,) = methods["count_scanvi"]
    assert ours["cpu_s"] == pytest.approx(ours["reference_cpu_s"] + ours["query_cpu_s"])
    assert "| 3tech-VDJ |" in payload["tables"][0]
