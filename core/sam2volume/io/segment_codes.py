"""SNOMED CT codes for the organs of our vocabulary, as DICOM-SEG segment descriptions carry them.

Category and type follow DICOM's CID 7150/7151 usage (and TotalSegmentator's DICOM-SEG output): organs
are category "Organ" or "Anatomical Structure", lesions "Morphologically Abnormal Structure"; laterality is
a type modifier (Right 24028007, Left 7771000), as dcmqi writes it. Codes are looked up by name in
pydicom's SNOMED CT code dictionary, so every value is pydicom's, not typed in here. Names outside the
vocabulary get category and type "Anatomical Structure" (a generic but valid code) and are listed by
:func:`coded` as uncoded.
"""

from __future__ import annotations

from typing import Any

# canonical organ name -> (category, type, laterality) as pydicom codes.SCT attribute names
ORGAN_CODES: dict[str, tuple[str, str, str | None]] = {
    "liver": ("Organ", "Liver", None),
    "spleen": ("Organ", "Spleen", None),
    "kidney": ("Organ", "Kidney", None),
    "kidney_right": ("Organ", "Kidney", "Right"),
    "kidney_left": ("Organ", "Kidney", "Left"),
    "gallbladder": ("Organ", "Gallbladder", None),
    "esophagus": ("Organ", "Esophagus", None),
    "stomach": ("Organ", "Stomach", None),
    "pancreas": ("Organ", "Pancreas", None),
    "duodenum": ("Organ", "Duodenum", None),
    "adrenal_gland_right": ("Organ", "AdrenalGland", "Right"),
    "adrenal_gland_left": ("Organ", "AdrenalGland", "Left"),
    "urinary_bladder": ("Organ", "Bladder", None),  # SNOMED 89837001 "Urinary bladder"
    "prostate": ("Organ", "Prostate", None),
    "colon": ("Organ", "Colon", None),
    "small_bowel": ("Organ", "SmallIntestine", None),
    "heart": ("Organ", "Heart", None),
    "lung_right": ("Organ", "Lung", "Right"),
    "lung_left": ("Organ", "Lung", "Left"),
    "aorta": ("AnatomicalStructure", "Aorta", None),
    "inferior_vena_cava": ("AnatomicalStructure", "InferiorVenaCava", None),
    "portal_vein_and_splenic_vein": ("AnatomicalStructure", "PortalVein", None),
    "kidney_tumor": ("MorphologicallyAbnormalStructure", "Neoplasm", None),
    "liver_tumor": ("MorphologicallyAbnormalStructure", "Neoplasm", None),
    "pancreas_tumor": ("MorphologicallyAbnormalStructure", "Neoplasm", None),
    "lung_tumor": ("MorphologicallyAbnormalStructure", "Neoplasm", None),
    "colon_cancer": ("MorphologicallyAbnormalStructure", "Neoplasm", None),
    "kidney_cyst": ("MorphologicallyAbnormalStructure", "Cyst", None),
    "kidney_masses": ("MorphologicallyAbnormalStructure", "Mass", None),
}


def coded(name: str) -> tuple[Any, Any, Any | None, bool]:
    """(category, type, laterality modifier or None, known) pydicom Codes for a segment name."""
    from pydicom.sr.codedict import codes

    from ..evaluation.vocabulary import canonical_name

    entry = ORGAN_CODES.get(canonical_name(name) or "")
    if entry is None:
        return codes.SCT.AnatomicalStructure, codes.SCT.AnatomicalStructure, None, False
    category, kind, side = entry
    return getattr(codes.SCT, category), getattr(codes.SCT, kind), (getattr(codes.SCT, side) if side else None), True
