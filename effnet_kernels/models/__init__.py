"""EfficientNet model definitions (plain PyTorch modules; no compiled ops needed)."""

from . import efficientnet
from .efficientnet import *  # noqa: F403  (the names in efficientnet.__all__)

__all__ = list(efficientnet.__all__)
