"""Dataset readers: BTCV, AMOS 2022, KiTS19/21/23, MSD, nnU-Net v2 raw, and a plain folder.

Each reader returns a :class:`Dataset`: cases (image, label file, modality) and the objects to
score as canonical organ names (see :mod:`.vocabulary`) mapped to the label values that make them
up (a tuple is a union: KiTS "kidney and masses" is labels 1, 2 and 3). Nothing is read but file
names and ``dataset.json`` here; voxels are read case by case by the runner.

Layouts (``read_dataset(path, layout="auto")`` finds which):

* ``btcv``: ``img0001.nii.gz`` / ``label0001.nii.gz`` anywhere below the folder (Synapse's
  ``RawData/Training/img|label`` or MONAI's ``imagesTr|labelsTr``), 13 organs with fixed ids.
* ``amos``: AMOS 2022 (``dataset.json``, ``imagesTr``/``labelsTr``/``imagesVa``/``labelsVa``, 15
  organs; case ids above 500 are MRI).
* ``kits``: ``case_00000/imaging.nii.gz`` with ``aggregated_MAJ_seg.nii.gz`` (KiTS21, preferred) or
  ``segmentation.nii.gz`` (KiTS19/23), in the folder or its ``data/``; scored on the KiTS regions
  kidney+masses (1, 2, 3), masses (2, 3) and tumor (2).
* ``nnunet``: nnU-Net v2 raw (``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``,
  ``dataset.json`` with ``channel_names`` and ``labels`` as name -> id or name -> [ids]).
* ``msd``: Medical Segmentation Decathlon (``dataset.json`` with ``modality``, ``labels`` as id ->
  name and a ``training`` list).
* ``plain``: ``images/`` and ``labels/`` with matching file names plus a label-name file
  (``labels.json`` / ``labels.txt`` in the folder, or ``labels=``); JSON may map id -> name or
  name -> id; text lines are ``1 liver`` (or ``1: liver`` / ``1,liver``).

Documented skips, kept in ``Dataset.skipped`` and listed in run reports: images without a label
file, 4D (multi-channel) MSD images, names outside the vocabulary (kept, normalised, and listed).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .vocabulary import canonical_labels, normalise

LAYOUTS = ("btcv", "amos", "kits", "nnunet", "msd", "plain")
_IMAGE_RE = re.compile(r"\.(nii\.gz|nii|nrrd|mha)$", re.IGNORECASE)

# BTCV (Synapse multi-organ) label ids, as in the challenge's data description
BTCV_LABELS = {
    1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 5: "esophagus", 6: "liver",
    7: "stomach", 8: "aorta", 9: "inferior vena cava", 10: "portal vein and splenic vein",
    11: "pancreas", 12: "right adrenal gland", 13: "left adrenal gland",
}
KITS_REGIONS = {"kidney_and_masses": (1, 2, 3), "kidney_masses": (2, 3), "kidney_tumor": (2,)}
AMOS_MRI_FIRST_ID = 501


@dataclass
class Case:
    case_id: str
    image: Path
    label: Path | None
    modality: str = "unknown"  # CT | MR | unknown


@dataclass
class Dataset:
    name: str
    layout: str
    root: Path
    cases: list[Case]
    objects: dict[str, tuple[int, ...]]  # canonical name -> label values (a union)
    tolerances: str | None = None  # NSD tolerance table name (metrics), e.g. "kits21"
    skipped: list[dict[str, str]] = field(default_factory=list)
    unknown_names: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layout": self.layout,
            "root": str(self.root),
            "cases": len(self.cases),
            "objects": {k: list(v) for k, v in self.objects.items()},
            "tolerances": self.tolerances,
            "skipped": self.skipped,
            "names_outside_vocabulary": self.unknown_names,
        }


def _stem(path: Path) -> str:
    return _IMAGE_RE.sub("", path.name)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _IMAGE_RE.search(p.name) and not p.name.startswith(".")) if folder.is_dir() else []


def _objects_from_names(names: dict[int, str], hint: str) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    canon, unknown = canonical_labels({k: v for k, v in names.items() if k != 0 and normalise(v) != "background"}, hint)
    objects: dict[str, tuple[int, ...]] = {}
    for label, name in sorted(canon.items()):
        objects[name] = tuple(sorted(set(objects.get(name, ())) | {label}))
    return objects, unknown


def _parse_label_map(data: Any, where: str) -> dict[int, str] | dict[str, tuple[int, ...]]:
    """``{"1": "liver"}`` (id -> name) or ``{"liver": 1}`` / ``{"kidney": [1, 2]}`` (name -> ids)."""
    if not isinstance(data, dict) or not data:
        raise InputError(f"{where}: labels must be a non-empty mapping of label id -> name or name -> id")
    keys_are_ids = all(re.fullmatch(r"\d+", str(k)) for k in data)
    if keys_are_ids:
        return {int(k): str(v) for k, v in data.items()}
    out: dict[str, tuple[int, ...]] = {}
    for name, ids in data.items():
        vals = ids if isinstance(ids, (list, tuple)) else [ids]
        if not vals or not all(isinstance(v, int) or (isinstance(v, str) and v.isdigit()) for v in vals):
            raise InputError(f"{where}: label {name!r} must map to an integer id or a list of ids, got {ids!r}")
        out[str(name)] = tuple(int(v) for v in vals)
    return out


def _objects_from_label_map(labels: Any, where: str, hint: str) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    parsed = _parse_label_map(labels, where)
    if all(isinstance(k, int) for k in parsed):
        return _objects_from_names(parsed, hint)  # type: ignore[arg-type]
    single = {ids[0]: name for name, ids in parsed.items() if len(ids) == 1}  # type: ignore[union-attr]
    objects, unknown = _objects_from_names(single, hint)
    for name, ids in parsed.items():  # nnU-Net regions: a name for a union of labels
        if len(ids) > 1:  # type: ignore[arg-type]
            canon, unk = canonical_labels({-1: str(name)}, hint)
            objects[canon[-1]] = tuple(sorted(ids))  # type: ignore[arg-type]
            unknown += unk
    return objects, unknown


def _modality(text: str) -> str:
    t = str(text).lower()
    if t in ("ct", "ct scan") or "ct" == t.split("_")[0]:
        return "CT"
    if any(w in t for w in ("mr", "t1", "t2", "flair", "adc", "dwi")):
        return "MR"
    return "unknown"


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not JSON or not UTF-8
        raise InputError(f"{path}: cannot read it as JSON ({'nested too deeply' if isinstance(exc, RecursionError) else exc})") from None


# ------------------------------------------------------------------ readers
def read_btcv(root: Path) -> Dataset:
    images = {m.group(1): p for p in sorted(root.rglob("img*")) if (m := re.fullmatch(r"img(\d+)\.nii(\.gz)?", p.name))}
    labels = {m.group(1): p for p in sorted(root.rglob("label*")) if (m := re.fullmatch(r"label(\d+)\.nii(\.gz)?", p.name))}
    objects, unknown = _objects_from_names(BTCV_LABELS, "btcv")
    ds = Dataset(root.name, "btcv", root, [], objects, "flare22", unknown_names=unknown)
    for num, img in sorted(images.items()):
        if num in labels:
            ds.cases.append(Case(f"img{num}", img, labels[num], "CT"))
        else:
            ds.skipped.append({"case": f"img{num}", "reason": f"no label{num}.nii.gz for {img.name} (test image): not scored"})
    return ds


def read_amos(root: Path) -> Dataset:
    meta = _load_json(root / "dataset.json")
    objects, unknown = _objects_from_label_map(meta.get("labels"), str(root / "dataset.json"), "amos")
    ds = Dataset(str(meta.get("name") or root.name), "amos", root, [], objects, "flare22", unknown_names=unknown)
    entries = list(meta.get("training") or []) + list(meta.get("validation") or [])
    listed = set()
    for e in entries:
        img, lab = root / str(e["image"]), root / str(e["label"])
        case_id = _stem(img)
        listed.add(img.name)
        m = re.search(r"(\d+)$", case_id)
        modality = "MR" if m and int(m.group(1)) >= AMOS_MRI_FIRST_ID else "CT"
        if not img.is_file():
            ds.skipped.append({"case": case_id, "reason": f"{img} listed in dataset.json but missing"})
        elif not lab.is_file():
            ds.skipped.append({"case": case_id, "reason": f"no label file {lab}: not scored"})
        else:
            ds.cases.append(Case(case_id, img, lab, modality))
    for folder in ("imagesTs",):
        for img in _images(root / folder):
            if img.name not in listed:
                ds.skipped.append({"case": _stem(img), "reason": f"{folder}/{img.name} has no label: not scored"})
    return ds


def read_kits(root: Path) -> Dataset:
    base = root / "data" if not any(root.glob("case_*")) and (root / "data").is_dir() else root
    ds = Dataset(root.name, "kits", root, [], dict(KITS_REGIONS), "kits21")
    for d in sorted(p for p in base.glob("case_*") if p.is_dir()):
        img = d / "imaging.nii.gz"
        lab = next((d / n for n in ("aggregated_MAJ_seg.nii.gz", "segmentation.nii.gz") if (d / n).is_file()), None)
        if not img.is_file():
            ds.skipped.append({"case": d.name, "reason": f"no imaging.nii.gz in {d}"})
        elif lab is None:
            ds.skipped.append({"case": d.name, "reason": "no aggregated_MAJ_seg.nii.gz or segmentation.nii.gz (test case): not scored"})
        else:
            ds.cases.append(Case(d.name, img, lab, "CT"))
    return ds


def read_nnunet(root: Path) -> Dataset:
    meta = _load_json(root / "dataset.json")
    ending = str(meta.get("file_ending") or ".nii.gz")
    objects, unknown = _objects_from_label_map(meta.get("labels"), str(root / "dataset.json"), root.name)
    channels = meta.get("channel_names") or meta.get("modality") or {}
    modality = _modality(channels.get("0", "")) if isinstance(channels, dict) else "unknown"
    ds = Dataset(root.name, "nnunet", root, [], objects, None, unknown_names=unknown)
    for img in sorted((root / "imagesTr").glob(f"*_0000{ending}")):
        case_id = img.name[: -len(f"_0000{ending}")]
        lab = root / "labelsTr" / f"{case_id}{ending}"
        if lab.is_file():
            ds.cases.append(Case(case_id, img, lab, modality))
        else:
            ds.skipped.append({"case": case_id, "reason": f"no labelsTr/{case_id}{ending}: not scored"})
    extra = len([p for p in (root / "imagesTr").glob(f"*{ending}") if not p.name.endswith(f"_0000{ending}")]) if (root / "imagesTr").is_dir() else 0
    if extra:
        ds.skipped.append({"case": "*", "reason": f"{extra} extra channel files (_0001 ...) ignored: prompts and scores use channel 0"})
    return ds


def read_msd(root: Path) -> Dataset:
    meta = _load_json(root / "dataset.json")
    objects, unknown = _objects_from_label_map(meta.get("labels"), str(root / "dataset.json"), str(meta.get("name") or root.name))
    mods = meta.get("modality") or {}
    modality = _modality(mods.get("0", "")) if isinstance(mods, dict) else "unknown"
    ds = Dataset(str(meta.get("name") or root.name), "msd", root, [], objects, None, unknown_names=unknown)
    if isinstance(mods, dict) and len(mods) > 1:
        ds.skipped.append({"case": "*", "reason": f"{len(mods)}-channel (4D) images: every case is skipped; convert channel 0 to 3D files"})
        return ds
    for e in meta.get("training") or []:
        img, lab = root / str(e["image"]), root / str(e["label"])
        if not img.is_file():
            ds.skipped.append({"case": _stem(img), "reason": f"{img} listed in dataset.json but missing"})
        elif not lab.is_file():
            ds.skipped.append({"case": _stem(img), "reason": f"no label file {lab}: not scored"})
        else:
            ds.cases.append(Case(_stem(img), img, lab, modality))
    return ds


def read_label_names(path: Path) -> Any:
    """A label-name file: JSON (id -> name or name -> id, optionally ``file.json:key``) or text lines."""
    key = None
    if not path.exists() and ":" in path.name:
        name, key = path.name.split(":", 1)
        path = path.with_name(name)
    if not path.is_file():
        raise InputError(f"{path}: label-name file not found (JSON {{\"1\": \"liver\"}} or text lines '1 liver')")
    if path.suffix.lower() == ".json":
        data = _load_json(path)
        if key is not None:
            if key not in data:
                raise InputError(f"{path}: no key {key!r}; keys are {', '.join(map(str, data))}")
            return data[key]
        if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
            if len(data) == 1:
                return next(iter(data.values()))
            raise InputError(f"{path} holds several label maps ({', '.join(data)}); choose one as {path.name}:KEY")
        return data
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"(\d+)\s*[:,=\s]\s*(.+)", line)
        if not m:
            raise InputError(f"{path}, line {n}: expected 'ID NAME' (e.g. '1 liver'), got {line!r}")
        out[m.group(1)] = m.group(2).strip()
    return out


def read_plain(root: Path, labels: str | Path | None = None) -> Dataset:
    if labels is None:
        found = [root / n for n in ("labels.json", "labels.txt", "label_names.json", "label_names.txt") if (root / n).is_file()]
        if not found:
            raise InputError(f"{root}: a plain dataset needs a label-name file (labels.json or labels.txt in the folder, or --labels FILE)")
        labels = found[0]
    label_map = read_label_names(Path(labels))
    objects, unknown = _objects_from_label_map(label_map, str(labels), root.name)
    ds = Dataset(root.name, "plain", root, [], objects, None, unknown_names=unknown)
    label_files = {_stem(p): p for p in _images(root / "labels")}
    for img in _images(root / "images"):
        case_id = re.sub(r"_0000$", "", _stem(img))
        lab = label_files.get(_stem(img)) or label_files.get(case_id)
        if lab is None:
            ds.skipped.append({"case": case_id, "reason": f"no labels/{case_id}.* for images/{img.name}: not scored"})
        else:
            ds.cases.append(Case(case_id, img, lab, "unknown"))
    return ds


def detect_layout(root: Path) -> str:
    """The layout of a dataset folder, or an InputError saying what each layout needs."""
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        meta = _load_json(meta_path)
        text = (str(meta.get("name", "")) + " " + str(meta.get("description", "")) + " " + root.name).lower()
        if "amos" in text or any((root / "imagesTr").glob("amos_*")):
            return "amos"
        if "channel_names" in meta or "file_ending" in meta or any((root / "imagesTr").glob("*_0000.*")):
            return "nnunet"
        if "training" in meta:
            return "msd"
    if any(p.is_dir() for p in root.glob("case_*")) or any(p.is_dir() for p in root.glob("data/case_*")):
        return "kits"
    if next((p for p in root.rglob("img*.nii*") if re.fullmatch(r"img\d+\.nii(\.gz)?", p.name)), None):
        return "btcv"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "plain"
    raise InputError(
        f"{root}: no known dataset layout. Expected one of: dataset.json with imagesTr/labelsTr (AMOS, MSD, "
        "nnU-Net v2), case_XXXXX/imaging.nii.gz folders (KiTS), imgXXXX/labelXXXX.nii.gz files (BTCV), or images/ + "
        "labels/ folders with a labels.json (plain); or name it with --layout"
    )


def read_dataset(path: str | Path, layout: str = "auto", labels: str | Path | None = None) -> Dataset:
    """Read a dataset folder (see the module docstring for the layouts)."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    layout = layout.lower()
    if layout == "auto":
        layout = "plain" if labels is not None else detect_layout(root)
    readers = {"btcv": read_btcv, "amos": read_amos, "kits": read_kits, "nnunet": read_nnunet, "msd": read_msd}
    if layout == "plain":
        ds = read_plain(root, labels)
    elif layout in readers:
        if layout in ("amos", "nnunet", "msd") and not (root / "dataset.json").is_file():
            raise InputError(f"{root}: layout {layout!r} needs a dataset.json")
        ds = readers[layout](root)
    else:
        raise InputError(f"unknown dataset layout {layout!r}; use auto or one of {', '.join(LAYOUTS)}")
    if not ds.cases:
        reasons = "; ".join(s["reason"] for s in ds.skipped[:3]) or "no image/label pairs found"
        raise InputError(f"{root}: no case with both an image and a label ({ds.layout} layout): {reasons}")
    if not ds.objects:
        raise InputError(f"{root}: the label map names no objects besides background")
    return ds
