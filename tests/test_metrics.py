"""Metrics: hand-computed cases, MONAI as reference, anisotropic spacing, every empty case."""

import math

import numpy as np
import pytest
import torch

from sam2volume import InputError, read_labelmap
from sam2volume.metrics import MetricAccumulator, score, score_labelmaps


def _cube(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_hand_computed_overlap():
    ref = _cube((10, 10, 10), (2, 2, 2), (6, 6, 6))
    pred = _cube((10, 10, 10), (2, 2, 3), (6, 6, 7))
    s = score(pred, ref, (1.0, 1.0, 1.0))
    assert s.dice == pytest.approx(2 * 48 / 128)
    assert s.iou == pytest.approx(48 / 80)
    assert s.distances_defined


@pytest.mark.parametrize("spacing, expected", [((1.0, 1.0, 3.0), 6.0), ((3.0, 1.0, 1.0), 2.0), ((0.5, 0.7, 2.5), 5.0)])
def test_parallel_plates_distances_follow_spacing_axis_order(spacing, expected):
    ref = _cube((8, 8, 8), (1, 1, 2), (7, 7, 3))  # a plate at k = 2
    pred = _cube((8, 8, 8), (1, 1, 4), (7, 7, 5))  # the same plate at k = 4: 2 voxels away along k
    s = score(pred, ref, spacing, tolerance_mm=expected + 0.01)
    assert s.dice == 0 and s.iou == 0
    assert s.hd95 == pytest.approx(expected)
    assert s.assd == pytest.approx(expected)
    assert s.nsd == pytest.approx(1.0)
    assert score(pred, ref, spacing, tolerance_mm=expected - 0.01).nsd == pytest.approx(0.0)


def test_equals_monai_on_real_organs(totalseg):
    from monai.metrics import (compute_average_surface_distance, compute_dice, compute_hausdorff_distance,
                               compute_iou, compute_surface_dice)

    lab = read_labelmap(totalseg / "example_seg_dicom.nii.gz")  # anisotropic 0.98 x 0.98 x 2 mm
    ref = lab.array == 5
    pred = np.roll(ref, 3, axis=0) | np.roll(ref, -1, axis=2)
    sp = lab.spacing
    s = score(pred, ref, sp, tolerance_mm=1.5)
    p, r = torch.from_numpy(pred[None, None].astype(np.float32)), torch.from_numpy(ref[None, None].astype(np.float32))
    assert s.dice == pytest.approx(float(compute_dice(p, r)[0, 0]), abs=1e-6)
    assert s.dice == pytest.approx(2 * (pred & ref).sum() / (pred.sum() + ref.sum()), abs=1e-6)
    assert s.iou == pytest.approx(float(compute_iou(p, r)[0, 0]), abs=1e-6)
    assert s.nsd == pytest.approx(float(compute_surface_dice(p, r, [1.5], include_background=True, spacing=list(sp))[0, 0]), abs=1e-6)
    assert s.hd95 == pytest.approx(float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=list(sp))[0, 0]), abs=1e-5)
    assert s.assd == pytest.approx(float(compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=list(sp))[0, 0]), abs=1e-5)
    # whole volume, never cropped: the same masks padded with background score the same
    big = score(np.pad(pred, 5), np.pad(ref, 5), sp, tolerance_mm=1.5)
    assert big.dice == pytest.approx(s.dice) and big.hd95 == pytest.approx(s.hd95)


def test_empty_rules():
    empty = np.zeros((5, 5, 5), bool)
    full = _cube((5, 5, 5), (1, 1, 1), (3, 3, 3))
    both = score(empty, empty, (1, 1, 1))
    assert (both.dice, both.iou, both.nsd) == (1.0, 1.0, 1.0)
    assert math.isnan(both.hd95) and math.isnan(both.assd) and not both.distances_defined
    for pred, ref in [(empty, full), (full, empty)]:
        one = score(pred, ref, (1, 1, 1))
        assert (one.dice, one.iou, one.nsd) == (0.0, 0.0, 0.0)
        assert math.isnan(one.hd95) and math.isnan(one.assd) and not one.distances_defined
        assert one.pred_empty == (pred is empty) and one.ref_empty == (ref is empty)


def test_bad_arguments():
    m = np.zeros((3, 3, 3), bool)
    with pytest.raises(InputError, match="differs"):
        score(m, np.zeros((3, 3, 4), bool), (1, 1, 1))
    with pytest.raises(InputError, match="spacing"):
        score(m, m, (1, 1))
    with pytest.raises(InputError, match="spacing"):
        score(m, m, (1, 0, 1))


def test_labelmap_scoring_unions_and_accumulator(totalseg):
    lab = read_labelmap(totalseg / "example_seg.nii.gz")
    pred = lab.with_array(np.where(lab.array == 2, 3, lab.array))  # right kidney labelled as left
    res = score_labelmaps(pred, lab, {"kidneys": ((2, 3), (2, 3)), "kidney_right": (2, 2), "liver": (5, 5)})
    assert res["kidneys"].dice == pytest.approx(1.0) and res["liver"].dice == pytest.approx(1.0)
    assert res["kidney_right"].dice == 0 and res["kidney_right"].pred_empty
    acc = MetricAccumulator()
    for case in ("a", "b"):
        for name, sc in res.items():
            acc.add(case, name, sc)
    summ = acc.summary()
    assert summ["liver"]["dice"]["mean"] == pytest.approx(1.0) and summ["liver"]["cases"] == 2
    assert summ["kidney_right"]["hd95"]["nan_cases"] == 2 and math.isnan(summ["kidney_right"]["hd95"]["mean"])
