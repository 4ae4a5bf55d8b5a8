"""Data layer: AnnData/MuData field access, splits, preprocessing and minibatch loading."""

from .encoders import CategoryEncoder
from .fields import Fields, get_obs_column, resolve_fields, resolve_target
from .loaders import MinibatchLoader
from .prepare import PreparedData, prepare_data
from .query import transform_adata
from .spec import DataSpec
from .split_data import SplitData
from .transform import FeatureTransform

__all__ = [
    "CategoryEncoder",
    "DataSpec",
    "FeatureTransform",
    "Fields",
    "MinibatchLoader",
    "PreparedData",
    "SplitData",
    "get_obs_column",
    "prepare_data",
    "resolve_fields",
    "resolve_target",
    "transform_adata",
]
