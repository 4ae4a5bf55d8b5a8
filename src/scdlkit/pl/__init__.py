"""Plots of scdlkit runs stored in AnnData/MuData: loss curves, confusion matrices, reconstructions.

Every function takes the AnnData (or MuData) first, keyword-only options after,
and follows scanpy's conventions: ``show=False`` returns the Axes,
``return_fig=True`` the Figure, ``save=`` writes the figure to a file.
Embeddings of the latent space are plotted with scanpy itself, for example
``sc.pl.embedding(adata, basis="scdlkit")``.
"""

from ._compare import compare
from ._confusion import confusion
from ._history import history
from ._reconstruction import reconstruction

__all__ = ["compare", "confusion", "history", "reconstruction"]
