"""DICOM: a series folder (sorted by position, checked for even spacing) or a multi-frame file.

pydicom reads the headers (grouping by SeriesInstanceUID, sorting along the slice normal,
spacing checks); SimpleITK/GDCM decodes the pixels and applies the modality LUT
(RescaleSlope/Intercept) in floating point, so unsigned data never overflows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, UnevenSpacingError
from ..volume import Volume

#: relative tolerance on slice gaps before a series counts as unevenly spaced
SPACING_TOLERANCE = 0.01


def is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


@dataclass
class _Header:
    path: Path
    ds: Any


def _scan(folder: Path) -> list[_Header]:
    import pydicom

    headers = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        if f.name.startswith(".") or f.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=not f.suffix == "")
        except Exception:
            continue
        if "Rows" in ds and "SeriesInstanceUID" in ds:
            headers.append(_Header(f, ds))
    return headers


def _group(headers: list[_Header]) -> dict[str, list[_Header]]:
    """The headers by SeriesInstanceUID, in the order their first files sort."""
    series: dict[str, list[_Header]] = {}
    for h in headers:
        series.setdefault(str(h.ds.SeriesInstanceUID), []).append(h)
    return series


@dataclass(frozen=True)
class SeriesSummary:
    """One series of a DICOM folder as :func:`list_series` and the "holds several series" message describe it."""

    uid: str
    modality: str
    files: int
    description: str

    def line(self) -> str:
        """``UID  (modality, N files, description)``, as the folder's series are listed in error messages."""
        shown = self.uid if self.uid.strip() else '""  (blank SeriesInstanceUID: choose it with --series-uid "")'
        return f"{shown}  ({self.modality}, {self.files} files, {self.description})"


def _summary(uid: str, items: list[_Header]) -> SeriesSummary:
    ds = items[0].ds
    desc = str(getattr(ds, "SeriesDescription", "")).strip() or "no description"
    return SeriesSummary(uid, str(getattr(ds, "Modality", "?")), len(items), desc)


def _describe(uid: str, items: list[_Header]) -> str:
    return "  " + _summary(uid, items).line()


def list_series(folder: str | Path) -> list[SeriesSummary]:
    """The DICOM image series of ``folder`` (its files and sub-folders, as :func:`read_dicom_folder` scans them),
    in the order ``read_dicom_folder`` lists them; empty when it holds none. Headers only: no pixel is read."""
    return [_summary(uid, items) for uid, items in _group(_scan(Path(folder))).items()]


def check_grey(ds, where: Path) -> None:
    """Colour DICOM would silently become grey: refuse it, naming what it is."""
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        raise InputError(
            f"{where}: a colour DICOM image ({photometric}, {samples} samples per pixel), not a CT/MR grey-value volume; "
            "export the original grey-scale series"
        )


def read_dicom_folder(folder: Path, *, series_uid: str | None = None, allow_uneven_spacing: bool = False) -> Volume:
    headers = _scan(folder)
    if not headers:
        raise InputError(f"{folder}: the folder holds no DICOM images; point to the folder of one DICOM series")
    series = _group(headers)
    if series_uid is None:
        if len(series) > 1:
            listing = "\n".join(_describe(uid, items) for uid, items in series.items())
            raise InputError(
                f"{folder}: the folder holds {len(series)} DICOM series; choose one with "
                f"series_uid= (CLI: --series-uid):\n{listing}"
            )
        series_uid = next(iter(series))
    if series_uid not in series:
        listing = "\n".join(_describe(uid, items) for uid, items in series.items())
        raise InputError(f"{folder}: no series with SeriesInstanceUID {series_uid}; the folder holds:\n{listing}")
    items = series[series_uid]
    if len(items) == 1:
        return read_dicom_file(items[0].path)
    return _read_series(folder, items, allow_uneven_spacing)


def _read_series(folder: Path, items: list[_Header], allow_uneven_spacing: bool) -> Volume:
    check_grey(items[0].ds, folder)
    for h in items:
        if "ImagePositionPatient" not in h.ds or "ImageOrientationPatient" not in h.ds:
            raise InputError(f"{h.path}: DICOM image has no ImagePositionPatient/ImageOrientationPatient; cannot place it in 3D")
    iop = np.array(items[0].ds.ImageOrientationPatient, dtype=np.float64)
    for h in items:
        if not np.allclose(np.array(h.ds.ImageOrientationPatient, dtype=float), iop, atol=1e-4):
            raise InputError(f"{folder}: slices of the series have different orientations ({h.path.name}); this is not one volume")
        if (h.ds.Rows, h.ds.Columns) != (items[0].ds.Rows, items[0].ds.Columns):
            raise InputError(f"{folder}: slices of the series have different sizes ({h.path.name}); this is not one volume")
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([np.dot(np.array(h.ds.ImagePositionPatient, dtype=float), normal) for h in items])
    order = np.argsort(positions, kind="stable")
    items = [items[i] for i in order]
    positions = positions[order]
    gaps = np.diff(positions)
    if np.any(gaps < 1e-4):
        dup = items[int(np.argmin(gaps)) + 1].path.name
        raise InputError(f"{folder}: two slices share one position (e.g. {dup}); the folder mixes acquisitions, keep one")
    mean_gap = float(gaps.mean())
    if np.max(np.abs(gaps - np.median(gaps))) > SPACING_TOLERANCE * np.median(gaps):
        msg = (
            f"{folder}: slices are unevenly spaced (gaps {np.round(np.unique(np.round(gaps, 3)), 3).tolist()} mm)"
        )
        if not allow_uneven_spacing:
            raise UnevenSpacingError(
                msg + "; resample the series to even spacing first, or pass allow_uneven_spacing=True "
                "(CLI: --allow-uneven-spacing) to use the mean gap "
                f"{mean_gap:.4f} mm, which misplaces slices"
            )
        warnings.warn(msg + f"; using the mean gap {mean_gap:.4f} mm as slice spacing, slices are misplaced", stacklevel=3)

    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(h.path) for h in items])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot decode the DICOM pixel data ({str(exc).strip().splitlines()[-1][:200]})") from None
    array = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)
    ps = [float(v) for v in items[0].ds.PixelSpacing]  # (between rows, between columns)
    ds0 = items[0].ds
    meta = {
        "source": str(folder),
        "modality": str(getattr(ds0, "Modality", "unknown")),
        "series_uid": str(ds0.SeriesInstanceUID),
        "dicom_files": [str(h.path) for h in items],
    }
    return Volume(
        _to_compact_dtype(array),
        np.array([ps[1], ps[0], mean_gap]),
        np.array(ds0.ImagePositionPatient, dtype=np.float64),
        np.stack([row_dir, col_dir, normal], axis=1),
        meta,
    )


def _to_compact_dtype(array: np.ndarray) -> np.ndarray:
    """Float HU from the modality LUT -> the smallest signed integer type that holds it exactly."""
    if array.size and np.all(np.isfinite(array)) and np.array_equal(array, np.round(array)):
        lo, hi = float(array.min()), float(array.max())
        for dt in (np.int16, np.int32):
            info = np.iinfo(dt)
            if info.min <= lo and hi <= info.max:
                return array.astype(dt)
    return np.ascontiguousarray(array, dtype=np.float32)


def read_dicom_file(path: Path) -> Volume:
    """One DICOM file: a multi-frame volume is read; a single 2D image is refused."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise InputError(f"{path}: not a readable DICOM file ({exc})") from None
    if str(getattr(ds, "Modality", "")) == "SEG":
        from .dicom_seg import read_dicom_seg

        return read_dicom_seg(path)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames <= 1:
        raise InputError(
            f"{path}: this is a single 2D DICOM image; a 3D volume is needed: pass the folder that holds "
            "the whole series instead of one file"
        )
    check_grey(ds, path)
    placed = "ImagePositionPatient" in ds or "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    if not placed:
        raise InputError(
            f"{path}: a multi-frame DICOM without patient geometry (no ImagePositionPatient or functional groups), "
            "e.g. a cine loop; its frames cannot be placed in 3D"
        )
    import SimpleITK as sitk

    from .readers import volume_from_sitk

    try:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot decode the multi-frame DICOM ({str(exc).strip().splitlines()[-1][:200]})") from None
    vol = volume_from_sitk(image, source=str(path), meta={"modality": str(getattr(ds, "Modality", "unknown"))})
    vol.array = _to_compact_dtype(vol.array)
    return vol
