"""Log-likelihoods of count distributions: negative binomial, zero-inflated NB and Poisson.

Plain torch functions returning per-element log-probabilities (same shape as
the broadcast inputs), written as scvi-tools writes them
(``scvi.distributions._negative_binomial``: ``log_nb_positive``,
``log_zinb_positive``) so the count model's loss matches scVI's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Added inside the logarithms of the NB and ZINB densities, as in scvi-tools.
EPS = 1e-8
#: Counts below this are zeros for the ZINB (scvi-tools compares with its ``eps``, 1e-8).
ZERO_BELOW = 1e-8


def log_nb_positive(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """Negative binomial log-probability with mean ``mu`` and inverse dispersion ``theta``.

    ``log p(x) = θ·log(θ/(θ+μ)) + x·log(μ/(θ+μ)) + lgamma(x+θ) − lgamma(θ) − lgamma(x+1)``,
    the NB with ``n = θ`` and success probability ``θ/(θ+μ)`` (variance
    ``μ + μ²/θ``). ``eps`` is added inside each logarithm, as in scvi-tools, so
    ``μ = 0`` stays finite; it shifts the value by at most ``x·log(1 + eps/μ)``,
    which matters only for means near ``eps`` (pass ``eps=0`` for the exact value).

    Parameters
    ----------
    x
        Observed counts (non-negative; need not be integers).
    mu
        Mean, broadcastable to ``x``.
    theta
        Inverse dispersion (> 0), broadcastable to ``x``: ``(n_genes,)`` for one
        value per gene or ``(n, n_genes)``.
    eps
        Numerical guard inside the logarithms.

    Returns
    -------
    Log-probabilities, the broadcast shape of the inputs.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([0.0, 3.0])
    >>> log_nb_positive(x, torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0]), eps=0.0)
    tensor([-1.0986, -2.3150])
    """
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )


def log_zinb_positive(
    x: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    pi_logits: torch.Tensor,
    eps: float = EPS,
) -> torch.Tensor:
    """Zero-inflated negative binomial log-probability; zero inflation given as logits.

    With ``π = sigmoid(pi_logits)`` the probability of an extra zero,
    ``p(0) = π + (1 − π)·NB(0)`` and ``p(x) = (1 − π)·NB(x)`` for ``x > 0``.
    In log space, with ``a = log NB(0) = θ·log(θ/(θ+μ))``:
    ``log p(x) = log NB(x) − softplus(π) + [x = 0]·softplus(π − a)``, the same
    value as scvi-tools' ``log_zinb_positive`` with one full-size branch less.
    Every term is a softplus of finite numbers, so it stays finite for any
    finite logits (``π`` close to 0 or 1).

    Parameters
    ----------
    x
        Observed counts (non-negative); counts below ``1e-8`` are zeros, as in scvi-tools.
    mu, theta
        Mean and inverse dispersion of the negative-binomial part, as in
        :func:`log_nb_positive`.
    pi_logits
        Logits of the zero-inflation probability, broadcastable to ``x``.
    eps
        Numerical guard inside the logarithms.

    Returns
    -------
    Log-probabilities, the broadcast shape of the inputs.

    Examples
    --------
    >>> import torch
    >>> x, mu, theta = torch.tensor([0.0, 3.0]), torch.tensor(2.0), torch.tensor(1.0)
    >>> no_inflation = log_zinb_positive(x, mu, theta, torch.tensor(-40.0), eps=0.0)
    >>> torch.allclose(no_inflation, log_nb_positive(x, mu, theta, eps=0.0))
    True
    """
    log_theta_mu = torch.log(theta + mu + eps)
    log_nb_zero = theta * (torch.log(theta + eps) - log_theta_mu)
    log_nb = (
        log_nb_zero
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )
    zero = (x < ZERO_BELOW).to(log_nb.dtype)
    return log_nb - F.softplus(pi_logits) + zero * F.softplus(pi_logits - log_nb_zero)


def log_poisson(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Poisson log-probability with rate ``mu``: ``x·log μ − μ − lgamma(x+1)``.

    The same value as ``torch.distributions.Poisson(mu).log_prob(x)`` (what
    scvi-tools uses): ``0·log 0`` is taken as 0, so ``μ = 0`` gives ``log p(0) = 0``.

    Parameters
    ----------
    x
        Observed counts (non-negative).
    mu
        Rate (>= 0), broadcastable to ``x``.

    Returns
    -------
    Log-probabilities, the broadcast shape of the inputs.

    Examples
    --------
    >>> import torch
    >>> log_poisson(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0]))
    tensor([-1.0000, -1.6931])
    """
    return torch.xlogy(x, mu) - mu - torch.lgamma(x + 1)
