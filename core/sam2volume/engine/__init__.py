"""SAM2 engine: typed config, in-memory slice frames, and the predictor with a feature cache.

Torch and SAM2 are imported only inside this package, and hydra stays inside ``predictor``.
"""

from .config import EngineConfig

__all__ = ["EngineConfig"]
