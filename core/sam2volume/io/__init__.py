"""Volume I/O with exact geometry: read any supported image, write images and labelmaps."""

from .readers import read_volume
from .writers import WRITE_SUFFIXES, write_labelmap, write_volume

__all__ = ["read_volume", "write_volume", "write_labelmap", "WRITE_SUFFIXES", "read_labelmap"]


def read_labelmap(path, reference=None, **kwargs):
    """Read a labelmap; with ``reference``, laid out on the reference's grid: the same physical lattice
    stored in another axis order or direction is reoriented exactly (no resampling); another grid fails."""
    import numpy as np

    from ..errors import InputError

    lab = read_volume(path, **kwargs)
    if lab.array.dtype.kind == "f":
        if not np.array_equal(lab.array, np.round(lab.array)):
            raise InputError(f"{lab.name}: not a labelmap (non-integer voxel values)")
        lab.array = lab.array.astype(np.int32)
    if reference is not None:
        lab = lab.on_grid_of(reference)
    return lab
