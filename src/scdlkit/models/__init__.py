"""Models: the :class:`ScdlModel` base class, the bundled models and the registry.

Bundled models (build them with :func:`create_model`):

=========================  ============================================
``autoencoder``            :class:`AutoEncoder`
``vae``                    :class:`VAE`
``denoising_autoencoder``  :class:`DenoisingAutoEncoder`
``transformer_ae``         :class:`TransformerAE`
``mlp_classifier``         :class:`MLPClassifier`
=========================  ============================================
"""

from .autoencoder import AutoEncoder
from .base import ScdlModel
from .denoising import DenoisingAutoEncoder
from .mlp_classifier import MLPClassifier
from .registry import create_model, get_model_class, list_models, models_for_task, register_model
from .transformer_ae import TransformerAE
from .vae import VAE

__all__ = [
    "VAE",
    "AutoEncoder",
    "DenoisingAutoEncoder",
    "MLPClassifier",
    "ScdlModel",
    "TransformerAE",
    "create_model",
    "get_model_class",
    "list_models",
    "models_for_task",
    "register_model",
]
