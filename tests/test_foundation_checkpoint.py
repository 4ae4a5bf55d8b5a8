"""Loading official-format scGPT checkpoints: layouts, reports and every documented error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scdlkit import Trainer
from scdlkit.foundation import EmbeddingTask, GeneVocab, ScGPTConfig, load_scgpt
from scdlkit.foundation.model import pack_tokens
from scdlkit.foundation.testing import LAYOUTS, make_tiny_checkpoint, official_state_dict

GENES = [f"GENE{i}" for i in range(30)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {
        layout: make_tiny_checkpoint(root / layout, genes=GENES, layout=layout, seed=3)
        for layout in LAYOUTS
    }


def _tokens(vocab: GeneVocab, n: int = 6, length: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.full((n, length), vocab.pad_id)
    values = np.full((n, length), -2.0, dtype=np.float32)
    ids[:, 0] = vocab.cls_id
    for row in range(n):
        k = rng.integers(3, length)
        ids[row, 1:k] = rng.choice(len(GENES), k - 1, replace=False)
        values[row, 1:k] = rng.integers(1, 51, k - 1)
    return pack_tokens(torch.as_tensor(ids), torch.as_tensor(values))


def _rewrite_state(path, change):
    state = torch.load(path / "best_model.pt", weights_only=True)
    change(state)
    torch.save(state, path / "best_model.pt")


def test_three_layouts_load_to_identical_models(checkpoints):
    models = {layout: load_scgpt(path, device="cpu") for layout, path in checkpoints.items()}
    x = _tokens(models["flash"].vocab)
    outputs = {layout: model(x)["cell_embedding"] for layout, model in models.items()}
    for layout in LAYOUTS:
        assert models[layout].load_report.layouts == (layout,)
        torch.testing.assert_close(outputs[layout], outputs["flash"], rtol=0, atol=0)


def test_load_report_and_frozen_inference_model(checkpoints):
    model = load_scgpt(checkpoints["flash"], device="cpu")
    report = model.load_report
    assert report.ignored_modules == {"flag_encoder": 1, "decoder": 6, "mvc_decoder": 3}
    assert report.specials_added == ("<pad>", "<cls>", "<eoc>")
    assert report.vocab_size == len(GENES) + 3 == len(model.vocab)
    assert model.vocab.pad_id == len(GENES) and model.vocab.cls_id == len(GENES) + 1
    assert report.n_tensors == 3 + 6 + 2 * 16  # encoder, value encoder, 2 layers
    assert "responsible" in report.summary()
    assert model.supports_training is False
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training
    identity = model.identity.to_dict()
    assert len(identity["weights_sha256"]) == 64 and len(identity["vocab_sha256"]) == 64
    json.dumps(model.config)  # JSON-able


def test_inference_only_model_with_trainer(checkpoints):
    model = load_scgpt(checkpoints["flash"], device="cpu")
    x = _tokens(model.vocab, n=5)
    trainer = Trainer(model, EmbeddingTask(), batch_size=2, device="cpu")
    out = trainer.predict_dataset([{"x": x[:3]}, {"x": x[3:]}])
    assert out["latent"].shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(out["latent"], axis=1), 1.0, rtol=1e-5)
    with pytest.raises(NotImplementedError, match="inference-only"):
        trainer.fit([{"x": x}])
    with pytest.raises(ValueError, match="2 \\* seq_len"):
        model(torch.zeros(2, 5))


def test_specials_in_vocab_wrapped_and_ddp_state(tmp_path):
    path = make_tiny_checkpoint(
        tmp_path / "a", genes=GENES, specials_in_vocab=True, wrapper="model_state_dict"
    )
    model = load_scgpt(path, device="cpu")
    assert model.load_report.specials_added == ()
    assert model.vocab.pad_id == len(GENES)
    # a {"state_dict": ...} wrapper around DistributedDataParallel ("module.") names
    inner = {f"module.{k}": v for k, v in official_state_dict(vocab_size=len(GENES) + 3).items()}
    torch.save({"state_dict": inner}, path / "best_model.pt")
    assert load_scgpt(path, device="cpu").load_report.n_tensors == 41


def test_unknown_keys_strict_and_lenient(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "u", genes=GENES)
    _rewrite_state(path, lambda s: s.update({"mystery.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match="mystery.weight"):
        load_scgpt(path, device="cpu")
    model = load_scgpt(path, device="cpu", strict=False)
    assert "mystery.weight" in model.load_report.ignored_keys


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_scgpt(tmp_path / "nowhere")
    path = make_tiny_checkpoint(tmp_path / "m", genes=GENES)
    (path / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_scgpt(path)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"pre_norm": True}, "pre_norm"),
        ({"input_emb_style": "category"}, "input_emb_style"),
        ({"input_style": "log1p"}, "input_style"),
        ({"cell_emb_style": "avg-pool"}, "cell_emb_style"),
        ({"domain_spec_batchnorm": "dsbn"}, "domain_spec_batchnorm"),
        ({"nheads": 3}, "divisible"),
        ({"embsize": "big"}, "embsize"),
    ],
)
def test_invalid_args(tmp_path, args, match):
    path = make_tiny_checkpoint(tmp_path / "a", genes=GENES, args=args)
    with pytest.raises(ValueError, match=match):
        load_scgpt(path)


def test_missing_required_arg(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "a", genes=GENES)
    args = json.loads((path / "args.json").read_text())
    del args["nlayers"]
    (path / "args.json").write_text(json.dumps(args))
    with pytest.raises(ValueError, match="'nlayers'"):
        load_scgpt(path)
    with pytest.raises(ValueError, match="required"):
        ScGPTConfig.from_args({"embsize": 8})


def test_bad_vocab(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "v", genes=GENES)
    (path / "vocab.json").write_text(json.dumps({"A": 0, "B": 2}))
    with pytest.raises(ValueError, match="consecutive"):
        load_scgpt(path)
    (path / "vocab.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_scgpt(path)


def test_vocab_size_mismatch(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "v", genes=GENES)
    (path / "vocab.json").write_text(json.dumps({g: i for i, g in enumerate(GENES[:-1])}))
    with pytest.raises(ValueError, match="encoder.embedding.weight"):
        load_scgpt(path)


def test_missing_key_named(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "k", genes=GENES)
    _rewrite_state(path, lambda s: s.pop("transformer_encoder.layers.1.linear1.weight"))
    with pytest.raises(ValueError, match=r"transformer_encoder\.layers\.1\.linear1\.weight"):
        load_scgpt(path)


def test_missing_attention_named_in_official_form(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "k", genes=GENES)
    _rewrite_state(path, lambda s: s.pop("transformer_encoder.layers.0.self_attn.Wqkv.weight"))
    with pytest.raises(ValueError, match=r"layers\.0\.self_attn\.Wqkv\.weight"):
        load_scgpt(path)


def test_shape_mismatch_named(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "s", genes=GENES)
    _rewrite_state(
        path,
        lambda s: s.update(
            {"transformer_encoder.layers.0.self_attn.Wqkv.weight": torch.zeros(40, 16)}
        ),
    )
    with pytest.raises(ValueError, match=r"Wqkv\.weight.*\[40, 16\]"):
        load_scgpt(path)
    path = make_tiny_checkpoint(tmp_path / "t", genes=GENES)
    _rewrite_state(path, lambda s: s.update({"value_encoder.linear2.weight": torch.zeros(16, 8)}))
    with pytest.raises(ValueError, match=r"value_encoder\.linear2\.weight.*\[16, 8\]"):
        load_scgpt(path)


def test_extra_layer_is_mismatch(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "x", genes=GENES)
    _rewrite_state(
        path, lambda s: s.update({"transformer_encoder.layers.2.norm1.weight": torch.ones(16)})
    )
    with pytest.raises(ValueError, match="nlayers=2"):
        load_scgpt(path)


def test_two_layouts_for_one_layer(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "d", genes=GENES)

    def duplicate(state):
        state["transformer_encoder.layers.0.self_attn.in_proj_weight"] = state[
            "transformer_encoder.layers.0.self_attn.Wqkv.weight"
        ].clone()

    _rewrite_state(path, duplicate)
    with pytest.raises(ValueError, match="twice"):
        load_scgpt(path)


def test_pickled_objects_are_refused(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "p", genes=GENES)
    torch.save({"config": ScGPTConfig(8, 2, 8, 1)}, path / "best_model.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_scgpt(path)
    torch.save({"a": [1, 2]}, path / "best_model.pt")
    with pytest.raises(ValueError, match="not a tensor"):
        load_scgpt(path)
