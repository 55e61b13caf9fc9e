"""A colour table 3D Slicer reads, beside a NIfTI/NRRD/MHA labelmap (formats that hold no names or colours).

The file is Slicer's CSV colour table (``vtkMRMLColorTableStorageNode``, read for a ``.csv`` name, the format
Slicer itself writes as ``NAME.labels.csv`` beside a labelmap it exports): a header row, then one row per label
value with ``LabelValue``, ``Name``, ``Color_R/G/B/A`` (integers 0-255) and the terminology columns
(``Category_*``, ``Type_*``, ``TypeModifier_*``: SNOMED CT codes from :mod:`.segment_codes` for organs of our
vocabulary, empty for other names). Unlike Slicer's older ``.ctbl`` text format (space-separated, a name's
underscores read back as spaces), CSV keeps every name exactly: ``kidney_left`` stays ``kidney_left``.
Slicer's CSV reader cannot hold a quotation mark inside a value: one in a name is written as ``'``.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Sequence

#: Slicer's recommended display colours (0-255) for the organs of our vocabulary, as its terminology
#: "SlicerGeneralAnatomy" gives them for the SNOMED CT type (and laterality) that segment_codes assigns;
#: tests/test_color_table.py checks every value against that terminology file
ORGAN_COLORS: dict[str, tuple[int, int, int]] = {
    "liver": (221, 130, 101),
    "spleen": (157, 108, 162),
    "kidney_right": (185, 102, 83),
    "kidney_left": (185, 102, 83),
    "gallbladder": (139, 150, 98),
    "esophagus": (211, 171, 143),
    "stomach": (216, 132, 105),
    "pancreas": (249, 180, 111),
    "duodenum": (255, 253, 229),
    "adrenal_gland_right": (249, 186, 150),
    "adrenal_gland_left": (249, 186, 150),
    "urinary_bladder": (222, 154, 132),
    "prostate": (230, 158, 140),
    "colon": (204, 168, 143),
    "small_bowel": (205, 167, 142),
    "heart": (206, 110, 84),
    "lung_right": (197, 165, 145),
    "lung_left": (197, 165, 145),
    "aorta": (224, 97, 76),
    "kidney_cyst": (205, 205, 100),
    "kidney_masses": (144, 238, 144),
}

#: columns in the order Slicer writes them (vtkMRMLColorTableStorageNode::WriteCsvFile)
TERMINOLOGY_COLUMNS = tuple(f"{part}_{field}" for part in ("Category", "Type", "TypeModifier", "Region", "RegionModifier")
                            for field in ("CodingScheme", "CodeValue", "CodeMeaning"))
COLUMNS = ("LabelValue", "Name", "Color_R", "Color_G", "Color_B", "Color_A", *TERMINOLOGY_COLUMNS)


def organ_color(name: str) -> list[float] | None:
    """Slicer's display colour (0..1) for an organ of our vocabulary (any spelling it knows), else None."""
    from ..evaluation.vocabulary import canonical_name

    rgb = ORGAN_COLORS.get(canonical_name(str(name)) or "")
    return [round(c / 255, 6) for c in rgb] if rgb is not None else None


def color_table_path(labelmap: str | os.PathLike[str]) -> Path:
    """``out/ct.nii.gz`` -> ``out/ct.nii.gz.labels.csv``: named after the whole file name, so that ``ct.nii.gz``
    and ``ct.nrrd`` in one folder keep a table each."""
    path = Path(labelmap)
    return path.with_name(path.name + ".labels.csv")


def _codes(name: str) -> dict[str, str]:
    from .segment_codes import coded

    category, kind, side, known = coded(name)
    if not known:
        return {}
    out = {}
    for part, code in (("Category", category), ("Type", kind), ("TypeModifier", side)):
        if code is not None:
            out.update({f"{part}_CodingScheme": code.scheme_designator, f"{part}_CodeValue": code.value,
                        f"{part}_CodeMeaning": code.meaning})
    return out


def color_table_text(segments: Sequence[dict[str, Any]]) -> str:
    """The CSV colour table for ``[{"label", "name", "color": [r, g, b] in 0..1}, ...]``, rows by label value."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", restval="")
    writer.writeheader()
    for s in sorted(segments, key=lambda s: int(s["label"])):
        name = str(s["name"])
        r, g, b = (int(round(float(c) * 255)) for c in s["color"])
        writer.writerow({"LabelValue": int(s["label"]), "Name": name.replace('"', "'"),
                         "Color_R": r, "Color_G": g, "Color_B": b, "Color_A": 255, **_codes(name)})
    return buf.getvalue()


def write_color_table(labelmap: str | os.PathLike[str], segments: Sequence[dict[str, Any]]) -> Path:
    """Write :func:`color_table_path` of ``labelmap`` (atomically); returns its path."""
    from .atomic import write_text_atomic

    path = color_table_path(labelmap)
    write_text_atomic(path, color_table_text(segments))
    return path
