"""Write volumes and labelmaps: NIfTI, NRRD, MHA, 3D Slicer .seg.nrrd, DICOM-SEG.

Every writer goes through :func:`atomic_output`: the file appears complete or not at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, OutputError
from ..volume import Volume
from .atomic import atomic_output, os_reason_for_short_file, write_failed

#: single-file formats we write (two-file .nhdr/.mhd are read only: their data file
#: cannot be renamed atomically together with the header)
WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".seg.nrrd", ".dcm")

#: colours for segments that have none (Slicer's GenericAnatomyColors first entries)
DEFAULT_COLORS = [
    (0.502, 0.682, 0.502), (0.945, 0.839, 0.569), (0.694, 0.478, 0.396), (0.435, 0.722, 0.824),
    (0.847, 0.396, 0.310), (0.867, 0.510, 0.396), (0.565, 0.933, 0.565), (0.863, 0.961, 0.078),
    (0.780, 0.780, 0.188), (0.902, 0.863, 0.275), (0.980, 0.980, 0.824), (1.0, 0.627, 0.478),
]


def output_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".seg.nrrd"):
        return "seg.nrrd"
    if name.endswith(".dcm"):
        return "dicom-seg"
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return "itk"
    raise InputError(
        f"{path}: cannot write this file type; use one of {', '.join(WRITE_SUFFIXES)} "
        "(.dcm writes a DICOM-SEG and needs a DICOM reference series)"
    )


def names_sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``ct.nii.gz`` -> ``ct.nii.gz.labels.json``: the label names of a format that holds none, named after the
    whole file name so that ``ct.nii.gz`` and ``ct.nrrd`` in one folder keep one each."""
    path = Path(path)
    return path.with_name(path.name + ".labels.json")


def label_sidecar_paths(path: str | os.PathLike[str]) -> list[Path]:
    """The files :func:`write_names_sidecar` writes beside ``path`` (none for .seg.nrrd and DICOM-SEG)."""
    from .color_table import color_table_path

    return [names_sidecar_path(path), color_table_path(path)] if output_kind(Path(path)) == "itk" else []


def write_names_sidecar(path: str | os.PathLike[str], segments: Sequence[dict[str, Any]], **extra: Any) -> Path | None:
    """Beside a NIfTI/NRRD/MHA labelmap (formats that hold no names), ``PATH.labels.json`` naming each label value
    and ``PATH.labels.csv``, the same names and colours as a colour table 3D Slicer reads (see
    :mod:`.color_table`). Missing names and colours are filled as :func:`normalize_segments` fills them. Nothing
    is written for .seg.nrrd and DICOM-SEG, which carry the names themselves. Returns the ``.labels.json`` path."""
    from .atomic import write_json_atomic
    from .color_table import color_table_path, write_color_table

    if output_kind(Path(path)) != "itk":
        return None
    check_segment_names(path, [s["name"] for s in segments if s.get("name") is not None])
    filled = {s["label"]: s for s in normalize_segments([], segments)}
    labels = [{"value": int(s["label"]), "name": filled[int(s["label"])]["name"], "color": filled[int(s["label"])]["color"],
               **{k: s[k] for k in s if k not in ("label", "name", "color")}}
              for s in segments if int(s["label"]) != 0]
    side = names_sidecar_path(path)
    write_json_atomic(side, {"labelmap": Path(path).name, "labels": labels, "color_table": color_table_path(path).name, **extra})
    write_color_table(path, list(filled.values()))
    return side


def labelmap_dtype(array: np.ndarray) -> np.dtype:
    if array.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(array.min()), int(array.max())
    if lo < 0:
        raise InputError(f"labelmap has negative label {lo}; labels must be 0 (background) or positive integers")
    return np.dtype(np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.uint32)


def normalize_segments(labels: Sequence[int], segments: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """One entry per label present: ``{label, name, color}``, filling missing names/colours: ``Segment_N``,
    Slicer's colour for an organ of our vocabulary (:data:`.color_table.ORGAN_COLORS`), else a colour of
    :data:`DEFAULT_COLORS` chosen by the label value (the same label gets the same colour in every file)."""
    from .color_table import organ_color

    given = {int(s["label"]): s for s in (segments or [])}
    out = []
    for label in sorted(set(int(v) for v in labels) | set(given)):
        if label == 0:
            continue
        s = given.get(label, {})
        name = str(s.get("name") or f"Segment_{label}")
        color = s.get("color") or organ_color(name) or DEFAULT_COLORS[(label - 1) % len(DEFAULT_COLORS)]
        out.append({"label": label, "name": name, "color": [float(c) for c in color]})
    return out


def check_segment_names(path: str | os.PathLike[str], names: Sequence[str]) -> None:
    """Names must fit the output's header: one printable line; ASCII in .seg.nrrd (its writer, pynrrd,
    writes ASCII headers only). Called before any work and again at write time."""
    path = Path(path)
    for name in names:
        if any(not ch.isprintable() for ch in str(name)):
            raise InputError(f"segment name {str(name)!r} holds a line break or control character; give a one-line name")
        if output_kind(path) == "seg.nrrd" and not str(name).isascii():
            raise InputError(
                f"segment name {str(name)!r} has non-ASCII characters, which a .seg.nrrd header cannot hold here; "
                "use an ASCII name or write .nii.gz / DICOM-SEG"
            )


def write_volume(vol: Volume, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write an image or labelmap in a single-file ITK format (.nii, .nii.gz, .nrrd, .mha)."""
    path = Path(path)
    kind = output_kind(path)
    if kind != "itk":
        raise InputError(f"{path}: {kind} holds segmentations only; write it with write_labelmap()")
    import SimpleITK as sitk

    from .readers import volume_to_sitk

    image = volume_to_sitk(vol)
    with atomic_output(path, verify=lambda tmp: verify_written(tmp, path)) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as exc:  # ITK names no OS reason ("couldn't write"): find it, or keep ITK's words
            if tmp.exists():
                reason = os_reason_for_short_file(tmp)
                if reason is not None:
                    raise write_failed(path, reason) from None
            raise OutputError(f"cannot write {path}: {_itk_detail(exc)}; nothing was written") from None
    return path


def _itk_detail(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return next((line for line in reversed(lines) if "Reason" in line or "ERROR" in line), lines[-1] if lines else "")[:200]


def verify_written(tmp: Path, final: Path) -> None:
    """Read back the header of a file just written: it must hold all the data it declares. ITK's NIfTI writer
    does not report a short write (a full disk), so the file is checked here, before it is renamed."""
    from .header_checks import check_image_file

    try:
        check_image_file(tmp, written=True)
    except InputError as exc:
        reason = os_reason_for_short_file(tmp)
        if reason is not None:
            raise write_failed(final, reason) from None
        raise OutputError(f"cannot write {final}: the file came out incomplete ({exc}); nothing was written") from None


def write_labelmap(
    labelmap: Volume,
    path: str | os.PathLike[str],
    *,
    segments: Sequence[dict[str, Any]] | None = None,
    reference: Volume | None = None,
) -> Path:
    """Write a labelmap with its geometry (and, for .seg.nrrd / DICOM-SEG, names and colours).

    ``segments``: ``[{"label": 1, "name": "liver", "color": [r, g, b]}, ...]`` (0..1 colours);
    defaults to ``labelmap.meta['segments']``. ``reference`` (the image the labels belong to)
    is checked to share the labelmap's grid, and is required for DICOM-SEG.
    """
    path = Path(path)
    kind = output_kind(path)
    array = np.asarray(labelmap.array)
    if array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            raise InputError(f"{labelmap.name}: labelmap has non-integer values; round or threshold it first")
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    array = array.astype(labelmap_dtype(array), copy=False)
    if reference is not None:
        reference.check_same_grid(labelmap)
    segs = normalize_segments(np.unique(array).tolist(), segments if segments is not None else labelmap.meta.get("segments"))
    check_segment_names(path, [s["name"] for s in segs])
    lab = labelmap.with_array(array)
    if kind == "itk":
        return write_volume(lab, path)
    if kind == "seg.nrrd":
        return _write_seg_nrrd(lab, path, segs)
    from .dicom_seg import write_dicom_seg

    return write_dicom_seg(lab, path, segs, reference if reference is not None else labelmap)


def _write_seg_nrrd(lab: Volume, path: Path, segs: list[dict[str, Any]]) -> Path:
    import slicerio

    segmentation = {
        "voxels": lab.array,
        "ijkToLPS": lab.ijk_to_lps,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": [],
    }
    for n, s in enumerate(segs):
        idx = np.nonzero(lab.array == s["label"])
        extent = [int(v) for axis in idx for v in (axis.min(), axis.max())] if idx[0].size else [0, -1, 0, -1, 0, -1]
        segmentation["segments"].append(
            {
                "id": f"Segment_{s['label']}",
                "name": s["name"],
                "color": s["color"],
                "labelValue": s["label"],
                "layer": 0,
                "extent": extent,
            }
        )
    with atomic_output(path, verify=lambda tmp: verify_written(tmp, path)) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    return path
