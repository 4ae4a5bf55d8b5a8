"""File hashes (cached) and counter-based random numbers for reproducible tokenisation."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

_SHA_CACHE: dict[tuple[str, int, int], str] = {}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB chunks; cached by path, size and modification time.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(delete=False) as handle:
    ...     _ = handle.write(b"abc")
    >>> file_sha256(handle.name)[:12]
    'ba7816bf8f01'
    """
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def _splitmix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijection of uint64 that scrambles every bit."""
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MUL1
        z = (z ^ (z >> np.uint64(27))) * _MUL2
        return z ^ (z >> np.uint64(31))


def cell_keys(obs_names: pd.Index | np.ndarray) -> np.ndarray:
    """Stable uint64 key per cell name (the same name gives the same key in every session).

    Examples
    --------
    >>> keys = cell_keys(pd.Index(["AAAC-1", "AAAG-1"]))
    >>> keys.dtype, keys[0] != keys[1]
    (dtype('uint64'), np.True_)
    """
    return pd.util.hash_array(np.asarray(obs_names, dtype=object).astype(str).astype(object))


def random_bits(seed: int, stream: int, keys: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """64 random bits per ``(seed, stream, cell key, gene id)``, as uint64 of shape ``genes.shape``.

    Counter-based: the value for one cell and gene does not depend on which other
    cells are in the minibatch, so tokenisation is reproducible and independent
    of batch size and order. Distinct genes of one cell always get distinct values.

    Parameters
    ----------
    seed
        User seed (any integer).
    stream
        Independent stream number (tie-breaking and gene sampling use different ones).
    keys
        uint64 cell keys, shape ``(n,)``.
    genes
        Integer gene ids, shape ``(n, m)``.
    """
    base = _splitmix(np.asarray([(int(seed) * 4 + int(stream)) & _MASK64], dtype=np.uint64))
    per_cell = _splitmix(np.asarray(keys, dtype=np.uint64) ^ base)
    return _splitmix(per_cell[:, None] ^ np.asarray(genes).astype(np.uint64))


def random_uniform(seed: int, stream: int, keys: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """Uniform floats in ``[0, 1)`` from :func:`random_bits` (53 bits of precision)."""
    bits = random_bits(seed, stream, keys, genes)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
