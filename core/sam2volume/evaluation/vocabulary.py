"""One organ vocabulary: every dataset's label names map to these canonical names.

Datasets are matched to each other (and to prompts and reports) by canonical name, never by label
id: BTCV's 8 is the aorta, AMOS's 8 is "arota", TotalSegmentator's 52 is the aorta.
Names are TotalSegmentator-style snake_case. :func:`canonical_name` normalises a dataset's own
name (case, spaces, slashes, hyphens, common synonyms and misspellings) and returns None for
names it does not know, which the readers then keep as they are (normalised) and report.
"""

from __future__ import annotations

import re

# canonical name -> synonyms (already normalised: lower case, words joined by "_")
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "spleen": ("spl",),
    "kidney_right": ("right_kidney", "rk", "kidney_r", "r_kidney"),
    "kidney_left": ("left_kidney", "lk", "kidney_l", "l_kidney"),
    "kidney": ("kidneys",),
    "gallbladder": ("gall_bladder", "gb"),
    "esophagus": ("oesophagus", "eso"),
    "liver": ("liv",),
    "stomach": ("sto",),
    "aorta": ("arota", "aor"),  # AMOS 2022's dataset.json spells it "arota"
    "inferior_vena_cava": ("ivc", "postcava", "vena_cava_inferior", "inferior_vena_cava_ivc"),
    "portal_vein_and_splenic_vein": ("portal_vein_splenic_vein", "portal_and_splenic_vein", "pvsv", "psv", "portal_splenic_vein"),
    "pancreas": ("pan",),
    "adrenal_gland_right": ("right_adrenal_gland", "rag", "adrenal_right", "right_adrenal"),
    "adrenal_gland_left": ("left_adrenal_gland", "lag", "adrenal_left", "left_adrenal"),
    "duodenum": ("duo",),
    "urinary_bladder": ("bladder",),
    "prostate_uterus": ("prostate_or_uterus", "prostate_and_uterus"),
    "prostate": (),
    "colon": (),
    "small_bowel": ("small_intestine",),
    "heart": (),
    "lung_left": ("left_lung",),
    "lung_right": ("right_lung",),
    # KiTS: labels and the evaluation regions (HEC) built from them
    "kidney_tumor": ("kidney_tumour", "renal_tumor"),
    "kidney_cyst": ("renal_cyst",),
    "kidney_and_masses": ("kidney_and_mass", "kidney_mass_region"),
    "kidney_masses": ("kidney_mass",),
    # MSD tasks (a bare "cancer" or "tumor" gets its organ from the dataset: see canonical_labels)
    "liver_tumor": ("liver_cancer", "liver_tumour", "hepatic_tumor"),
    "pancreas_tumor": ("pancreas_cancer", "pancreatic_tumor", "pancreas_tumour"),
    "hepatic_vessel": ("vessel", "hepatic_vessels"),
    "lung_tumor": ("lung_cancer", "nodule", "lung_tumour"),
    "colon_cancer": ("colon_tumor", "colon_cancer_primaries"),
    "brain_edema": ("edema",),
    "brain_non_enhancing_tumor": ("non_enhancing_tumor",),
    "brain_enhancing_tumor": ("enhancing_tumour", "enhancing_tumor"),
    "left_atrium": (),
    "hippocampus_anterior": ("anterior",),
    "hippocampus_posterior": ("posterior",),
    "prostate_peripheral_zone": ("pz", "peripheral_zone"),
    "prostate_transition_zone": ("tz", "transition_zone"),
}

CANONICAL_NAMES: tuple[str, ...] = tuple(_SYNONYMS)

_LOOKUP: dict[str, str] = {}
for _canon, _syns in _SYNONYMS.items():
    _LOOKUP[_canon] = _canon
    for _s in _syns:
        _LOOKUP[_s] = _canon


def normalise(name: str) -> str:
    """Lower case, words joined by single underscores ("Right Kidney" -> "right_kidney")."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")


def canonical_name(name: str) -> str | None:
    """The canonical name for a dataset's label name, or None if the vocabulary lacks it."""
    return _LOOKUP.get(normalise(name))


def to_canonical(name: str) -> str:
    """Canonical name if known, else the normalised name (reported as outside the vocabulary)."""
    return canonical_name(name) or normalise(name)


# names that only mean something with their organ: MSD's Liver and Pancreas tasks both say "cancer"
_LESIONS = {"cancer": "tumor", "tumor": "tumor", "tumour": "tumor", "lesion": "tumor", "cyst": "cyst",
            "mass": "masses", "masses": "masses"}
_LESION_ORGANS = ("liver", "pancreas", "kidney", "lung", "colon")


def canonical_labels(names: dict[int, str], hint: str = "") -> tuple[dict[int, str], list[str]]:
    """Canonical names for one dataset's ``{label id: name}``; returns (names, unknown names).

    A bare lesion name ("cancer", "tumor", "cyst", "mass") takes its organ from the dataset's other
    labels (MSD Liver: liver + cancer -> liver_tumor) or from ``hint`` (the dataset's folder name,
    e.g. "Task06_Lung" -> lung_tumor).
    """
    out: dict[int, str] = {}
    unknown: list[str] = []
    for label, name in names.items():
        canon = canonical_name(name)
        if canon is None and normalise(name) not in _LESIONS:
            unknown.append(str(name))
        out[label] = canon or normalise(name)
    plain = [out[label] for label, name in names.items() if normalise(name) not in _LESIONS]
    in_labels = [o for o in _LESION_ORGANS if any(n == o or n.startswith(o + "_") for n in plain)]
    in_hint = [o for o in _LESION_ORGANS if o in normalise(hint)]
    organ = in_labels[0] if len(in_labels) == 1 else (in_hint[0] if len(in_hint) == 1 else None)
    for label, name in names.items():
        kind = _LESIONS.get(normalise(name))
        if kind is None:
            continue
        if organ is None:
            unknown.append(str(name))
            out[label] = normalise(name)
        else:
            out[label] = f"{organ}_{kind}"
    return out, unknown


# Normalised surface distance tolerances in mm per organ, from the challenges' own evaluation code.
# FLARE22: JunMa11/FLARE, FLARE22/Evaluation/FLARE22_DSC_NSD_Eval.py (``label_tolerance``).
# KiTS21: neheller/kits21, kits21/configuration/labels.py (``HEC_NSD_TOLERANCES_MM``).
NSD_TOLERANCES_MM: dict[str, dict[str, float]] = {
    "flare22": {
        "liver": 5.0, "kidney_right": 3.0, "spleen": 3.0, "pancreas": 5.0, "aorta": 2.0,
        "inferior_vena_cava": 2.0, "adrenal_gland_right": 2.0, "adrenal_gland_left": 2.0,
        "gallbladder": 2.0, "esophagus": 3.0, "stomach": 5.0, "duodenum": 7.0, "kidney_left": 3.0,
    },
    "kits21": {
        "kidney_and_masses": 2.1780822681004897,
        "kidney_masses": 1.3929527150618852,
        "kidney_tumor": 1.536272517110166,
    },
}
