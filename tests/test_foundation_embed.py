"""``embed_scgpt``: frozen embeddings into .obsm, h5ad round trip, reproducibility, MuData, errors."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import torch

import scdlkit
from scdlkit import Trainer
from scdlkit.foundation import (
    EmbeddingTask,
    ScGPTTokenizer,
    TokenLoader,
    TokenSource,
    load_scgpt,
)
from scdlkit.foundation.model import pack_tokens
from scdlkit.foundation.testing import make_tiny_checkpoint
from scdlkit.tl._embed_scgpt import embed_scgpt


@pytest.fixture(scope="module")
def pbmc_module():
    adata = scdlkit.datasets.pbmc68k_reduced()
    return adata[:120].copy()


@pytest.fixture(scope="module")
def model(tmp_path_factory, pbmc_module):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("e"), genes=pbmc_module.raw.var_names)
    return load_scgpt(path, device="cpu")


def test_embed_writes_unit_norm_embeddings_and_record(pbmc_module, model, tmp_path):
    adata = pbmc_module.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the default key_added is a prefix
        embed_scgpt(
            adata, checkpoint=model.identity.path, use_raw=True, max_len=64, batch_size=32,
            device="cpu",
        )  # fmt: skip
    embedding = adata.obsm["X_scgpt"]
    assert embedding.shape == (120, 16) and embedding.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)
    record = adata.uns["scgpt"]
    assert record["n_genes_matched"] == 765 and record["gene_overlap"] == 1.0
    assert record["params"]["max_len"] == 64 and record["params"]["seed"] == 0
    assert record["checkpoint"]["weights_sha256"] == model.identity.weights_sha256
    adata.write_h5ad(tmp_path / "e.h5ad")
    back = ad.read_h5ad(tmp_path / "e.h5ad")
    np.testing.assert_array_equal(back.obsm["X_scgpt"], embedding)
    assert back.uns["scgpt"]["checkpoint"] == record["checkpoint"]
    assert back.uns["scgpt"]["params"]["use_raw"] == np.True_


def test_embeddings_do_not_depend_on_batching_or_order(pbmc_module, model):
    a = embed_scgpt(
        pbmc_module, checkpoint=model, use_raw=True, max_len=32, batch_size=7, copy=True
    )
    b = embed_scgpt(
        pbmc_module, checkpoint=model, use_raw=True, max_len=32, batch_size=120, copy=True
    )
    np.testing.assert_allclose(a.obsm["X_scgpt"], b.obsm["X_scgpt"], atol=1e-6)
    order = np.random.default_rng(0).permutation(120)
    shuffled = embed_scgpt(
        pbmc_module[order].copy(), checkpoint=model, use_raw=True, max_len=32, copy=True
    )
    np.testing.assert_allclose(shuffled.obsm["X_scgpt"], a.obsm["X_scgpt"][order], atol=1e-6)
    other_seed = embed_scgpt(
        pbmc_module, checkpoint=model, use_raw=True, max_len=32, seed=1, copy=True
    )
    assert not np.allclose(other_seed.obsm["X_scgpt"], a.obsm["X_scgpt"])
    assert "X_scgpt" not in pbmc_module.obsm


def test_predict_dataset_with_inputs(pbmc_module, model):
    source = TokenSource.from_adata(pbmc_module, model.vocab, use_raw=True)
    loader = TokenLoader(source, ScGPTTokenizer.from_model(model, max_len=32), batch_size=50)
    out = Trainer(model, EmbeddingTask(), device="cpu").predict_dataset(loader)
    assert out["latent"].shape == (120, 16) and out["gene_ids"].shape == (120, 32)
    assert out["index"].tolist() == list(range(120))
    packed = pack_tokens(torch.from_numpy(out["gene_ids"]), torch.from_numpy(out["values"]))
    np.testing.assert_array_equal(out["x"], packed.numpy())
    with torch.inference_mode():
        direct = model(torch.from_numpy(out["x"]))
    np.testing.assert_allclose(out["latent"], direct["latent"].numpy(), atol=1e-6)
    np.testing.assert_allclose(out["cell_embedding"], direct["cell_embedding"].numpy(), atol=1e-6)
    assert (out["gene_ids"][:, 0] == model.vocab.cls_id).all()


def test_embedding_is_the_normalised_cls_output_of_a_manual_forward(pbmc_module, model):
    adata = embed_scgpt(pbmc_module, checkpoint=model, use_raw=True, max_len=32, copy=True)
    again = embed_scgpt(pbmc_module, checkpoint=model, use_raw=True, max_len=32, copy=True)
    np.testing.assert_array_equal(adata.obsm["X_scgpt"], again.obsm["X_scgpt"])
    source = TokenSource.from_adata(pbmc_module, model.vocab, use_raw=True)
    batch = next(
        iter(TokenLoader(source, ScGPTTokenizer.from_model(model, max_len=32), batch_size=120))
    )
    with torch.inference_mode():
        cls = model.backbone.cell_embedding(
            batch["gene_ids"], batch["values"], batch["padding_mask"]
        )
    expected = torch.nn.functional.normalize(cls, dim=1).numpy()
    np.testing.assert_allclose(adata.obsm["X_scgpt"], expected, atol=1e-5)
    embedding = adata.obsm["X_scgpt"]
    distances = np.linalg.norm(embedding[:, None] - embedding[None], axis=-1)
    off_diagonal = distances[~np.eye(len(embedding), dtype=bool)]
    assert off_diagonal.min() > 1e-4  # every cell gets its own embedding


def test_mudata_modality(model, pbmc_module):
    import mudata as md

    rna = ad.AnnData(
        pbmc_module.raw.X.copy(), obs=pbmc_module.obs[[]].copy(), var=pbmc_module.raw.var[[]].copy()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = md.MuData({"rna": rna})
    embed_scgpt(mdata, checkpoint=model, mod="rna", max_len=16, key_added="fm")
    single = embed_scgpt(
        ad.AnnData(rna.X.copy(), obs=rna.obs.copy(), var=rna.var.copy()),
        checkpoint=model, max_len=16, copy=True,
    )  # fmt: skip
    np.testing.assert_array_equal(mdata.mod["rna"].obsm["X_fm"], single.obsm["X_scgpt"])
    assert "fm" in mdata.mod["rna"].uns and "X_fm" not in mdata.obsm


def test_full_obsm_key_is_deprecated_but_still_understood(pbmc_module, model):
    with pytest.warns(FutureWarning, match="key_added is now a prefix"):
        old = embed_scgpt(
            pbmc_module, checkpoint=model, use_raw=True, max_len=16, key_added="X_fm", copy=True
        )
    new = embed_scgpt(
        pbmc_module, checkpoint=model, use_raw=True, max_len=16, key_added="fm", copy=True
    )
    np.testing.assert_array_equal(old.obsm["X_fm"], new.obsm["X_fm"])
    assert "fm" in old.uns and "X_X_fm" not in old.obsm and "X_fm" not in old.uns


def test_embed_errors(pbmc_module, model, tmp_path):
    with pytest.raises(ValueError, match="negative"):
        embed_scgpt(pbmc_module.copy(), checkpoint=model)  # .X is scaled
    with pytest.raises(ValueError, match="view"):
        embed_scgpt(pbmc_module[:10], checkpoint=model, use_raw=True)
    renamed = ad.AnnData(pbmc_module.raw.X.copy(), obs=pbmc_module.obs[[]].copy())
    renamed.var_names = [f"ENSG{i}" for i in range(renamed.n_vars)]
    with pytest.raises(ValueError, match="gene_symbols"):
        embed_scgpt(renamed, checkpoint=model)
    renamed.var["symbol"] = list(pbmc_module.raw.var_names)
    embed_scgpt(renamed, checkpoint=model, gene_symbols="symbol", max_len=16)
    assert renamed.uns["scgpt"]["gene_overlap"] == 1.0
    with pytest.raises(FileNotFoundError, match="best_model.pt"):
        (tmp_path / "broken").mkdir()
        embed_scgpt(pbmc_module.copy(), checkpoint=tmp_path / "broken", use_raw=True)
    with pytest.raises(ValueError, match="key_added"):
        embed_scgpt(pbmc_module.copy(), checkpoint=model, use_raw=True, key_added="a/b")
