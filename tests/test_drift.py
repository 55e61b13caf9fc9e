"""Drift tables (issue 12): slice Dice against the distance from the nearest prompted slice."""

import csv
import json

import numpy as np
from eval_helpers import plain_ct_dataset

from sam2volume import read_labelmap, read_volume
from sam2volume.evaluation import evaluate
from sam2volume.evaluation.drift import slice_rows, summarise_drift


def test_slice_rows_by_hand():
    ref = np.zeros((5, 4, 4), bool)
    pred = np.zeros((5, 4, 4), bool)
    ref[1:4, 1:3, 1:3] = True  # 4 pixels on slices 1..3
    pred[1:3, 1:3, 1:3] = True
    pred[2, 0, 0] = True  # 5 pixels on slice 2
    pred[4, 0, 0] = True  # a stray pixel where the reference is empty
    rows = slice_rows("c", "e", "o", pred, ref, prompted=[1], slice_mm=2.5)
    by = {r["slice"]: r for r in rows}
    assert sorted(by) == [1, 2, 3, 4]
    assert by[1]["dice"] == 1.0 and by[1]["distance_slices"] == 0
    assert by[2]["dice"] == 2 * 4 / 9 and by[2]["distance_mm"] == 2.5
    assert by[3]["dice"] == 0.0 and by[4]["dice"] == 0.0 and by[4]["distance_slices"] == 3
    assert by[1]["consistency_ref"] == 1.0 and by[2]["consistency_pred"] == 0.0
    summary = {r["distance_slices"]: r for r in summarise_drift(rows)}
    assert summary[1]["dice_mean"] == by[2]["dice"] and summary[0]["slices"] == 1


def test_evaluate_writes_drift_tables_and_plot(totalseg, tmp_path):
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["ct_a"], ["liver"])
    run = tmp_path / "run"
    report = evaluate(root, "box-middle", run, engine="baseline", overlays=False)
    with open(run / "drift.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    key = int(json.loads((run / "cases" / "ct_a.json").read_text())["rows"][0]["key_slices"])
    at_key = [r for r in rows if int(r["slice"]) == key]
    assert len(at_key) == 1 and at_key[0]["distance_slices"] == "0"
    # the key slice's Dice, computed independently from the prediction the run saved
    ct = read_volume(root / "images" / "ct_a.nii.gz")
    ref = read_labelmap(root / "labels" / "ct_a.nii.gz", reference=ct).array == 1
    assert max(int(r["distance_slices"]) for r in rows) > 3
    assert float(at_key[0]["ref_pixels"]) == ref[:, :, key].sum()  # axial slice numbers run along +k here (RAS CT)
    assert (run / "plots" / "drift.png").stat().st_size > 1000 and report["files"]["drift_plot"] == "plots/drift.png"
    with open(run / "drift_summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    d0 = [r for r in summary if r["distance_slices"] == "0" and r["engine"] == "baseline"]
    assert float(d0[0]["dice_mean"]) == float(at_key[0]["dice"])
