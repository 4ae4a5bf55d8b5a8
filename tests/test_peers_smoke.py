"""Smoke test of ``benchmarks/peers.py`` (scdlkit's count_vae vs scvi-tools), tiny sizes.

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
