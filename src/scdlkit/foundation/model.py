"""The scGPT encoder (``ScGPTBackbone``) and the inference-only embedding model (``ScGPTModel``).

Batches reach models through the :class:`~scdlkit.Trainer` as one 2-D tensor
``x`` (see :func:`pack_tokens`): the gene ids and the binned values of the
token sequence side by side, ``x = [gene_ids | values]`` of shape
``(n_cells, 2 * seq_len)``. Gene ids are small integers and exact in float32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import ScdlModel
from .config import ScGPTConfig
from .identity import CheckpointIdentity, LoadReport
from .layers import ContinuousValueEncoder, GeneEncoder, TransformerEncoder

if TYPE_CHECKING:
    from .vocab import GeneVocab


def pack_tokens(gene_ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Put gene ids and values side by side in one float32 tensor ``(n, 2 * seq_len)``.

    Examples
    --------
    >>> x = pack_tokens(torch.tensor([[5, 1]]), torch.tensor([[-2.0, 3.0]]))
    >>> x.tolist()
    [[5.0, 1.0, -2.0, 3.0]]
    """
    return torch.cat([gene_ids.to(torch.float32), values.to(torch.float32)], dim=1)


def unpack_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a tensor made by :func:`pack_tokens` into ``(gene_ids, values)``.

    Raises
    ------
    ValueError
        ``x`` is not 2-D with an even number of columns.
    """
    if x.ndim != 2 or x.shape[1] % 2 or x.shape[1] < 2:
        msg = (
            f"scGPT models take x = [gene_ids | values] of shape (n_cells, 2 * seq_len) as built by "
            f"scdlkit.foundation.TokenLoader, got shape {tuple(x.shape)}."
        )
        raise ValueError(msg)
    length = x.shape[1] // 2
    return x[:, :length].round().long(), x[:, length:].float()


class ScGPTBackbone(nn.Module):
    """scGPT's encoder: gene embedding + value embedding → post-norm transformer.

    Parameter names follow the official checkpoints (``encoder.*``,
    ``value_encoder.*``, ``transformer_encoder.layers.N.*``) except that the
    packed attention projection is split into ``self_attn.q_proj``, ``k_proj``
    and ``v_proj``.

    Parameters
    ----------
    config
        Architecture settings.
    num_tokens
        Vocabulary size (rows of the gene embedding).
    pad_id
        Id of the padding token.

    Examples
    --------
    >>> config = ScGPTConfig(embsize=8, nheads=2, d_hid=16, nlayers=1)
    >>> backbone = ScGPTBackbone(config, num_tokens=10, pad_id=7).eval()
    >>> ids = torch.tensor([[8, 0, 1, 7]])
    >>> values = torch.tensor([[-2.0, 3.0, 1.0, -2.0]])
    >>> backbone.cell_embedding(ids, values, ids == 7).shape
    torch.Size([1, 8])
    """

    def __init__(self, config: ScGPTConfig, num_tokens: int, pad_id: int) -> None:
        super().__init__()
        self.pad_id = int(pad_id)
        self.encoder = GeneEncoder(num_tokens, config.embsize, self.pad_id)
        self.value_encoder = ContinuousValueEncoder(config.embsize, config.dropout)
        self.transformer_encoder = TransformerEncoder(
            config.nlayers, config.embsize, config.nheads, config.d_hid, config.dropout
        )

    def forward(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states ``(n, seq_len, embsize)``; ``padding_mask`` is ``True`` at padding."""
        if padding_mask is None:
            padding_mask = gene_ids == self.pad_id
        x = self.encoder(gene_ids) + self.value_encoder(values)
        return self.transformer_encoder(x, padding_mask)

    def cell_embedding(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the hidden state at position 0 (``<cls>``), not normalised."""
        return self(gene_ids, values, padding_mask)[:, 0]

    def embed_packed(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`cell_embedding` of a tensor made by :func:`pack_tokens`."""
        gene_ids, values = unpack_tokens(x)
        return self.cell_embedding(gene_ids, values, gene_ids == self.pad_id)


class ScGPTModel(ScdlModel):
    """A loaded scGPT checkpoint as an inference-only scdlkit model (frozen cell embeddings).

    Created by :func:`~scdlkit.foundation.load_scgpt`. ``forward(x)`` takes the
    packed tokens of a minibatch and returns ``latent`` (the L2-normalised
    ``<cls>`` embedding) and ``cell_embedding`` (the same, not normalised). Use
    it with ``Trainer(model, EmbeddingTask()).predict_dataset(loader)``; it cannot be
    trained (``supports_training=False``): fine-tune through
    :func:`~scdlkit.foundation.adapt_annotation` instead.

    Attributes
    ----------
    backbone
        The :class:`ScGPTBackbone` (all parameters frozen).
    vocab
        The checkpoint's :class:`~scdlkit.foundation.GeneVocab`.
    scgpt_config
        The :class:`~scdlkit.foundation.ScGPTConfig`.
    identity
        Path and hashes of the checkpoint files.
    load_report
        What was loaded and what was ignored.
    """

    supported_tasks: ClassVar[tuple[str, ...]] = ("embedding",)
    supports_training: ClassVar[bool] = False
    description: ClassVar[str] = "Frozen scGPT cell embeddings (inference only)."

    def __init__(
        self,
        backbone: ScGPTBackbone,
        *,
        vocab: GeneVocab,
        scgpt_config: ScGPTConfig,
        identity: CheckpointIdentity | None = None,
        load_report: LoadReport | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.vocab = vocab
        self.scgpt_config = scgpt_config
        self.identity = identity
        self.load_report = load_report
        self.requires_grad_(False)
        self.eval()

    def __repr__(self) -> str:
        config = self.scgpt_config
        where = f", path={self.identity.path!r}" if self.identity is not None else ""
        return (
            f"ScGPTModel(embsize={config.embsize}, nlayers={config.nlayers}, nheads={config.nheads}, "
            f"vocab={len(self.vocab)}{where})"
        )

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able description (checkpoint path and hashes, architecture)."""
        kwargs: dict[str, Any] = {"scgpt_config": self.scgpt_config.to_dict()}
        if self.identity is not None:
            kwargs["checkpoint"] = self.identity.to_dict()
        return {"name": None, "kwargs": kwargs}

    @property
    def embsize(self) -> int:
        """Width of the cell embedding."""
        return self.scgpt_config.embsize

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``latent`` (unit-norm ``<cls>`` embedding) and ``cell_embedding`` (raw)."""
        cls = self.backbone.embed_packed(x)
        return {"latent": F.normalize(cls, dim=1), "cell_embedding": cls}
