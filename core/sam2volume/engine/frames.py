"""SAM2 input frames made from volume slices in memory, one at a time, on demand.

Each frame: window to [0, 1] (float64 arithmetic, then float32), resize to the model's square
input when needed (bilinear, antialiased), three identical channels, ImageNet mean/std, exactly
as SAM2's own loader normalises decoded JPEG frames. Nothing is written to disk and no frame is
kept: memory does not grow with the number of slices.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..slicing import SliceAxis
from ..windowing import Window

IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)


class SliceFrames:
    """Sequence-like view (``len``, ``[idx]``) that SAM2's predictor uses as ``images``."""

    def __init__(self, array: np.ndarray, axis: SliceAxis, window: Window, image_size: int):
        self.array = array
        self.axis = axis
        self.window = window
        self.image_size = int(image_size)
        self.video_height, self.video_width = axis.frame_shape
        self.mean = torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(IMG_STD, dtype=torch.float32)[:, None, None]
        self.frames_made = 0

    def __len__(self) -> int:
        return self.axis.num_slices

    def windowed(self, idx: int) -> np.ndarray:
        """The slice windowed to [0, 1], float32, in frame layout (rows, cols)."""
        raw = self.axis.frame(self.array, idx).astype(np.float64)
        lo, hi = self.window.low, self.window.high
        out = (raw - lo) / (hi - lo)
        np.clip(out, 0.0, 1.0, out=out)
        return out.astype(np.float32)

    def __getitem__(self, idx: int) -> torch.Tensor:
        if not 0 <= idx < len(self):
            raise IndexError(idx)
        self.frames_made += 1
        img = torch.from_numpy(self.windowed(idx))[None, None]
        if img.shape[-2:] != (self.image_size, self.image_size):
            img = F.interpolate(img, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True)
        img = img[0].expand(3, -1, -1).clone()
        img -= self.mean
        img /= self.std
        return img
