"""Read NIfTI, NRRD, MHA/MHD, DICOM (series folder or multi-frame file) and .seg.nrrd.

Pixel data and geometry come from SimpleITK (ITK's readers, GDCM for DICOM); DICOM
headers are grouped, sorted and checked with pydicom first so that series choice and
uneven spacing are explicit.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..volume import Volume
from . import dicom_series, header_checks

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
SEG_SUFFIXES = (".seg.nrrd",)
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def _suffix_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(SEG_SUFFIXES):
        return "seg.nrrd"
    if name.endswith(IMAGE_SUFFIXES):
        return "itk"
    if name.endswith(DICOM_SUFFIXES) or dicom_series.is_dicom_file(path):
        return "dicom"
    return "unknown"


def read_volume(
    path: str | os.PathLike[str],
    *,
    series_uid: str | None = None,
    allow_uneven_spacing: bool = False,
    allow_non_finite: bool = False,
    max_voxels: int | None = None,
) -> Volume:
    """Read a 3D image (or labelmap) with exact geometry.

    ``path`` may be a NIfTI/NRRD/MHA/MHD file, a ``.seg.nrrd`` segmentation, a folder of
    DICOM files (one series, or choose with ``series_uid``) or a multi-frame DICOM file.

    Before any voxel is read, a NIfTI/NRRD/MetaImage header is checked (see :mod:`.header_checks`): a detached
    data file must lie in the header's folder, the file must hold the data its header declares, and the declared
    voxels must not exceed ``max_voxels`` (default ``$SAM2VOLUME_MAX_VOXELS``, else 2**31).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder; check the path (relative paths start at {Path.cwd()})")
    if p.is_dir():
        return dicom_series.read_dicom_folder(p, series_uid=series_uid, allow_uneven_spacing=allow_uneven_spacing)
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: file is not readable (permission denied); fix its permissions")
    kind = _suffix_kind(p)
    if kind == "seg.nrrd":
        return read_seg_nrrd(p, max_voxels=max_voxels)
    if kind == "dicom":
        return dicom_series.read_dicom_file(p)
    if kind == "unknown":
        raise InputError(
            f"{p}: unknown file type; supported are {', '.join(IMAGE_SUFFIXES + SEG_SUFFIXES)}, "
            "DICOM files and DICOM series folders"
        )
    header_checks.check_image_file(p, max_voxels)
    if p.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_spacing(p)
    image = _sitk_read(p)
    vol = volume_from_sitk(image, source=str(p))
    if not allow_non_finite:
        check_finite(vol)
        if p.name.lower().endswith((".nii", ".nii.gz")) and vol.array.dtype.kind == "f":
            _check_nifti_finite(p, vol)
    vol.meta.setdefault("modality", guess_modality(vol.array))
    return vol


def _check_nifti_spacing(p: Path) -> None:
    """Refuse a NIfTI header whose voxel sizes (pixdim[1..3]) are zero, negative or not finite.

    Readers 'repair' these differently (nibabel and ITK read 0 as 1 mm; a negative pixdim flips one
    reader's axes but not the other's), so any output would silently have a made-up or mirrored geometry.
    """
    import nibabel as nib

    opener = gzip.open if p.name.lower().endswith(".gz") else open
    try:
        with opener(p, "rb") as fh:
            raw = fh.read(348)
        header = nib.Nifti1Header(raw, check=False) if len(raw) == 348 else None
    except Exception:  # not a NIfTI-1 header (NIfTI-2, garbage): leave it to ITK's reader and its errors
        return
    if header is None or header.sizeof_hdr != 348:
        return
    ndim = int(header["dim"][0])
    pixdim = [float(v) for v in header["pixdim"][1 : 1 + min(max(ndim, 0), 3)]]
    bad = [(n + 1, v) for n, v in enumerate(pixdim) if not np.isfinite(v) or v <= 0]
    if bad:
        listed = ", ".join(f"pixdim[{n}] = {v:g}" for n, v in bad)
        raise InputError(
            f"{p}: the NIfTI header gives voxel sizes {listed} (they must be positive mm); readers guess "
            "differently here (1 mm, or a mirrored axis), so it is refused: fix the header, e.g. with nibabel "
            "(img.header.set_zooms(...)) from the scanner's true spacing"
        )


def _sitk_read(p: Path) -> Any:
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(p))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line for line in first if "ERROR" in line or "Exception" in line), first[-1] if first else "")
        raise InputError(f"{p}: cannot read the file, it is corrupt, truncated or not an image ({detail.strip()[:200]})") from None


def volume_from_sitk(image: Any, source: str = "volume", meta: dict[str, Any] | None = None) -> Volume:
    """Convert a SimpleITK image to a :class:`Volume`, rejecting 2D, 4D and multi-channel data."""
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 2 or (dim == 3 and 1 in size):
        raise InputError(
            f"{source}: this is a 2D image (size {size}); a 3D volume is needed, "
            "e.g. the folder of a whole DICOM series or a 3D NIfTI/NRRD file"
        )
    if dim == 4 and size[3] == 1:
        import SimpleITK as sitk

        image = sitk.Extract(image, list(size[:3]) + [0], [0, 0, 0, 0])  # one time point: the 3D volume it holds
        meta = dict(meta or {}, notes=["4D file with a single time point: read as its 3D volume"])
        dim, size = 3, image.GetSize()
    if dim == 4:
        raise InputError(
            f"{source}: this is a 4D image (size {size}); pick one 3D volume first "
            "(e.g. one time point or echo) and save it as its own file"
        )
    if dim != 3:
        raise InputError(f"{source}: {dim}D images are not supported; a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{source}: multi-channel image ({image.GetNumberOfComponentsPerPixel()} components per voxel); "
            "save one channel as a scalar volume first"
        )
    if 0 in size:
        raise InputError(f"{source}: volume has a zero-size axis (size {size})")
    import SimpleITK as sitk

    spacing = image.GetSpacing()
    if not all(np.isfinite(v) and v > 0 for v in spacing):
        raise InputError(f"{source}: voxel spacing {tuple(spacing)} must be positive; fix the file's header")
    array = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0).copy()
    m = {"source": source}
    m.update(meta or {})
    return Volume(
        array,
        np.array(image.GetSpacing(), dtype=np.float64),
        np.array(image.GetOrigin(), dtype=np.float64),
        np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3),
        m,
    )


def volume_to_sitk(vol: Volume) -> Any:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(vol.array.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in vol.spacing])
    image.SetOrigin([float(s) for s in vol.origin])
    image.SetDirection([float(s) for s in vol.direction.reshape(-1)])
    return image


def check_finite(vol: Volume) -> None:
    if vol.array.dtype.kind != "f":
        return
    bad = int(np.count_nonzero(~np.isfinite(vol.array)))
    if bad:
        raise InputError(
            f"{vol.name}: {bad} voxels are NaN or infinite; replace them (e.g. numpy.nan_to_num) "
            "or pass allow_non_finite=True to read anyway"
        )


def _check_nifti_finite(p: Path, vol: Volume) -> None:
    """ITK's NIfTI reader turns NaN into 0 silently; nibabel shows what the file really holds."""
    import nibabel as nib

    raw = np.asanyarray(nib.load(str(p)).dataobj)
    check_finite(Volume(raw.reshape(vol.shape), meta={"source": str(p)}))


def guess_modality(array: np.ndarray) -> str:
    """A hint only (NIfTI/NRRD carry no modality): integer data reaching air HU looks like CT."""
    if array.size == 0:
        return "unknown"
    lo = float(array.min())
    return "CT" if lo <= -500 and array.dtype.kind in "iuf" else "unknown"


def read_seg_nrrd(p: Path, max_voxels: int | None = None) -> Volume:
    """Read a 3D Slicer ``.seg.nrrd`` as a labelmap; segment names/colours go to ``meta['segments']``."""
    import slicerio

    header_checks.check_nrrd(p, header_checks.max_voxels_limit(max_voxels))

    try:
        seg = slicerio.read_segmentation(str(p))
    except Exception as exc:  # slicerio/pynrrd raise many types
        raise InputError(f"{p}: cannot read this .seg.nrrd ({exc}); export the segmentation from Slicer again") from None
    segments = seg.get("segments", [])
    voxels = seg["voxels"]
    if voxels.ndim == 4 or len({s.get("layer", 0) for s in segments}) > 1:
        pairs = [(s["name"], i + 1) for i, s in enumerate(segments)]
        seg = slicerio.extract_segments(seg, pairs)
        voxels = seg["voxels"]
        segments = seg["segments"]
    ijk_to_lps = np.asarray(seg["ijkToLPS"], dtype=np.float64)
    lin = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    meta = {
        "source": str(p),
        "modality": "SEG",
        "segments": [
            {"label": int(s["labelValue"]), "name": str(s.get("name", s.get("id"))), "color": list(s.get("color", [1, 1, 0]))}
            for s in segments
        ],
    }
    return Volume(np.asarray(voxels), spacing, ijk_to_lps[:3, 3], lin / spacing[None, :], meta)
