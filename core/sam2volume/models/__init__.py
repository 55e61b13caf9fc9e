"""Model registry and weights manager. Importing this package never imports torch."""

from .registry import MODELS, ModelSpec, get_model, list_models
from .weights import WeightsManager, cache_dir

__all__ = ["MODELS", "ModelSpec", "get_model", "list_models", "WeightsManager", "cache_dir"]
