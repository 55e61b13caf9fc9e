"""Build small dataset layouts (BTCV, AMOS, KiTS, MSD, nnU-Net, plain) from the real files in ../shared/data.

Images are symlinked; label files are the real TotalSegmentator labels rewritten with each dataset's
own label ids (mapped by organ name through the vocabulary), on the image's exact grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sam2volume import read_labelmap, read_volume, write_labelmap
from sam2volume.evaluation.vocabulary import to_canonical

AMOS_LABELS = {"0": "background", "1": "spleen", "2": "right kidney", "3": "left kidney", "4": "gall bladder", "5": "esophagus",
               "6": "liver", "7": "stomach", "8": "arota", "9": "postcava", "10": "pancreas", "11": "right adrenal gland",
               "12": "left adrenal gland", "13": "duodenum", "14": "bladder", "15": "prostate/uterus"}


def totalseg_ids(totalseg: Path, key: str = "ct_total") -> dict[str, int]:
    """canonical organ name -> TotalSegmentator label id."""
    data = json.loads((totalseg / "labels.json").read_text())[key]
    return {to_canonical(name): int(i) for i, name in data.items()}


def relabel(totalseg: Path, image: str, labels: str, key: str, target: dict[int, str], out: Path) -> dict[str, int]:
    """Write ``labels`` with ids ``target`` (id -> dataset name); returns canonical name -> voxels."""
    ref = read_volume(totalseg / image)
    lab = read_labelmap(totalseg / labels, reference=ref)
    src = totalseg_ids(totalseg, key)
    arr = np.zeros(lab.shape, np.uint8)
    counts = {}
    for new_id, name in target.items():
        canon = to_canonical(name)
        if canon in src:
            m = lab.array == src[canon]
            arr[m] = new_id
            counts[canon] = int(m.sum())
    write_labelmap(lab.with_array(arr), out)
    return counts


def link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src.resolve())
    return dst


def plain_ct_dataset(totalseg: Path, root: Path, cases: list[str], organs: list[str]) -> Path:
    """images/ + labels/ + labels.json: every case is the real CT with its real labels (ids 1..N)."""
    names = {n + 1: organ for n, organ in enumerate(organs)}
    for case in cases:
        link(totalseg / "example_ct_sm.nii.gz", root / "images" / f"{case}.nii.gz")
    first = root / "labels" / f"{cases[0]}.nii.gz"
    first.parent.mkdir(parents=True, exist_ok=True)
    relabel(totalseg, "example_ct_sm.nii.gz", "example_seg.nii.gz", "ct_total", names, first)
    for case in cases[1:]:
        link(first, root / "labels" / f"{case}.nii.gz")
    (root / "labels.json").write_text(json.dumps({str(k): v for k, v in names.items()}))
    return root
