"""Tokenisation: binning on hand-made cells, ties, zeros, <cls>, padding, seeded subsampling, loaders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from scdlkit._errors import MissingKeyError
from scdlkit.foundation import GeneVocab, ScGPTTokenizer, TokenLoader, TokenSource, match_genes
from scdlkit.foundation._hashing import cell_keys, random_uniform
from scdlkit.foundation.tokenizer import TIE_STREAM

PAD, CLS = 100, 101


def _tok(**kwargs) -> ScGPTTokenizer:
    return ScGPTTokenizer(pad_id=PAD, cls_id=CLS, **kwargs)


def _keys(n: int) -> np.ndarray:
    return cell_keys(pd.Index([f"cell{i}" for i in range(n)]))


def _reference_bins(row: np.ndarray, gene_ids: np.ndarray, key: np.uint64, n_bins: int, seed: int):
    """scGPT's per-cell binning (np.quantile + np.digitize), with our uniforms."""
    nonzero = np.flatnonzero(row > 0)
    values = row[nonzero].astype(np.float64)
    edges = np.quantile(values, np.linspace(0, 1, n_bins - 1))
    left = np.digitize(values, edges)
    right = np.digitize(values, edges, right=True)
    u = random_uniform(seed, TIE_STREAM, np.array([key]), gene_ids[nonzero][None, :])[0]
    return gene_ids[nonzero], np.ceil(u * (right - left) + left).astype(np.int64)


def test_hand_made_cell_bins_cls_and_padding():
    tok = _tok(n_bins=5, max_len=10)
    rows = np.array([[0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 7.0, 0.0, 0.0]])
    out = tok.tokenize(rows, np.arange(5), _keys(2))
    # cell 0: 4 expressed genes, quantile edges 1, 2, 3, 4 -> bins 1..4; zeros left out
    assert out["gene_ids"].tolist() == [[CLS, 1, 2, 3, 4], [CLS, 2, PAD, PAD, PAD]]
    assert out["values"][0].tolist() == [-2.0, 1.0, 2.0, 3.0, 4.0]
    # a single expressed gene: all edges equal its value, so it lands in any bin 1..4
    assert out["values"][1, 0] == -2.0 and 1 <= out["values"][1, 1] <= 4
    assert out["values"][1, 2:].tolist() == [-2.0, -2.0, -2.0]
    assert out["padding_mask"].tolist() == [[False] * 5, [False, False, True, True, True]]
    assert out["n_genes"].tolist() == [4, 1]
    custom = _tok(n_bins=5, cls_value=0.0).tokenize(rows, np.arange(5), _keys(2))
    assert custom["values"][:, 0].tolist() == [0.0, 0.0]


def test_ties_are_spread_reproducibly():
    rows = np.full((1, 60), 5.0)
    genes = np.arange(60)
    first = _tok(n_bins=5, seed=0).tokenize(rows, genes, _keys(1))["values"][0, 1:]
    again = _tok(n_bins=5, seed=0).tokenize(rows, genes, _keys(1))["values"][0, 1:]
    other = _tok(n_bins=5, seed=1).tokenize(rows, genes, _keys(1))["values"][0, 1:]
    np.testing.assert_array_equal(first, again)
    assert set(np.unique(first)) == {1.0, 2.0, 3.0, 4.0}
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("counts", [True, False])
def test_binning_matches_scgpt_reference(counts):
    rng = np.random.default_rng(0)
    if counts:
        rows = rng.poisson(1.5, size=(8, 40)).astype(np.float32)
    else:
        rows = (rng.random((8, 40)) < 0.6) * rng.lognormal(size=(8, 40)).astype(np.float32)
    genes = rng.permutation(90)[:40]
    keys = _keys(8)
    out = _tok(n_bins=51, seed=7).tokenize(sp.csr_matrix(rows), genes, keys)
    for i in range(8):
        expected_genes, expected_bins = _reference_bins(rows[i], genes, keys[i], 51, 7)
        k = expected_genes.shape[0]
        assert out["gene_ids"][i, 1 : 1 + k].tolist() == expected_genes.tolist()
        assert out["values"][i, 1 : 1 + k].astype(int).tolist() == expected_bins.tolist()
        assert out["values"][i, 1 : 1 + k].min() >= 1 and out["values"][i, 1 : 1 + k].max() <= 50


def test_sparse_dense_and_explicit_zeros_agree():
    rng = np.random.default_rng(1)
    rows = rng.poisson(1.0, size=(5, 12)).astype(np.float64)
    sparse = sp.csr_matrix(rows)
    sparse.data[0] = 0.0  # an explicitly stored zero
    dense = sparse.toarray()
    a = _tok().tokenize(sparse, np.arange(12), _keys(5))
    b = _tok().tokenize(dense, np.arange(12), _keys(5))
    for key in ("gene_ids", "values", "padding_mask"):
        np.testing.assert_array_equal(a[key], b[key])


def test_subsampling_is_seeded_and_independent_of_the_batch():
    rng = np.random.default_rng(2)
    rows = rng.poisson(3.0, size=(6, 50)).astype(np.float64) + 1.0  # every gene expressed
    genes = np.arange(50)
    keys = _keys(6)
    tok = _tok(max_len=11, seed=3)
    full = _tok(max_len=100, seed=3).tokenize(rows, genes, keys)
    out = tok.tokenize(rows, genes, keys)
    assert out["gene_ids"].shape == (6, 11) and not out["padding_mask"].any()
    for i in range(6):
        kept = out["gene_ids"][i, 1:]
        assert len(set(kept)) == 10 and set(kept) <= set(genes)
        # bins are computed over all expressed genes before subsampling
        lookup = dict(zip(full["gene_ids"][i, 1:], full["values"][i, 1:], strict=True))
        assert out["values"][i, 1:].tolist() == [lookup[g] for g in kept]
    # the same cell alone, in another order, in another batch: the same tokens
    alone = tok.tokenize(rows[[4]], genes, keys[[4]])
    np.testing.assert_array_equal(alone["gene_ids"][0], out["gene_ids"][4])
    reversed_ = tok.tokenize(rows[::-1], genes, keys[::-1])
    np.testing.assert_array_equal(reversed_["values"][::-1], out["values"])
    other = _tok(max_len=11, seed=4).tokenize(rows, genes, keys)
    assert not np.array_equal(other["gene_ids"], out["gene_ids"])


def test_invalid_values_and_settings():
    with pytest.raises(ValueError, match="negative"):
        _tok().tokenize(np.array([[1.0, -0.5]]), np.arange(2), _keys(1))
    with pytest.raises(ValueError, match="NaN"):
        _tok().tokenize(np.array([[1.0, np.nan]]), np.arange(2), _keys(1))
    with pytest.raises(ValueError, match="max_len"):
        _tok(max_len=1)
    with pytest.raises(ValueError, match="pad_to"):
        _tok().tokenize(np.ones((1, 5)), np.arange(5), _keys(1), pad_to=3)


def _adata(n: int = 40, genes: int = 25, seed: int = 0) -> AnnData:
    rng = np.random.default_rng(seed)
    x = sp.csr_matrix(rng.poisson(0.8, size=(n, genes)).astype(np.float32))
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(rng.choice(["a", "b"], n))}, index=[f"c{i}" for i in range(n)]
    )
    var = pd.DataFrame(
        {"symbol": [f"SYM{i}" for i in range(genes)]}, index=[f"ENSG{i:05d}" for i in range(genes)]
    )
    return AnnData(x, obs=obs, var=var)


def test_gene_matching_overlap_and_symbols():
    adata = _adata()
    vocab = GeneVocab({f"SYM{i}": i for i in range(20)})
    match = match_genes(adata.var["symbol"], vocab)
    assert match.n_matched == 20 and match.overlap == pytest.approx(0.8)
    with pytest.raises(ValueError, match="gene_symbols"):
        TokenSource.from_adata(adata, vocab)
    source = TokenSource.from_adata(adata, vocab, gene_symbols="symbol")
    assert source.match.n_matched == 20
    with pytest.raises(ValueError, match="min_gene_overlap"):
        TokenSource.from_adata(adata, vocab, gene_symbols="symbol", min_gene_overlap=0.9)
    with pytest.raises(MissingKeyError, match="nope"):
        TokenSource.from_adata(adata, vocab, gene_symbols="nope")
    assert vocab.lookup(["<pad>", "<cls>"]).tolist() == [-1, -1]  # specials never match genes


def test_negative_values_rejected_up_front():
    adata = _adata()
    adata.X = adata.X.toarray() - 0.5
    vocab = GeneVocab({f"ENSG{i:05d}": i for i in range(25)})
    with pytest.raises(ValueError, match="negative or non-finite.*'c0'"):
        TokenSource.from_adata(adata, vocab)


def test_token_loader_batches(tmp_path):
    adata = _adata()
    vocab = GeneVocab({f"ENSG{i:05d}": i for i in range(25)})
    source = TokenSource.from_adata(adata, vocab)
    tok = ScGPTTokenizer(pad_id=vocab.pad_id, cls_id=vocab.cls_id, max_len=8)
    labels = np.arange(40) % 2
    loader = TokenLoader(source, tok, labels=labels, batch_size=16, shuffle=True, seed=1)
    epoch0 = list(loader)
    assert [b["x"].shape[0] for b in epoch0] == [16, 16, 8]
    assert {b["gene_ids"].shape[1] for b in epoch0} == {8}
    assert all(b["x"].shape[1] == 16 for b in epoch0)
    index = np.concatenate([b["index"].numpy() for b in epoch0])
    assert sorted(index) == list(range(40))
    y = np.concatenate([b["y"].numpy() for b in epoch0])
    np.testing.assert_array_equal(y, labels[index])
    assert [b["index"].tolist() for b in loader] == [b["index"].tolist() for b in epoch0]
    loader.set_epoch(1)
    assert np.concatenate([b["index"].numpy() for b in loader]).tolist() != index.tolist()
    # a backed AnnData gives the same tokens as the in-memory one
    adata.write_h5ad(tmp_path / "a.h5ad")
    import anndata as ad

    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    backed_source = TokenSource.from_adata(backed, vocab)
    a = next(iter(TokenLoader(backed_source, tok, batch_size=40, shuffle=True, seed=2)))
    b = next(iter(TokenLoader(source, tok, batch_size=40, shuffle=True, seed=2)))
    np.testing.assert_array_equal(a["x"].numpy(), b["x"].numpy())
    backed.file.close()
