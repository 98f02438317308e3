"""EfficientNet model definitions (plain PyTorch modules; no compiled ops needed)."""

from . import efficientnet
from .efficientnet import *  # noqa: F403  (the names in efficientnet.__all__)
from .features import EfficientNetFeatures, FeatureInfo

__all__ = [*efficientnet.__all__, "EfficientNetFeatures", "FeatureInfo"]
