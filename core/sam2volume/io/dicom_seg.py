"""DICOM-SEG (binary segmentation objects) through highdicom: write referencing the
source series, read back as a labelmap with its geometry."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .atomic import atomic_output


def read_dicom_seg(path: Path) -> Volume:
    """Read a DICOM-SEG as a labelmap; original label values come back from the TrackingID."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
        hvol = seg.get_volume(combine_segments=True, relabel=False)
    except Exception as exc:
        raise InputError(f"{path}: cannot read this DICOM-SEG ({exc})") from None
    number_to_label = {}
    segments = []
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        match = re.search(r"\((\d+)\)$", str(getattr(item, "TrackingID", "")))
        label = int(match.group(1)) if match else number
        number_to_label[number] = label
        segments.append({"label": label, "name": str(item.SegmentLabel)})
    arr = np.asarray(hvol.array)
    out = np.zeros(arr.shape, dtype=np.uint32 if max(number_to_label.values(), default=0) > 65535 else np.uint16)
    for number, label in number_to_label.items():
        out[arr == number] = label
    affine = np.asarray(hvol.affine, dtype=np.float64)  # (slice, row, column) -> LPS
    lin = affine[:3, [2, 1, 0]]
    spacing = np.linalg.norm(lin, axis=0)
    return Volume(
        out.transpose(2, 1, 0),
        spacing,
        affine[:3, 3],
        lin / spacing[None, :],
        {"source": str(path), "modality": "SEG", "segments": segments},
    )


def _rgb_to_cielab(rgb: Any) -> tuple[float, float, float]:
    """sRGB in [0, 1] -> CIE L*a*b* (D65), as DICOM's RecommendedDisplayCIELabValue needs."""
    c = np.clip(np.asarray(rgb, dtype=np.float64), 0, 1)
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return float(116 * f[1] - 16), float(500 * (f[0] - f[1])), float(200 * (f[1] - f[2]))


def _fill_blank_uids(sources: list[Any], path: Path) -> None:
    """Anonymised series sometimes have blank Study/Series UIDs, which make an invalid SEG: warn and use
    generated ones (the same for every source image)."""
    import warnings

    import highdicom as hd

    for tag in ("StudyInstanceUID", "SeriesInstanceUID"):
        if any(not str(ds.get(tag, "") or "").strip() for ds in sources):
            uid = next((str(ds.get(tag)) for ds in sources if str(ds.get(tag, "") or "").strip()), None) or str(hd.UID())
            for ds in sources:
                setattr(ds, tag, uid)
            warnings.warn(f"{path}: the source series has a blank {tag}; the DICOM-SEG uses the generated {uid}, "
                          "so a PACS will not file it with the original study", UserWarning, stacklevel=3)


def _with_sop_uids(ds: Any) -> Any:
    """Anonymisers sometimes blank SOP Class/Instance UID; the file meta still holds them."""
    meta = getattr(ds, "file_meta", None)
    for tag, meta_tag in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if not str(ds.get(tag, "") or "") and meta is not None and str(meta.get(meta_tag, "") or ""):
            setattr(ds, tag, meta.get(meta_tag))
    return ds


def write_dicom_seg(lab: Volume, path: Path, segs: list[dict[str, Any]], reference: Volume) -> Path:
    files = reference.meta.get("dicom_files")
    if not files:
        raise InputError(
            f"{path}: a DICOM-SEG must reference a DICOM series, but {reference.name} was not read from one; "
            "pass the DICOM series as reference, or write .seg.nrrd / .nii.gz instead"
        )
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from .. import __version__

    sources = [_with_sop_uids(pydicom.dcmread(f)) for f in files]
    _fill_blank_uids(sources, path)
    if len(sources) != lab.shape[2] or (sources[0].Rows, sources[0].Columns) != (lab.shape[1], lab.shape[0]):
        raise InputError(f"{path}: the labelmap's grid {lab.shape} does not match the reference series ({len(sources)} slices)")
    from .segment_codes import coded

    # relabel to 1..N in the order of segs (DICOM-SEG numbers segments from 1); the label value goes into
    # the TrackingID, so reading the SEG back restores it
    relabeled = np.zeros(lab.array.shape, dtype=np.uint16)
    descriptions = []
    for number, s in enumerate(segs, start=1):
        relabeled[lab.array == s["label"]] = number
        category, kind, side, _ = coded(s["name"])
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=s["name"],
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="sam2volume", version=__version__, family=codes.DCM.ArtificialIntelligence
            ),
            tracking_uid=hd.UID(),
            tracking_id=f"{s['name']} ({s['label']})",
            display_color=hd.color.CIELabColor(*_rgb_to_cielab(s["color"])),
        )
        if side is not None:  # laterality as a type modifier (as dcmqi and TotalSegmentator write it)
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept.from_code(side)]
        descriptions.append(desc)
    if not descriptions:
        raise InputError(f"{path}: the labelmap is empty; a DICOM-SEG needs at least one segment")
    pixel = np.ascontiguousarray(relabeled.transpose(2, 1, 0))  # (frames=k, rows=j, cols=i)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=300,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="SegmentWithSAM2",
        manufacturer_model_name="sam2volume",
        software_versions=__version__,
        device_serial_number="0",
        omit_empty_frames=False,
        series_description=f"SAM2 segmentation ({', '.join(str(s['name']) for s in segs)})"[:64],
    )
    with atomic_output(path) as tmp:
        seg.save_as(str(tmp))
    return path
