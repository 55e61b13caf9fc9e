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
    out = np.zeros(arr.shape, dtype=np.uint16)
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
    if len(sources) != lab.shape[2] or (sources[0].Rows, sources[0].Columns) != (lab.shape[1], lab.shape[0]):
        raise InputError(f"{path}: the labelmap's grid {lab.shape} does not match the reference series ({len(sources)} slices)")
    # relabel to 1..N in the order of segs (DICOM-SEG numbers segments from 1)
    relabeled = np.zeros(lab.array.shape, dtype=np.uint16)
    descriptions = []
    for number, s in enumerate(segs, start=1):
        relabeled[lab.array == s["label"]] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=s["name"],
                segmented_property_category=codes.SCT.Organ,
                segmented_property_type=codes.SCT.Organ,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name="sam2volume", version=__version__, family=codes.DCM.ArtificialIntelligence
                ),
                tracking_uid=hd.UID(),
                tracking_id=f"{s['name']} ({s['label']})",
            )
        )
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
    )
    with atomic_output(path) as tmp:
        seg.save_as(str(tmp))
    return path
