"""The count model (scVI architecture): likelihoods, KL schedules, covariates, outputs, training."""

import numpy as np
import pytest
import torch
from scipy import special, stats

import scdlkit
import scdlkit.models.count_vae  # registers "count_vae"
from scdlkit import Trainer
from scdlkit.models import create_model
from scdlkit.models.count_vae import CountVAE
from scdlkit.models.likelihoods import log_nb_positive, log_poisson, log_zinb_positive

COUNTS = np.array([0.0, 1.0, 2.0, 7.0, 30.0, 1e4])
MEANS = np.array([1e-8, 1e-3, 0.5, 5.0, 80.0, 1e4])
THETAS = np.array([0.05, 1.0, 12.0, 1e3])


def _grid():
    x, mu, theta = np.meshgrid(COUNTS, MEANS, THETAS, indexing="ij")
    return x.ravel(), mu.ravel(), theta.ravel()


def _scipy_nb(x, mu, theta):
    return stats.nbinom.logpmf(x, theta, theta / (theta + mu))


def _t(values, dtype=torch.float64):
    return torch.as_tensor(values, dtype=dtype)


# -- likelihoods ---------------------------------------------------------------------------


def test_nb_equals_scipy_and_torch_in_float64():
    x, mu, theta = _grid()
    ours = log_nb_positive(_t(x), _t(mu), _t(theta), eps=0.0).numpy()
    # scipy's p = theta / (theta + mu) loses relative precision ~1e-16 / (1 - p) in 1 - p when
    # the mean is tiny (up to 5e-9 relative here); ours is within 1e-10 of a 50-digit reference
    np.testing.assert_allclose(ours, _scipy_nb(x, mu, theta), rtol=1e-8, atol=1e-8)
    reference = torch.distributions.NegativeBinomial(
        total_count=_t(theta), logits=_t(np.log(mu) - np.log(theta))
    ).log_prob(_t(x))
    np.testing.assert_allclose(ours, reference.numpy(), rtol=1e-10, atol=1e-9)


def test_nb_with_scvi_eps_matches_where_the_mean_is_not_tiny():
    x, mu, theta = _grid()
    ours = log_nb_positive(_t(x), _t(mu), _t(theta)).numpy()  # eps = 1e-8, as scvi-tools
    expected = _scipy_nb(x, mu, theta)
    normal = mu >= 0.5
    np.testing.assert_allclose(ours[normal], expected[normal], rtol=1e-6, atol=1e-5)
    # for tiny means the eps shift is at most x * log(1 + eps / mu) (documented)
    bound = x * np.log1p(1e-8 / mu) + 1e-6
    assert np.all(np.abs(ours - expected) <= bound)
    # zero counts with a tiny mean stay exact
    zero_tiny = (x == 0) & (mu == 1e-8)
    np.testing.assert_allclose(ours[zero_tiny], expected[zero_tiny], atol=1e-12)


def test_nb_in_float32_within_stated_tolerance():
    x, mu, theta = _grid()
    ours = log_nb_positive(_t(x, torch.float32), _t(mu, torch.float32), _t(theta, torch.float32))
    expected = _scipy_nb(x, mu, theta)
    normal = mu >= 0.5
    # float32: relative 1e-4 of the value's size, plus the lgamma cancellation at x = 1e4
    tolerance = 1e-4 * np.abs(expected[normal]) + np.where(x[normal] >= 1e4, 0.05, 1e-3)
    assert np.all(np.abs(ours.numpy()[normal] - expected[normal]) <= tolerance)


def _scipy_zinb(x, mu, theta, logits):
    log_pi, log_not_pi = special.log_expit(logits), special.log_expit(-logits)
    nb = _scipy_nb(x, mu, theta)
    return np.where(x == 0, np.logaddexp(log_pi, log_not_pi + nb), log_not_pi + nb)


@pytest.mark.parametrize("logits", [-50.0, -2.0, 0.0, 3.0, 20.0])
def test_zinb_equals_scipy_reference(logits):
    x, mu, theta = _grid()
    pi = np.full_like(x, logits)
    ours = log_zinb_positive(_t(x), _t(mu), _t(theta), _t(pi), eps=0.0).numpy()
    np.testing.assert_allclose(ours, _scipy_zinb(x, mu, theta, pi), rtol=1e-8, atol=1e-8)
    assert np.all(np.isfinite(ours))


def _scvi_log_zinb(x, mu, theta, pi, eps=1e-8):
    """scvi-tools' ``log_zinb_positive`` (count-models.md §1.3), written as there."""
    softplus_pi = torch.nn.functional.softplus(-pi)
    log_theta_mu_eps = torch.log(theta + mu + eps)
    pi_theta_log = -pi + theta * (torch.log(theta + eps) - log_theta_mu_eps)
    case_zero = torch.nn.functional.softplus(pi_theta_log) - softplus_pi
    case_non_zero = (
        -softplus_pi + pi_theta_log + x * (torch.log(mu + eps) - log_theta_mu_eps)
        + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
    )  # fmt: skip
    return case_zero * (x < eps) + case_non_zero * (x > eps)


def test_zinb_equals_scvi_tools_formula():
    x, mu, theta = _grid()
    # float32 lgamma cancellation at x = 1e4 (terms ~8e4): both forms within 0.03 there, 1e-3 elsewhere
    float32_tolerance = np.where(x >= 1e4, 0.03, 1e-3)
    for logits in (-50.0, -2.0, 0.0, 3.0, 20.0):
        args = [_t(v) for v in (x, mu, theta, np.full_like(x, logits))]
        exact = _scvi_log_zinb(*args)
        # torch's softplus turns linear above 20 (error e^-20 ~ 2e-9) at different points
        torch.testing.assert_close(log_zinb_positive(*args), exact, rtol=1e-10, atol=5e-9)
        single = [value.float() for value in args]
        for values in (log_zinb_positive(*single), _scvi_log_zinb(*single)):
            assert np.all((values.double() - exact).abs().numpy() <= float32_tolerance)


def test_zinb_without_inflation_is_nb_and_near_one_is_almost_all_zeros():
    x, mu, theta = _grid()
    nb = log_nb_positive(_t(x), _t(mu), _t(theta)).numpy()
    none = log_zinb_positive(_t(x), _t(mu), _t(theta), _t(np.full_like(x, -50.0))).numpy()
    # pi = sigmoid(-50) ~ 2e-22: the NB for x > 0, and for x = 0 unless NB(0) is itself < 1e-13
    visible = (x > 0) | (nb > -30)
    assert visible.sum() == x.size - 3
    np.testing.assert_allclose(none[visible], nb[visible], rtol=1e-12, atol=1e-12)
    near_one = log_zinb_positive(_t(x), _t(mu), _t(theta), _t(np.full_like(x, 20.0)), eps=0.0)
    zeros = x == 0
    # p(0) = pi + (1 - pi) NB(0) >= pi = sigmoid(20): log p(0) within 2.1e-9 of 0
    assert np.all(near_one.numpy()[zeros] <= 0) and np.all(near_one.numpy()[zeros] > -2.1e-9)
    # p(x > 0) = (1 - pi) NB(x): shifted by log(1 - pi) = -softplus(20)
    exact_nb = log_nb_positive(_t(x), _t(mu), _t(theta), eps=0.0).numpy()
    shift = near_one.numpy()[~zeros] - exact_nb[~zeros]
    np.testing.assert_allclose(shift, -np.logaddexp(0.0, 20.0), rtol=1e-9, atol=1e-8)


def test_zinb_float32_stays_finite_with_scvi_eps():
    x, mu, theta = _grid()
    for logits in (-50.0, 0.0, 20.0):
        pi = _t(np.full_like(x, logits), torch.float32)
        values = log_zinb_positive(
            _t(x, torch.float32), _t(mu, torch.float32), _t(theta, torch.float32), pi
        )
        assert torch.isfinite(values).all()


def test_poisson_equals_scipy_and_torch():
    x, mu, _ = _grid()
    ours = log_poisson(_t(x), _t(mu)).numpy()
    np.testing.assert_allclose(ours, stats.poisson.logpmf(x, mu), rtol=1e-9, atol=1e-8)
    reference = torch.distributions.Poisson(_t(mu)).log_prob(_t(x)).numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-10)
    assert log_poisson(_t([0.0]), _t([0.0])).item() == 0.0


# -- KL schedules --------------------------------------------------------------------------


def _scvi_kl_weight(epoch, n_epochs_kl_warmup=400, max_kl_weight=1.0, min_kl_weight=0.0):
    """scvi-tools' ``_compute_kl_weight`` (epoch branch), as written there."""
    slope = max_kl_weight - min_kl_weight
    if n_epochs_kl_warmup and epoch < n_epochs_kl_warmup:
        return torch.tensor(slope * (epoch / n_epochs_kl_warmup) + min_kl_weight)
    return torch.tensor(max_kl_weight)


def test_scvi_schedule_reproduces_scvi_tools_exactly():
    model = CountVAE(input_dim=5, kl_schedule="scvi")
    for epoch in (0, 1, 3, 79, 100, 245, 399, 400, 1000):
        model.on_epoch_start(epoch)
        expected = _scvi_kl_weight(epoch)
        assert torch.tensor(model.current_kl_weight) == expected
        assert model.kl_weight_at(epoch=epoch) == model.current_kl_weight == model.epoch_kl_weight
    # at 100k cells scvi-tools trains 80 epochs: the last one runs at 79/400
    assert CountVAE(input_dim=5, kl_schedule="scvi").kl_weight_at(epoch=79) == 79 / 400
    # telling it the number of epochs reaches the full weight at the end
    told = CountVAE(input_dim=5, kl_schedule="scvi", kl_warmup_epochs=80, kl_weight=0.5)
    assert [told.kl_weight_at(epoch=e) for e in (0, 40, 79, 80)] == [0.0, 0.25, 0.5 * 79 / 80, 0.5]


def test_steps_schedule_values_and_counter():
    model = CountVAE(input_dim=5, kl_warmup_steps=4, kl_weight=2.0)
    assert [model.kl_weight_at(step=s) for s in (0, 1, 2, 3, 4, 100)] == [0, 0.5, 1, 1.5, 2, 2]
    outputs = {"qz_mean": torch.ones(3, 2), "qz_var": torch.full((3, 2), 0.5)}
    kl = CountVAE.kl_divergence(outputs)
    np.testing.assert_allclose(kl.item(), 2 * 0.5 * (0.5 + 1 - 1 - np.log(0.5)))
    seen = [model.extra_losses(outputs)["kl"].item() for _ in range(6)]
    np.testing.assert_allclose(seen, [w * kl.item() for w in (0, 0.5, 1, 1.5, 2, 2)], rtol=1e-6)
    assert model.kl_step.item() == 6 and model.current_kl_weight == 2.0
    with torch.no_grad():  # no gradients: not a training step
        model.extra_losses(outputs)
    model.eval()  # evaluation: full weight, counter unchanged
    np.testing.assert_allclose(model.extra_losses(outputs)["kl"].item(), 2 * kl.item(), rtol=1e-6)
    assert model.kl_step.item() == 6
    rebuilt = create_model("count_vae", **model.config["kwargs"])
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.kl_step.item() == 6  # the schedule resumes from a checkpoint
    full = CountVAE(input_dim=5, kl_warmup_steps=0, kl_weight=0.3)
    np.testing.assert_allclose(full.extra_losses(outputs)["kl"].item(), 0.3 * kl.item())


# -- architecture --------------------------------------------------------------------------


def _first_widths(layers):
    return [block[0].in_features for block in layers.blocks]


@pytest.mark.parametrize("encode", [False, True])
@pytest.mark.parametrize("deep", [False, True])
def test_covariate_injection_widths(encode, deep):
    genes, latent, hidden = 40, 6, 16
    model = CountVAE(
        input_dim=genes, n_batch=3, n_cats_per_cov=(4, 1), n_continuous_cov=2, n_hidden=hidden,
        n_latent=latent, n_layers=3, encode_covariates=encode, deeply_inject_covariates=deep,
    )  # fmt: skip
    one_hot = 3 + 4  # a covariate with one category is ignored
    encoder = [genes + (2 + one_hot) * encode] + [hidden + one_hot * (encode and deep)] * 2
    decoder = [latent + 2 + one_hot] + [hidden + one_hot * deep] * 2
    assert _first_widths(model.encoder) == encoder
    assert _first_widths(model.decoder) == decoder
    batch = {
        "x": torch.poisson(torch.full((8, genes), 2.0)),
        "batch": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]),
        "cat_covs": torch.tensor([[0, 0], [1, 0], [2, 0], [3, 0]] * 2),
        "cont_covs": torch.randn(8, 2),
    }
    out = model.eval()(**batch)
    assert out["latent"].shape == (8, latent) and out["px_rate"].shape == (8, genes)


def _counts(n=16, genes=30, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full((n, genes), 3.0), generator=generator)


def test_batch_blind_encoder_ignores_the_batch():
    x = _counts()
    zeros, ones = torch.zeros(16, dtype=torch.long), torch.ones(16, dtype=torch.long)
    blind = CountVAE(input_dim=30, n_batch=2, n_hidden=16).eval()
    a, b = blind(x, batch=zeros), blind(x, batch=ones)
    assert torch.equal(a["latent"], b["latent"]) and torch.equal(a["qz_var"], b["qz_var"])
    assert not torch.allclose(a["px_rate"], b["px_rate"])  # the decoder sees the batch
    seeing = CountVAE(input_dim=30, n_batch=2, n_hidden=16, encode_covariates=True).eval()
    assert not torch.allclose(seeing(x, batch=zeros)["latent"], seeing(x, batch=ones)["latent"])


def test_latent_is_the_posterior_mean_in_eval_and_a_sample_in_training():
    x = _counts()
    model = CountVAE(input_dim=30, n_hidden=16)
    first, second = model.eval()(x), model(x)
    assert torch.equal(first["latent"], first["qz_mean"])
    assert torch.equal(first["latent"], second["latent"])
    assert not torch.equal(model.train()(x)["latent"], first["latent"])


def test_heads_outputs_and_library():
    x = _counts()
    library = x.sum(1, keepdim=True) * 3  # any positive library: px_rate scales with it
    nb = CountVAE(input_dim=30, n_hidden=16).eval()
    out = nb(x, library=library)
    assert not hasattr(nb, "px_dropout_decoder") and "px_dropout" not in out
    assert out["px_r"].shape == (30,)
    torch.testing.assert_close(out["px_rate"].sum(1, keepdim=True), library)
    torch.testing.assert_close(out["reconstruction"], out["px_rate"])
    torch.testing.assert_close(nb(x)["px_rate"].sum(1), x.sum(1))  # library defaults to x.sum(1)
    zinb = CountVAE(input_dim=30, n_hidden=16, likelihood="zinb").eval()
    out = zinb(x, library=library)
    torch.testing.assert_close(
        out["reconstruction"], out["px_rate"] * (1 - torch.sigmoid(out["px_dropout"]))
    )
    poisson = CountVAE(input_dim=30, n_hidden=16, likelihood="poisson").eval()
    assert not hasattr(poisson, "px_r") and "px_r" not in poisson(x)
    per_batch = CountVAE(input_dim=30, n_batch=3, n_hidden=16, dispersion="gene-batch").eval()
    codes = torch.arange(16) % 3
    theta = per_batch(x, batch=codes)["px_r"]
    assert per_batch.px_r.shape == (30, 3) and theta.shape == (16, 30)
    torch.testing.assert_close(theta[4], torch.exp(per_batch.px_r[:, 1]))


def _scvi_parameter_count(genes, batches, likelihood="nb", hidden=128, latent=10):
    """scvi-tools' default layer structure (count-models.md §1.2) without its unused heads."""
    encoder = (genes * hidden + hidden) + 2 * hidden + 2 * (hidden * latent + latent)
    decoder = ((latent + batches) * hidden + hidden) + 2 * hidden
    scale = hidden * genes + genes
    heads = {"nb": scale + genes, "zinb": 2 * scale + genes, "poisson": scale}[likelihood]
    return encoder + decoder + heads


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
def test_parameter_count_matches_scvi_layer_structure(likelihood):
    model = CountVAE(input_dim=2000, n_batch=2, likelihood=likelihood)
    count = sum(p.numel() for p in model.parameters())
    assert count == _scvi_parameter_count(2000, 2, likelihood)
    if likelihood == "nb":
        # count-models.md §1.2: 520,884 at G=2000, B=2 (scvi-tools builds 1,293,526)
        assert count == 520_884 == 1_293_526 - 256_642 - 2 * 258_000


# -- normalised expression -----------------------------------------------------------------


def test_normalized_expression_is_deterministic_and_scaled():
    x = _counts()
    codes = torch.arange(16) % 2
    library = x.sum(1, keepdim=True) + 5
    model = CountVAE(input_dim=30, n_batch=2, n_hidden=16)  # training mode
    first = model.normalized_expression(x, library, codes)
    assert model.training  # mode restored
    torch.testing.assert_close(
        first, model.normalized_expression(x, library, codes), rtol=0, atol=0
    )
    torch.testing.assert_close(first.sum(1), torch.full((16,), 1e4))
    small = model.normalized_expression(x, library, codes, library_size=123.0)
    torch.testing.assert_close(small.sum(1), torch.full((16,), 123.0))
    observed = model.normalized_expression(x, library, codes, library_size="observed")
    torch.testing.assert_close(observed.sum(1, keepdim=True), library)
    torch.testing.assert_close(observed, model.eval()(x, library, codes)["px_rate"])
    for bad in (0, -1.0, "latent", True):
        with pytest.raises(ValueError, match="library_size"):
            model.normalized_expression(x, library, codes, library_size=bad)


@pytest.mark.parametrize("encode", [False, True])
def test_transform_batch_changes_only_the_decoder_input(encode):
    x = _counts()
    codes = torch.arange(16) % 3
    library = x.sum(1, keepdim=True)
    model = CountVAE(input_dim=30, n_batch=3, n_hidden=16, encode_covariates=encode).eval()
    z, _ = model.encode(x, codes)  # the encoder keeps each cell's own batch
    by_batch = []
    for b in range(3):
        values = model.normalized_expression(x, library, codes, transform_batch=b)
        expected = model.decode(z, library, torch.full_like(codes, b))["px_scale"] * 1e4
        torch.testing.assert_close(values, expected)
        by_batch.append(values)
    assert not torch.allclose(by_batch[0], by_batch[1])
    averaged = model.normalized_expression(x, library, codes, transform_batch=[0, 2])
    torch.testing.assert_close(averaged, (by_batch[0] + by_batch[2]) / 2)
    torch.testing.assert_close(model(x, library, codes)["latent"], z)
    for bad in (3, -1, [], [0, 5], "0", 1.0):
        with pytest.raises(ValueError, match="transform_batch"):
            model.normalized_expression(x, library, codes, transform_batch=bad)
    with pytest.raises(ValueError, match="n_batch"):
        CountVAE(input_dim=30, n_hidden=16).normalized_expression(x, transform_batch=0)


# -- bad input ------------------------------------------------------------------------------


def test_input_errors_are_clear():
    x = _counts(n=4)
    codes = torch.tensor([0, 1, 0, 1])
    model = CountVAE(input_dim=30, n_batch=2, n_cats_per_cov=(3,), n_continuous_cov=1, n_hidden=8)
    good = {
        "batch": codes,
        "cat_covs": torch.tensor([[0], [1], [2], [0]]),
        "cont_covs": torch.ones(4, 1),
    }
    model.eval()(x, **good)
    negative = x.clone()
    negative[0, 0] = -1
    cases = [
        ({"x": negative}, "1 negative values.*layer='counts'"),
        ({"library": torch.tensor([[1.0], [0.0], [2.0], [3.0]])}, "1 cell.*filter_cells"),
        ({"batch": torch.tensor([0, 1, 2, 0])}, "batch code 2 .*2 categories"),
        ({"batch": None}, "batch_key="),
        ({"batch": torch.tensor([0.0, 1.0, 0.0, 1.0])}, "integer category codes"),
        ({"cat_covs": torch.tensor([[0], [3], [0], [0]])}, "cat_covs code 3 \\(column 0\\)"),
        ({"cat_covs": None}, "categorical_covariate_keys="),
        ({"cont_covs": None}, "continuous_covariate_keys="),
        ({"cont_covs": torch.tensor([[1.0], [float("nan")], [0.0], [0.0]])}, "1 NaN"),
        ({"x": torch.ones(4, 29)}, "input_dim"),
    ]
    for change, message in cases:
        inputs = {"x": x, **good, **change}
        before = {k: v.clone() for k, v in inputs.items() if v is not None}
        with pytest.raises(ValueError, match=message):
            model(**inputs)
        for key, value in before.items():
            torch.testing.assert_close(inputs[key], value, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"likelihood": "gaussian"}, "likelihood must be one of"),
        ({"norm": "group"}, "norm must be one of"),
        ({"dispersion": "gene-cell"}, "dispersion must be one of"),
        ({"dispersion": "gene-batch", "likelihood": "poisson"}, "Poisson has no dispersion"),
        ({"dispersion": "gene-batch"}, "n_batch >= 1"),
        ({"kl_schedule": "epochs"}, "kl_schedule must be one of"),
        ({"n_cats_per_cov": 3}, "n_cats_per_cov"),
        ({"n_cats_per_cov": (2, 0)}, "n_cats_per_cov\\[1\\]"),
        ({"n_batch": -1}, "n_batch"),
        ({"kl_warmup_steps": -5}, "kl_warmup_steps"),
    ],
)
def test_constructor_errors(options, message):
    with pytest.raises(ValueError, match=message):
        create_model("count_vae", input_dim=10, **options)


def test_registry_config_round_trip():
    model = create_model("count_vae", input_dim=12, n_batch=2, n_cats_per_cov=(3,), n_hidden=8)
    assert model.config["name"] == "count_vae"
    assert model.config["kwargs"]["n_cats_per_cov"] == [3]
    assert CountVAE.input_kind == "counts" and "library" in CountVAE.forward_keys
    rebuilt = create_model("count_vae", **model.config["kwargs"])
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values(), strict=True)
    )


# -- training --------------------------------------------------------------------------------


def _count_batches(n_cells=240, genes=60, batch_size=48):
    adata = scdlkit.datasets.synthetic_counts(n_cells, genes + 20, n_types=3, n_batches=2, seed=3)
    counts = adata.X.tocsr()
    x = counts[:, :genes].toarray().astype(np.float32)  # the genes the model sees
    library = x.sum(axis=1, keepdims=True)  # over the model's genes, as the data layer gives it
    codes = adata.obs["batch"].cat.codes.to_numpy().astype(np.int64)
    return [
        {
            "x": torch.from_numpy(x[i : i + batch_size]),
            "library": torch.from_numpy(library[i : i + batch_size]),
            "batch": torch.from_numpy(codes[i : i + batch_size]),
        }
        for i in range(0, n_cells, batch_size)
    ]


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
def test_training_lowers_the_loss(likelihood):
    batches = _count_batches()
    model = create_model(
        "count_vae", input_dim=60, n_batch=2, n_hidden=32, n_latent=4,
        likelihood=likelihood, kl_warmup_steps=10,
    )  # fmt: skip
    trainer = Trainer(
        model, "representation", epochs=6, lr=1e-2, early_stopping_patience=None,
        progress=False, seed=0,
    )  # fmt: skip
    trainer.fit(batches[:4], batches[4:])
    history = trainer.history_frame
    assert history["train_loss"].iloc[-1] < 0.8 * history["train_loss"].iloc[0]
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]
    # one count per optimizer step; the counter is a buffer, so it is restored
    # with the best weights (the model's state at the best epoch)
    assert model.kl_step.item() == 4 * trainer.best_epoch
    predicted = trainer.predict_dataset(batches[4:])
    assert predicted["latent"].shape == (48, 4)
    assert np.isfinite(predicted["reconstruction"]).all()
