"""Shared fixtures for the scdlkit test suite.

Real counts datasets live in ``shared/data/`` beside the clone (CI always has it);
tests that need them skip with a clear reason when the folder is absent.
"""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "agg")
if "OMP_NUM_THREADS" in os.environ:
    # scanpy's numba kernels (neighbors, normalize_total) raise OpenMP's thread count, which
    # torch shares, to every core. One numba thread count for the whole session, set before
    # numba starts its threads (changing it later raises), and inherited by tutorial kernels.
    os.environ.setdefault("NUMBA_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import copy
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData
from mudata import MuData

import scdlkit
from scdlkit.models import registry as model_registry

# The models in the tests are tiny: one thread avoids oversubscribing a small, shared CI machine.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"

TECH3_FILE = "pbmc_3tech_batches_counts.h5ad"
KANG_FILE = "pbmc_kang2018_ifnb_counts.h5ad"
CITESEQ_FILE = "pbmc_citeseq_10k5k_rna_protein_counts.h5mu"


# --------------------------------------------------------------------------- datasets


@pytest.fixture
def pbmc() -> AnnData:
    """scanpy's pbmc68k_reduced (700 x 765; scaled ``.X`` with negatives, log-normalised ``.raw``)."""
    return scdlkit.datasets.pbmc68k_reduced()


@pytest.fixture
def synthetic() -> AnnData:
    """Small seeded CSR counts: 300 cells x 120 genes, 3 cell types, 2 batches."""
    return scdlkit.datasets.synthetic_counts(300, 120, n_types=3, n_batches=2, seed=0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real counts datasets; skips when the clone has no ``shared/`` beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test datasets not found at {SHARED_DATA} (shared/data beside the clone)")
    return SHARED_DATA


def _shared_file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        pytest.skip(f"real test dataset {name} not found in {folder}")
    return path


@pytest.fixture(scope="session")
def _tech3_session(shared_data: Path) -> AnnData:
    import anndata as ad

    return ad.read_h5ad(_shared_file(shared_data, TECH3_FILE))


@pytest.fixture(scope="session")
def _kang_session(shared_data: Path) -> AnnData:
    import anndata as ad

    return ad.read_h5ad(_shared_file(shared_data, KANG_FILE))


@pytest.fixture(scope="session")
def _citeseq_session(shared_data: Path) -> MuData:
    import mudata as md

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mudata's pull_on_update notice
        return md.read_h5mu(_shared_file(shared_data, CITESEQ_FILE))


@pytest.fixture
def pbmc_3tech(_tech3_session: AnnData) -> AnnData:
    """2000 x 10000 int32 CSR counts; ``obs['cell_type']`` (3) and ``obs['batch']`` (3)."""
    return _tech3_session.copy()


@pytest.fixture
def pbmc_kang(_kang_session: AnnData) -> AnnData:
    """1556 x 1267 int32 CSR counts; ``obs['cell_type']`` (5), ``obs['sample_id']`` (4)."""
    return _kang_session.copy()


@pytest.fixture
def citeseq(_citeseq_session: MuData) -> MuData:
    """400 cells; ``mod['rna']`` (15792 genes) and ``mod['prot']`` (14 ADT); ``obs['batch']``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _citeseq_session.copy()


@pytest.fixture
def small_mudata() -> MuData:
    """A constructed two-modality MuData whose modalities only partly share cells.

    ``rna``: 40 cells x 30 genes, CSR float32 counts, ``obs['cell_type']``.
    ``prot``: 36 of those cells in another order x 5 proteins, dense counts.
    ``mdata.obs['donor']`` exists only at the MuData level.
    """
    rng = np.random.default_rng(7)
    n_cells = 40
    names = [f"cell{i}" for i in range(n_cells)]
    rna = AnnData(
        sp.csr_matrix(rng.poisson(1.0, (n_cells, 30)).astype(np.float32)),
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical(np.repeat(["A", "B"], n_cells // 2))}, index=names
        ),
        var=pd.DataFrame(index=[f"gene{i}" for i in range(30)]),
    )
    kept = rng.permutation(n_cells)[:36]
    prot = AnnData(
        rng.poisson(20.0, (36, 5)).astype(np.float32),
        obs=pd.DataFrame({"qc": rng.random(36)}, index=[names[i] for i in kept]),
        var=pd.DataFrame(index=[f"prot{i}" for i in range(5)]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = MuData({"rna": rna, "prot": prot})
    mdata.obs["donor"] = pd.Categorical(np.where(np.arange(mdata.n_obs) % 2 == 0, "d1", "d2"))
    return mdata


# --------------------------------------------------------------------------- helpers


def _collect(loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    batches = list(loader)
    assert batches, "the loader yielded no batch"
    return {key: torch.cat([b[key] for b in batches]).numpy() for key in batches[0]}


@pytest.fixture
def collect() -> Callable[[Iterable[dict[str, torch.Tensor]]], dict[str, np.ndarray]]:
    """``collect(loader)``: concatenate every batch of one epoch into numpy arrays per key."""
    return _collect


def _copy_matrix(matrix):
    if matrix is None:
        return None
    return matrix.copy()


def _snapshot_adata(adata: AnnData) -> dict:
    return {
        "X_id": id(adata.X),
        "X": _copy_matrix(adata.X),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "layers": {key: _copy_matrix(value) for key, value in adata.layers.items()},
        "obsm": {key: _copy_matrix(value) for key, value in adata.obsm.items()},
        "uns": copy.deepcopy(dict(adata.uns)),
        "raw": None if adata.raw is None else _copy_matrix(adata.raw.X),
    }


def _snapshot(data: AnnData | MuData) -> dict:
    if isinstance(data, MuData):
        return {
            "obs": data.obs.copy(),
            "var": data.var.copy(),
            "uns": copy.deepcopy(dict(data.uns)),
            "mod": {name: _snapshot_adata(modality) for name, modality in data.mod.items()},
        }
    return _snapshot_adata(data)


def assert_matrix_equal(a, b, where: str = "matrix") -> None:
    """Same type, dtype, shape and values (NaN equal to NaN); sparse also same format."""
    assert type(a) is type(b), f"{where}: type {type(a)} != {type(b)}"
    if a is None:
        return
    assert a.shape == b.shape, f"{where}: shape {a.shape} != {b.shape}"
    assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} != {b.dtype}"
    if sp.issparse(a):
        assert a.format == b.format, f"{where}: format {a.format} != {b.format}"
        a, b = a.tocsr(), b.tocsr()
        a.sort_indices()
        b.sort_indices()
        assert np.array_equal(a.indptr, b.indptr), f"{where}: indptr changed"
        assert np.array_equal(a.indices, b.indices), f"{where}: indices changed"
        a, b = a.data, b.data
    a, b = np.asarray(a), np.asarray(b)
    nan_ok = a.dtype.kind in "fc"
    assert np.array_equal(a, b, equal_nan=nan_ok), f"{where}: values changed"


def _assert_same_tree(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict), where
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for key in a:
            _assert_same_tree(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=where)
    elif isinstance(a, np.ndarray) or sp.issparse(a):
        assert_matrix_equal(a, b, where)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (left, right) in enumerate(zip(a, b, strict=True)):
            _assert_same_tree(left, right, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture
def unchanged() -> Callable[[AnnData | MuData], Callable[[], None]]:
    """``check = unchanged(data)`` records ``data``; ``check()`` asserts nothing in it changed.

    Compares ``obs``, ``var``, ``X`` (values and identity), ``layers``, ``obsm``,
    ``uns`` and ``raw.X`` (each modality of a MuData, plus the MuData's own
    ``obs``/``var``/``uns``).
    """

    def watch(data: AnnData | MuData) -> Callable[[], None]:
        before = _snapshot(data)

        def check() -> None:
            _assert_same_tree(before, _snapshot(data), type(data).__name__)

        return check

    return watch


@pytest.fixture
def clean_registry():
    """Restore the model registry after a test that registers models."""
    saved = dict(model_registry._REGISTRY)
    yield
    for cls in model_registry._REGISTRY.values():
        if cls not in saved.values() and model_registry.REGISTRY_NAME in cls.__dict__:
            delattr(cls, model_registry.REGISTRY_NAME)
    model_registry._REGISTRY.clear()
    model_registry._REGISTRY.update(saved)
    for name, cls in saved.items():
        setattr(cls, model_registry.REGISTRY_NAME, name)
