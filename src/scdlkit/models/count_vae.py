"""Count VAE with batch covariates: the scVI architecture (Lopez et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

import torch
from torch import nn

from .base import ScdlModel
from .count_layers import CovariateLayers, check_count_inputs, one_hot_width, one_hots
from .count_mapping import ReferenceMapping
from .layers import check_bool, check_dropout, check_float, check_int
from .likelihoods import log_nb_positive, log_poisson, log_zinb_positive
from .registry import register_model

LIKELIHOODS = ("nb", "zinb", "poisson")
DISPERSIONS = ("gene", "gene-batch")
NORMS = ("batch", "layer", "none")
KL_SCHEDULES = ("steps", "scvi")
#: Added to the encoder variance, as in scvi-tools (``var_eps``).
VAR_EPS = 1e-4


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        allowed = ", ".join(repr(choice) for choice in choices)
        msg = f"{name} must be one of {allowed}, got {value!r}."
        raise ValueError(msg)
    return str(value)


@register_model("count_vae")
class CountVAE(ReferenceMapping, ScdlModel):
    """Variational autoencoder of raw counts with batch covariates: the scVI architecture.

    The model of scVI (Lopez et al. 2018, *Nat Methods* 15:1053), laid out as
    scvi-tools' ``SCVI``/``VAE`` with an observed library size. The encoder
    sees ``log1p(x)`` (plus the covariates with ``encode_covariates``) and
    gives the Gaussian ``q(z | x)`` (variance ``exp(·) + 1e-4``); the decoder
    sees ``z``, the continuous covariates and the one-hot batch and
    categorical covariates, and gives ``px_scale`` (softmax over genes) and
    ``px_rate = library · px_scale``, the mean of the count distribution.
    Only the heads the configuration uses are built: the zero-inflation head
    for ``"zinb"``, a dispersion per batch for ``"gene-batch"``, no dispersion
    for ``"poisson"``.

    Loss: :meth:`reconstruction_loss` (negative log-likelihood summed over
    genes, averaged over cells) plus :meth:`extra_losses`
    (``weight · KL(q(z|x) || N(0, I))`` summed over latent dimensions,
    averaged over cells). The KL weight warms up linearly from 0 to
    ``kl_weight`` in training (see :meth:`kl_weight_at`); in evaluation mode
    it is always ``kl_weight``, so validation losses are comparable.

    Parameters
    ----------
    input_dim
        Number of genes.
    n_batch
        Number of batch categories (``0``: no batch). Batch codes go one-hot
        into the decoder, and into the encoder with ``encode_covariates``; a
        single category is ignored, as in scvi-tools.
    n_cats_per_cov
        Number of categories of each extra categorical covariate (one-hot, like the batch).
    n_continuous_cov
        Number of continuous covariates, concatenated to ``z`` at the decoder
        input (and to ``log1p(x)`` with ``encode_covariates``).
    n_hidden, n_latent, n_layers
        Hidden width, latent size and number of hidden layers of the encoder and the decoder.
    dropout
        Dropout after every encoder hidden layer (the decoder has none, as in scvi-tools).
    norm
        ``"batch"``, ``"layer"`` or ``"none"``: normalisation of every hidden layer.
    likelihood
        ``"nb"`` (negative binomial), ``"zinb"`` (zero-inflated NB) or ``"poisson"``.
    dispersion
        ``"gene"`` (one inverse dispersion per gene) or ``"gene-batch"`` (per
        gene and batch); not used by ``"poisson"``.
    encode_covariates
        Give the encoder the batch and covariates too (default: a batch-blind encoder).
    deeply_inject_covariates
        Concatenate the one-hot covariates at every hidden layer, not only the first.
    kl_weight
        Full weight of the KL term.
    kl_schedule
        ``"steps"``: linear warm-up over ``kl_warmup_steps`` optimizer steps
        (counted by the model, saved in its state dict), so the full weight is
        reached on large data too. ``"scvi"``: scvi-tools' epoch-based rule,
        ``kl_weight · epoch / kl_warmup_epochs`` while ``epoch < kl_warmup_epochs``
        (0-based epochs), for parity runs; with ``kl_warmup_epochs`` = the
        number of training epochs it also reaches the full weight.
    kl_warmup_steps
        Warm-up length of the ``"steps"`` schedule (``0``: full weight from the start).
    kl_warmup_epochs
        Warm-up length of the ``"scvi"`` schedule (scvi-tools' ``n_epochs_kl_warmup``).
    n_batch_extra
        Batches added by reference mapping (:func:`scdlkit.tl.map_query`), coded
        ``n_batch ..`` after the reference batches. Their one-hot weights (and
        dispersions with ``"gene-batch"``) are separate parameters, so that
        :meth:`freeze_reference` can train them alone.

    Examples
    --------
    >>> import torch
    >>> model = CountVAE(input_dim=30, n_batch=2, n_latent=4, n_hidden=16).eval()
    >>> x = torch.poisson(torch.full((5, 30), 2.0))
    >>> out = model(x, library=x.sum(1, keepdim=True), batch=torch.tensor([0, 1, 0, 1, 1]))
    >>> out["latent"].shape, out["px_rate"].shape, torch.equal(out["latent"], out["qz_mean"])
    (torch.Size([5, 4]), torch.Size([5, 30]), True)
    """

    supported_tasks = ("representation", "reconstruction")
    description = "Count VAE with batch covariates (scVI architecture; NB/ZINB/Poisson)."
    forward_keys = ("x", "library", "batch", "cat_covs", "cont_covs")
    input_kind = "counts"

    def __init__(
        self,
        *,
        input_dim: int,
        n_batch: int = 0,
        n_cats_per_cov: Sequence[int] = (),
        n_continuous_cov: int = 0,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout: float = 0.1,
        norm: str = "batch",
        likelihood: str = "nb",
        dispersion: str = "gene",
        encode_covariates: bool = False,
        deeply_inject_covariates: bool = False,
        kl_weight: float = 1.0,
        kl_schedule: str = "steps",
        kl_warmup_steps: int = 2000,
        kl_warmup_epochs: int = 400,
        n_batch_extra: int = 0,
    ) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim)
        self.n_batch = check_int("n_batch", n_batch, minimum=0)
        if isinstance(n_cats_per_cov, str | bytes) or not isinstance(n_cats_per_cov, Sequence):
            msg = f"n_cats_per_cov must be a sequence of category counts such as (3, 2), got {n_cats_per_cov!r}."
            raise ValueError(msg)
        self.n_cats_per_cov = tuple(
            check_int(f"n_cats_per_cov[{i}]", n) for i, n in enumerate(n_cats_per_cov)
        )
        self.n_continuous_cov = check_int("n_continuous_cov", n_continuous_cov, minimum=0)
        self.n_hidden = check_int("n_hidden", n_hidden)
        self.n_latent = check_int("n_latent", n_latent)
        self.n_layers = check_int("n_layers", n_layers)
        self.dropout = check_dropout(dropout)
        self.norm = _check_choice("norm", norm, NORMS)
        self.likelihood = _check_choice("likelihood", likelihood, LIKELIHOODS)
        self.dispersion = _check_choice("dispersion", dispersion, DISPERSIONS)
        self.encode_covariates = check_bool("encode_covariates", encode_covariates)
        self.deeply_inject_covariates = check_bool(
            "deeply_inject_covariates", deeply_inject_covariates
        )
        self.kl_weight = check_float("kl_weight", kl_weight, low=0.0)
        self.kl_schedule = _check_choice("kl_schedule", kl_schedule, KL_SCHEDULES)
        self.kl_warmup_steps = check_int("kl_warmup_steps", kl_warmup_steps, minimum=0)
        self.kl_warmup_epochs = check_int("kl_warmup_epochs", kl_warmup_epochs, minimum=0)
        self.n_batch_extra = check_int("n_batch_extra", n_batch_extra, minimum=0)
        if self.n_batch_extra and self.n_batch < 1:
            msg = "n_batch_extra adds batches to a model with batches: n_batch must be >= 1."
            raise ValueError(msg)
        self.frozen_norms = False
        if self.dispersion == "gene-batch" and self.likelihood == "poisson":
            msg = "dispersion='gene-batch' needs likelihood='nb' or 'zinb'; the Poisson has no dispersion."
            raise ValueError(msg)
        if self.dispersion == "gene-batch" and self.n_batch < 1:
            msg = "dispersion='gene-batch' needs batches: pass n_batch >= 1 (and batch codes), or use dispersion='gene'."
            raise ValueError(msg)

        n_cov = one_hot_width(self.n_batch) + sum(map(one_hot_width, self.n_cats_per_cov))
        shared = {
            "n_hidden": self.n_hidden,
            "n_layers": self.n_layers,
            "inject_all": self.deeply_inject_covariates,
            "norm": self.norm,
        }
        encoder_in = self.input_dim + self.n_continuous_cov * self.encode_covariates
        self.encoder = CovariateLayers(
            encoder_in, n_cov=n_cov * self.encode_covariates, dropout=self.dropout,
            n_cov_extra=self.n_batch_extra * self.encode_covariates, **shared,
        )  # fmt: skip
        self.mean_encoder = nn.Linear(self.n_hidden, self.n_latent)
        self.var_encoder = nn.Linear(self.n_hidden, self.n_latent)
        self.decoder = CovariateLayers(
            self.n_latent + self.n_continuous_cov, n_cov=n_cov, dropout=0.0,
            n_cov_extra=self.n_batch_extra, **shared,
        )  # fmt: skip
        self.px_scale_decoder = nn.Linear(self.n_hidden, self.input_dim)
        if self.likelihood == "zinb":
            self.px_dropout_decoder = nn.Linear(self.n_hidden, self.input_dim)
        if self.likelihood != "poisson":
            shape = (
                (self.input_dim, self.n_batch)
                if self.dispersion == "gene-batch"
                else (self.input_dim,)
            )
            self.px_r = nn.Parameter(torch.randn(shape))
        if self.dispersion == "gene-batch" and self.n_batch_extra:
            self.px_r_extra = nn.Parameter(torch.zeros(self.input_dim, self.n_batch_extra))
        self.register_buffer("kl_step", torch.zeros((), dtype=torch.long))
        self.epoch_kl_weight = 0.0
        self.on_epoch_start(0)

    # -- KL warm-up -----------------------------------------------------------------------

    def kl_weight_at(self, *, epoch: int = 0, step: int = 0) -> float:
        """KL weight in training at 0-based ``epoch`` (``"scvi"``) or optimizer ``step`` (``"steps"``).

        Both schedules compute ``kl_weight · (t / n)`` while ``t < n``, else
        ``kl_weight``, as scvi-tools' ``_compute_kl_weight`` does (``n = 0``: full weight).

        Examples
        --------
        >>> model = CountVAE(input_dim=10, kl_schedule="scvi")
        >>> [model.kl_weight_at(epoch=e) for e in (0, 1, 200, 399, 400)]
        [0.0, 0.0025, 0.5, 0.9975, 1.0]
        >>> CountVAE(input_dim=10, kl_warmup_steps=100).kl_weight_at(step=25)
        0.25
        """
        if self.kl_schedule == "scvi":
            t, n = int(epoch), self.kl_warmup_epochs
        else:
            t, n = int(step), self.kl_warmup_steps
        if n and t < n:
            return self.kl_weight * (max(t, 0) / n)
        return self.kl_weight

    def on_epoch_start(self, epoch: int) -> None:
        """Set :attr:`epoch_kl_weight`, the weight of ``epoch`` under the ``"scvi"`` schedule."""
        if self.kl_schedule == "scvi":
            self.epoch_kl_weight = self.kl_weight_at(epoch=epoch)

    @property
    def current_kl_weight(self) -> float:
        """KL weight of the next training step (``"steps"``: read from the step counter).

        Examples
        --------
        >>> model = CountVAE(input_dim=10, kl_warmup_steps=100)
        >>> _ = model.kl_step.fill_(30)
        >>> model.current_kl_weight
        0.3
        """
        if self.kl_schedule == "scvi":
            return self.epoch_kl_weight
        return self.kl_weight_at(step=int(self.kl_step))

    def _training_kl_weight(self) -> torch.Tensor | float:
        if self.kl_schedule == "scvi":
            return self.epoch_kl_weight
        if self.kl_warmup_steps == 0:
            weight: torch.Tensor | float = self.kl_weight
        else:
            fraction = torch.clamp(self.kl_step.float() / self.kl_warmup_steps, max=1.0)
            weight = self.kl_weight * fraction
        if torch.is_grad_enabled():
            self.kl_step.add_(1)  # one training loss = one optimizer step
        return weight

    # -- network --------------------------------------------------------------------------

    @property
    def n_batch_total(self) -> int:
        """Number of batch codes the model takes: the reference batches plus :attr:`n_batch_extra`."""
        return self.n_batch + self.n_batch_extra

    def _one_hots(
        self, batch: torch.Tensor | None, cat_covs: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        return one_hots(batch, cat_covs, self.n_batch, self.n_cats_per_cov, self.n_batch_extra)

    def _inputs(
        self,
        x: torch.Tensor,
        library: torch.Tensor | None,
        batch: torch.Tensor | None,
        cat_covs: torch.Tensor | None,
        cont_covs: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        self.check_input(x)
        library, batch = check_count_inputs(
            x, library, batch, cat_covs, cont_covs, n_batch=self.n_batch_total,
            n_cats_per_cov=self.n_cats_per_cov, n_continuous_cov=self.n_continuous_cov,
        )  # fmt: skip
        return library, batch, cat_covs, cont_covs

    def encode(
        self,
        x: torch.Tensor,
        batch: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(z | x)``, each ``(n, n_latent)`` (inputs already checked)."""
        h = torch.log1p(x)
        covariates: list[torch.Tensor] = []
        extra = None
        if self.encode_covariates:
            if self.n_continuous_cov:
                h = torch.cat([h, cont_covs.to(h.dtype)], dim=-1)
            covariates, extra = self._one_hots(batch, cat_covs)
        hidden = self.encoder(h, covariates, extra)
        return self.mean_encoder(hidden), torch.exp(self.var_encoder(hidden).float()) + VAR_EPS

    def decode(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        batch: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Likelihood parameters ``px_scale``, ``px_rate``, and ``px_r`` / ``px_dropout`` when used."""
        h = z if not self.n_continuous_cov else torch.cat([z, cont_covs.to(z.dtype)], dim=-1)
        hidden = self.decoder(h, *self._one_hots(batch, cat_covs))
        px_scale = torch.softmax(self.px_scale_decoder(hidden).float(), dim=-1)
        out = {"px_scale": px_scale, "px_rate": library.float() * px_scale}
        if self.likelihood != "poisson":
            px_r = self.px_r
            if self.dispersion == "gene-batch":
                if self.n_batch_extra:
                    px_r = torch.cat([px_r, self.px_r_extra], dim=1)
                px_r = px_r.t()[batch]
            out["px_r"] = torch.exp(px_r.float())
        if self.likelihood == "zinb":
            out["px_dropout"] = self.px_dropout_decoder(hidden).float()
        return out

    def forward(
        self,
        x: torch.Tensor,
        library: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode, sample ``z`` (training) or take the posterior mean (evaluation), decode.

        Parameters
        ----------
        x
            Raw counts ``(n, input_dim)``.
        library
            Observed library sizes ``(n, 1)``: the cells' total counts over the
            model's genes (what the data layer puts in every minibatch); ``None``
            uses ``x.sum(1)``, the same.
        batch
            Batch codes ``(n,)`` in ``[0, n_batch)``; needed when ``n_batch > 0``, ignored otherwise.
        cat_covs
            Categorical covariate codes ``(n, len(n_cats_per_cov))``.
        cont_covs
            Continuous covariates ``(n, n_continuous_cov)``.

        Returns
        -------
        ``latent``, ``qz_mean``, ``qz_var`` ``(n, n_latent)``; ``px_scale``,
        ``px_rate``, ``reconstruction`` (the likelihood mean: ``px_rate``, times
        ``1 − sigmoid(px_dropout)`` for ZINB) ``(n, input_dim)``; ``px_r`` (inverse
        dispersion θ, ``(input_dim,)`` or ``(n, input_dim)``) for NB/ZINB;
        ``px_dropout`` (zero-inflation logits) for ZINB.

        Raises
        ------
        ValueError
            Wrong shapes, negative counts, a library size ``<= 0``, missing
            covariates the model was built with, or codes out of range.
        """
        library, batch, cat_covs, cont_covs = self._inputs(x, library, batch, cat_covs, cont_covs)
        qz_mean, qz_var = self.encode(x, batch, cat_covs, cont_covs)
        if self.training:
            z = qz_mean + qz_var.sqrt() * torch.randn_like(qz_mean)
        else:
            z = qz_mean
        out = self.decode(z, library, batch, cat_covs, cont_covs)
        mean = out["px_rate"]
        if self.likelihood == "zinb":
            mean = mean * torch.sigmoid(-out["px_dropout"])
        return {"latent": z, "qz_mean": qz_mean, "qz_var": qz_var, **out, "reconstruction": mean}

    # -- loss -----------------------------------------------------------------------------

    def log_likelihood(self, outputs: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Per-cell log-likelihood of the counts ``x`` ``(n,)``, summed over genes.

        Examples
        --------
        >>> import torch
        >>> model = CountVAE(input_dim=6, likelihood="poisson", n_hidden=8).eval()
        >>> x = torch.ones(3, 6)
        >>> model.log_likelihood(model(x), x).shape
        torch.Size([3])
        """
        x = x.float()
        if self.likelihood == "nb":
            values = log_nb_positive(x, outputs["px_rate"], outputs["px_r"])
        elif self.likelihood == "zinb":
            values = log_zinb_positive(
                x, outputs["px_rate"], outputs["px_r"], outputs["px_dropout"]
            )
        else:
            values = log_poisson(x, outputs["px_rate"])
        return values.sum(dim=-1)

    def reconstruction_loss(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Negative log-likelihood of ``batch["x"]`` summed over genes, averaged over cells."""
        return -self.log_likelihood(outputs, batch["x"]).mean()

    @staticmethod
    def kl_divergence(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unweighted ``KL(q(z|x) || N(0, I))`` summed over latent dimensions, averaged over cells.

        ``reconstruction_loss + kl_divergence`` is the negative ELBO that
        scvi-tools reports as ``elbo_train`` / ``elbo_validation``.

        Examples
        --------
        >>> import torch
        >>> CountVAE.kl_divergence({"qz_mean": torch.zeros(2, 3), "qz_var": torch.ones(2, 3)})
        tensor(0.)
        """
        mean, var = outputs["qz_mean"].float(), outputs["qz_var"].float()
        return (0.5 * (var + mean.pow(2) - 1.0 - torch.log(var))).sum(dim=-1).mean()

    def extra_losses(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"kl": weight · KL}``: warm-up weight in training, ``kl_weight`` in evaluation.

        With ``kl_schedule="steps"`` each call in training mode with gradients
        enabled counts one optimizer step.
        """
        weight = self._training_kl_weight() if self.training else self.kl_weight
        return {"kl": weight * self.kl_divergence(outputs)}

    # -- outputs for the tl layer -----------------------------------------------------------

    def _decode_batches(self, transform_batch: int | Sequence[int] | None) -> list[int] | None:
        if transform_batch is None:
            return None
        many = isinstance(transform_batch, Sequence) and not isinstance(transform_batch, str)
        codes = list(transform_batch) if many else [transform_batch]
        if not self.n_batch:
            msg = "transform_batch needs a model built with batches (n_batch >= 1)."
            raise ValueError(msg)
        valid = all(isinstance(c, Integral) and not isinstance(c, bool) for c in codes)
        if not codes or not valid or not all(0 <= int(c) < self.n_batch_total for c in codes):
            msg = (
                f"transform_batch must be a batch code in 0..{self.n_batch_total - 1} or a non-empty "
                f"list of them, got {transform_batch!r}."
            )
            raise ValueError(msg)
        return [int(c) for c in codes]

    def normalized_expression(
        self,
        x: torch.Tensor,
        library: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        *,
        library_size: float | str = 1e4,
        transform_batch: int | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Decode the expression ``px_scale × library_size`` deterministically (posterior mean of ``z``).

        Runs in evaluation mode without gradients (the model's mode is restored
        afterwards). The encoder sees the cells' own batch; ``transform_batch``
        replaces the batch at the decoder input only, so the expression is
        predicted as if every cell came from that batch (the batch-corrected
        expression); a list decodes once per batch and averages.

        Parameters
        ----------
        x, library, batch, cat_covs, cont_covs
            As for :meth:`forward`.
        library_size
            A number (rows sum to it; ``1e4`` gives a scanpy-like scale) or
            ``"observed"`` (each cell's own ``library``: expected counts of the
            negative-binomial part, without zero inflation).
        transform_batch
            ``None`` (each cell's batch), a batch code, or a list of codes (averaged).

        Returns
        -------
        Float32 tensor ``(n, input_dim)``.

        Raises
        ------
        ValueError
            Invalid ``library_size`` or ``transform_batch``, or any input
            :meth:`forward` refuses.

        Examples
        --------
        >>> import torch
        >>> model = CountVAE(input_dim=20, n_batch=3, n_hidden=8)
        >>> x = torch.poisson(torch.full((4, 20), 3.0))
        >>> codes = torch.tensor([0, 1, 2, 0])
        >>> values = model.normalized_expression(x, batch=codes, transform_batch=[0, 1])
        >>> torch.allclose(values.sum(1), torch.full((4,), 1e4))
        True
        """
        observed = isinstance(library_size, str) and library_size == "observed"
        if not observed and not (
            isinstance(library_size, Real)
            and not isinstance(library_size, bool)
            and 0 < float(library_size) < float("inf")
        ):
            msg = f"library_size must be a positive number or 'observed', got {library_size!r}."
            raise ValueError(msg)
        decode_batches = self._decode_batches(transform_batch)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                library, batch, cat_covs, cont_covs = self._inputs(
                    x, library, batch, cat_covs, cont_covs
                )
                z, _ = self.encode(x, batch, cat_covs, cont_covs)
                scale = 1.0 if observed else float(library_size)
                if decode_batches is None:
                    decoded = [self.decode(z, library, batch, cat_covs, cont_covs)]
                else:
                    decoded = [
                        self.decode(z, library, torch.full_like(batch, code), cat_covs, cont_covs)
                        for code in decode_batches
                    ]
                key = "px_rate" if observed else "px_scale"
                values = torch.stack([out[key] for out in decoded]).mean(dim=0)
        finally:
            self.train(was_training)
        return values * scale
