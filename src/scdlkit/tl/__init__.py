"""Tools: train models on AnnData/MuData and write their outputs back (scanpy's ``tl``)."""

from ._embed_scgpt import embed_scgpt
from ._evaluate import evaluate
from ._fit import fit
from ._join import join_latents
from ._map_query import map_query
from ._predict import predict

__all__ = ["embed_scgpt", "evaluate", "fit", "join_latents", "map_query", "predict"]
