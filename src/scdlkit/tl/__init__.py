"""Tools: train models on AnnData/MuData and write their outputs back (scanpy's ``tl``)."""

from ._embed_scgpt import embed_scgpt
from ._evaluate import evaluate
from ._fit import fit
from ._predict import predict

__all__ = ["embed_scgpt", "evaluate", "fit", "predict"]
