"""One typed config for model, image size, dtype, device and offload (no torch import)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InputError
from ..models.registry import DEFAULT_MODEL, ModelSpec, custom_model, get_model

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")
MAX_SLICES = 4096  # upper bound for encode_batch / encode_ahead (the feature-cache budget bounds them too)


@dataclass
class EngineConfig:
    """How to build and run SAM2.

    * ``model``: a registry name (``sam2volume models``), or ``checkpoint`` + ``config_file`` for a
      custom model.
    * ``image_size``: model input size; defaults to the model's own (1024 for SAM2, 512 for MedSAM2).
    * ``device``: ``auto`` picks CUDA, then Apple MPS, then CPU.
    * ``dtype``: ``auto`` follows the dtype policy of :func:`sam2volume.engine.predictor.resolve_dtype`
      (bfloat16 autocast where the hardware computes bf16 natively: CUDA compute capability 8.0 and
      newer, CPUs with AVX512-BF16 or AMX; float16 on older CUDA GPUs; float32 otherwise).
    * ``offload_state_to_cpu``: keep SAM2's memory bank on the CPU (saves GPU memory).
    * ``feature_cache_mb``: budget for cached image-encoder features, so corrections re-propagate
      without re-encoding. ``random_weights``: build without a checkpoint (tests, benchmarks).
    * ``encode_batch``: slices the image encoder takes in one forward pass during propagation (the
      next ones in the propagation's direction, within ``feature_cache_mb``); 0 picks the device's
      measured default (:func:`sam2volume.engine.predictor.resolve_encode_batch`).
    * ``encode_ahead``: after each prompt, encode up to this many slices around the prompted one in
      the background while the user goes on prompting (within ``feature_cache_mb``, never evicting);
      0 (default) turns it off. Interactive front-ends (the Slicer module) turn it on.
    * ``compile``: ``torch.compile`` the image encoder, memory attention, memory encoder and SAM heads
      as upstream's ``vos_optimized`` does (slow first calls; see the README for its warm-up cost).
    """

    model: str = DEFAULT_MODEL
    checkpoint: str | None = None
    config_file: str | None = None
    image_size: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    offload_state_to_cpu: bool = False
    feature_cache_mb: float = 2048.0
    random_weights: bool = False
    seed: int = 0
    encode_batch: int = 0
    encode_ahead: int = 0
    compile: bool = False
    extra_overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InputError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.device.split(":")[0] not in DEVICES:
            raise InputError(f"device {self.device!r} is not one of {', '.join(DEVICES)} (or cuda:N)")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 64 or self.image_size % 32):
            raise InputError(f"image_size {self.image_size} must be a multiple of 32 and at least 64")
        if not isinstance(self.feature_cache_mb, (int, float)) or not math.isfinite(self.feature_cache_mb) or self.feature_cache_mb < 0:
            raise InputError(f"feature_cache_mb must be a finite number >= 0, got {self.feature_cache_mb}")

        for name in ("encode_batch", "encode_ahead"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SLICES:
                raise InputError(f"{name} must be a whole number from 0 to {MAX_SLICES}, got {value!r}")
        if not isinstance(self.compile, bool):
            raise InputError(f"compile must be true or false, got {self.compile!r}")

    def spec(self) -> ModelSpec:
        if self.config_file is not None:
            if self.checkpoint is None and not self.random_weights:
                raise InputError("a custom config_file needs checkpoint= (or random_weights=True)")
            return custom_model(self.checkpoint or "random.pt", self.config_file, self.image_size or 1024)
        return get_model(self.model)

    @property
    def resolved_image_size(self) -> int:
        return self.image_size or self.spec().image_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
