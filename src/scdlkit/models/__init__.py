"""Models: the :class:`ScdlModel` base class, the bundled models and the registry.

Bundled models (build them with :func:`create_model`):

=========================  ============================================
``autoencoder``            :class:`AutoEncoder`
``vae``                    :class:`VAE`
``denoising_autoencoder``  :class:`DenoisingAutoEncoder`
``transformer_ae``         :class:`TransformerAE`
``mlp_classifier``         :class:`MLPClassifier`
``count_vae``              :class:`CountVAE`
``count_scanvi``           :class:`CountSCANVI`
=========================  ============================================

The scDLKit 0.1.6 names still work: ``"ae"``, ``"dae"``, ``"classifier"`` and
``"transformer_autoencoder"`` are aliases (:data:`MODEL_ALIASES`) of
``"autoencoder"``, ``"denoising_autoencoder"``, ``"mlp_classifier"`` and
``"transformer_ae"``, and :class:`BaseModel` is :class:`ScdlModel`.
"""

from .autoencoder import AutoEncoder
from .base import BaseModel, ScdlModel
from .count_scanvi import CountSCANVI
from .count_vae import CountVAE
from .denoising import DenoisingAutoEncoder
from .mlp_classifier import MLPClassifier
from .registry import (
    MODEL_ALIASES,
    create_model,
    get_model_class,
    list_models,
    models_for_task,
    register_model,
)
from .transformer_ae import TransformerAE
from .vae import VAE

__all__ = [
    "MODEL_ALIASES",
    "VAE",
    "AutoEncoder",
    "BaseModel",
    "CountSCANVI",
    "CountVAE",
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
