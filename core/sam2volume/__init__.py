"""sam2volume: segment 3D CT/MRI volumes with SAM2 by treating slices as video frames.

Importing this package never imports torch; the engine loads it on first use. The readers and
writers (SimpleITK, nibabel, pydicom) load on first use too, so ``import sam2volume.client``
needs numpy and the standard library only.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import InputError, ModelError, Sam2VolumeError  # noqa: E402
from .volume import Volume  # noqa: E402
from .windowing import CT_PRESETS, Window, choose_window  # noqa: E402

_IO_NAMES = ("read_volume", "read_labelmap", "write_volume", "write_labelmap")


def __getattr__(name: str):
    if name in _IO_NAMES:
        from . import io

        return getattr(io, name)
    raise AttributeError(f"module 'sam2volume' has no attribute {name!r}")


__all__ = [
    "__version__",
    "Volume",
    "read_volume",
    "read_labelmap",
    "write_volume",
    "write_labelmap",
    "Window",
    "choose_window",
    "CT_PRESETS",
    "Sam2VolumeError",
    "InputError",
    "ModelError",
]
