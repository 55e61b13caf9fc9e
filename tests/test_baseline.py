"""The classical baseline engine: Dice on the real CT (box on the middle slice), same interface as SAM2's."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from sam2volume import InputError, read_labelmap, read_volume
from sam2volume.baseline import BaselineSession
from sam2volume.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

# measured with benchmarks/bench_baseline.py: liver 0.890, spleen 0.827, kidney_right 0.818, kidney_left 0.848
THRESHOLDS = {"liver": 0.85, "spleen": 0.78, "kidney_right": 0.77, "kidney_left": 0.80}


def test_dice_on_real_ct_with_a_box_on_the_middle_slice():
    from bench_baseline import run

    results = run(list(THRESHOLDS))
    for organ, minimum in THRESHOLDS.items():
        assert results[organ]["dice"] > minimum, (organ, results[organ])


def test_interface_matches_sam2_session(totalseg):
    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    s = BaselineSession(ct, "coronal", window="abdomen")
    with pytest.raises(InputError, match="outside the volume"):
        s.add_points(1, [[500, 1, 1]], [1])
    with pytest.raises(InputError, match="no objects to propagate"):
        s.propagate()
    mask = s.add_points(1, [[80, 37, 9]], [1], name="kidney")
    assert mask.shape == s.axis.frame_shape and mask.any()
    report = s.propagate("forward", stop_after=2)
    assert report.slices_run >= 1
    lab = s.result()
    assert lab.same_grid(ct) and lab.meta["segments"][0]["name"] == "kidney"
    s.remove_object(1)
    assert not s.result().array.any()


def test_stop_rule_ends_a_small_organ(totalseg):
    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    ref = read_labelmap(totalseg / "example_seg.nii.gz").array == 2  # right kidney: slices 0..18
    s = BaselineSession(ct, "axial", window="abdomen")
    ij = np.argwhere(ref[:, :, 9])
    s.add_box(1, [[*ij.min(0), 9], [*ij.max(0), 9]])
    report = s.propagate(stop_after=2)
    assert report.stopped[1]["forward"] <= 24  # does not run to the top of the volume (29)
    pred = s.result().array == 1
    assert not pred[:, :, 25:].any()


def test_cli_engine_baseline(tmp_path, totalseg):
    examples = Path(__file__).resolve().parents[1] / "examples"
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(totalseg / "example_ct_sm.nii.gz"), "--prompts", str(examples / "prompts_ct_abdomen.json"),
                 "-o", str(out), "--engine", "baseline", "-q"]) == 0
    report = json.loads((tmp_path / "seg.nii.gz.report.json").read_text())
    assert report["engine"] == "baseline" and report["config"] is None
    lab = read_labelmap(out).array
    ref = read_labelmap(totalseg / "example_seg.nii.gz").array
    liver = 2 * ((lab == 1) & (ref == 5)).sum() / ((lab == 1).sum() + (ref == 5).sum())
    assert liver > 0.85
