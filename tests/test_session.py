"""Session behaviour with real SAM2 modules (random weights, small image size)."""

import threading

import numpy as np
import pytest
import torch

from sam2_helpers import engine_config
from sam2volume import InputError, read_labelmap, read_volume
from sam2volume.engine.predictor import build_predictor
from sam2volume.errors import CancelledError, Sam2VolumeError
from sam2volume.session import Session

pytestmark = pytest.mark.sam2


@pytest.fixture(scope="module")
def predictor():
    return build_predictor(engine_config())


@pytest.fixture(scope="module")
def ct(totalseg):
    return read_volume(totalseg / "example_ct_sm.nii.gz")


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


@pytest.mark.parametrize("name, seg", [("example_ct_sm.nii.gz", "example_seg.nii.gz"), ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz")])
@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_mask_prompt_lands_in_place_on_every_axis(predictor, totalseg, name, seg, axis):
    """A mask from the reference labels comes back at the same voxels of the input's own layout."""
    vol = read_volume(totalseg / name)
    lab = read_labelmap(totalseg / seg, reference=vol)
    organ = np.bincount(lab.array[lab.array > 0].ravel()).argmax()  # the largest organ
    target = lab.array == organ
    session = Session(vol, axis, engine_config(), predictor=predictor)
    centre = np.argwhere(target).mean(axis=0)
    s = session.slice_of(centre)
    preview = session.add_mask(1, target, s, name="organ")
    assert preview.shape == session.axis.frame_shape
    # the preview written through input_region lands on the same voxels as the result
    index, values = session.input_region(s, preview)
    painted = np.zeros(vol.shape, bool)
    painted[index] = values
    np.testing.assert_array_equal(painted, _slab(session, s) & painted)
    result = session.result()
    np.testing.assert_array_equal(painted, result.array == 1)
    assert result.same_grid(vol) and result.array.shape == vol.shape
    got = result.array == 1
    # only that one slice holds the object, at the same voxels as the reference on that slice
    idx = np.argwhere(got)
    assert {session.slice_of(p) for p in idx[:: max(1, len(idx) // 50)]} == {s}
    assert _dice(got, target & _slab(session, s)) > 0.85
    assert result.meta["segments"][0]["name"] == "organ"


def _slab(session, s):
    """Boolean volume (input layout) that is True on slice ``s`` of the session's axis."""
    idx = np.indices(session.volume.shape).reshape(3, -1).T
    canon = session._reo.apply_index(idx, session.volume.shape)
    return (np.round(session.axis.to_frame(canon)[:, 0]) == s).reshape(session.volume.shape)


def test_points_in_physical_coordinates_equal_voxel_points(predictor, ct):
    a = Session(ct, "axial", engine_config(), predictor=predictor)
    b = Session(ct, "axial", engine_config(), predictor=predictor)
    ijk = np.array([[60.0, 50.0, 15.0], [30.0, 20.0, 15.0]])
    m1 = a.add_points(1, ijk, [1, 0])
    m2 = b.add_points(1, ct.index_to_ras(ijk), [1, 0], coords="ras")
    m3 = b.add_points(2, ct.index_to_lps(ijk), [1, 0], coords="lps")
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(m1, m3)


def test_correction_repropagates_from_cache_without_reencoding(predictor, ct):
    session = Session(ct, "axial", engine_config(), predictor=predictor)
    session.add_box(1, [[40, 30, 12], [80, 70, 12]])
    calls0 = predictor.encoder_calls
    session.propagate(stop_after=None)
    first_run = predictor.encoder_calls - calls0
    assert first_run == ct.shape[2] - 1  # every slice encoded once; the prompted one already was
    before = session.result().array.copy()
    calls1 = predictor.encoder_calls
    session.add_points(1, [[60, 50, 20]], [0])
    report = session.propagate(objects=[1], start=20, stop_after=None)
    assert predictor.encoder_calls == calls1  # the correction re-used cached features
    assert report.slices_run == (ct.shape[2] - 20) + 21
    after = session.result()
    assert after.array.shape == before.shape


def test_feature_cache_budget_forces_reencoding(ct):
    pred = build_predictor(engine_config())
    session = Session(ct, "axial", engine_config(feature_cache_mb=0.5), predictor=pred)
    session.add_box(1, [[40, 30, 12], [80, 70, 12]])
    session.propagate(stop_after=None)
    assert session.feature_cache.nbytes <= 0.5 * 2**20 or len(session.feature_cache.entries) == 1
    calls = pred.encoder_calls
    session.propagate(stop_after=None)
    assert pred.encoder_calls > calls  # evicted slices had to be encoded again


def _report_absent_everywhere(pred):
    """Controlled weights (test setting): SAM2's object-score head then says 'absent' on every slice."""
    head = pred.sam_mask_decoder.pred_obj_score_head
    last = head.layers[-1] if hasattr(head, "layers") else head
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-10.0)


def test_stop_rule_stops_where_object_is_gone(ct):
    """Controlled weights (test setting): the object-score head says 'absent' on every slice."""
    pred = build_predictor(engine_config())
    _report_absent_everywhere(pred)
    session = Session(ct, "axial", engine_config(), predictor=pred)
    session.add_box(1, [[40, 30, 12], [80, 70, 12]])
    report = session.propagate(stop_after=2)
    assert report.stopped[1] == {"forward": 14, "backward": 10}
    scores = session.slice_scores()[1]
    assert np.isnan(scores[15:]).all() and np.isnan(scores[:10]).all()
    assert np.all(scores[10:15] < 0)
    assert report.slices_run == 3 + 3


def test_an_object_prompted_later_is_not_stopped_before_its_own_prompt(ct):
    """Controlled weights (test setting): every slice reads 'absent'; object 2's prompt is 8 slices
    after object 1's, so the forward pass meets it late; it must still be tracked past its prompt."""
    pred = build_predictor(engine_config())
    _report_absent_everywhere(pred)
    session = Session(ct, "axial", engine_config(), predictor=pred)
    session.add_box(1, [[40, 30, 8], [80, 70, 8]])
    session.add_box(2, [[40, 30, 16], [80, 70, 16]])
    report = session.propagate(stop_after=2)
    assert report.stopped[1] == {"forward": 10, "backward": 6}
    assert report.stopped[2]["forward"] == 18  # two absent slices after its prompt on 16, not before it
    assert not np.isnan(session.slice_scores()[2][17])


def test_stop_rule_clears_stale_results_beyond_the_end(ct):
    pred = build_predictor(engine_config())
    session = Session(ct, "axial", engine_config(), predictor=pred)
    session.add_box(1, [[40, 30, 12], [80, 70, 12]])
    session.propagate(stop_after=None)
    assert not np.isnan(session.slice_scores()[1]).any()
    _report_absent_everywhere(pred)  # from now on the model reports the object absent (test setting)
    session.propagate(stop_after=3)
    scores = session.slice_scores()[1]
    assert np.isnan(scores[16:]).all() and np.isnan(scores[:9]).all()
    assert not session.frame_mask(1, 20).any()


def test_several_objects_overlap_goes_to_stronger_logit(predictor, ct):
    session = Session(ct, "axial", engine_config(), predictor=predictor)
    session.add_box(1, [[30, 20, 15], [90, 80, 15]], name="big")
    session.add_box(2, [[50, 40, 15], [70, 60, 15]], name="small")
    session.propagate(stop_after=None)
    lab = session.result()
    for s in (10, 15, 20):
        l1, l2 = session.frame_logits(1, s), session.frame_logits(2, s)
        frame = session.axis.frame(lab.reoriented(lab.reorientation_to("LPS")).array, s)
        both = (l1 > 0) & (l2 > 0)
        np.testing.assert_array_equal(frame[both], np.where(l2[both] > l1[both], 2, 1))
        np.testing.assert_array_equal(frame[(l1 <= 0) & (l2 <= 0)], 0)
    assert {s["name"] for s in lab.meta["segments"]} == {"big", "small"}
    session.remove_object(1)
    assert set(np.unique(session.result().array)) <= {0, 2}
    with pytest.raises(InputError, match="unknown object 1"):
        session.remove_object(1)
    session.reset()
    assert not session.result().array.any() and session.objects == {}


def test_progress_cancel_and_range(predictor, ct):
    session = Session(ct, "axial", engine_config(), predictor=predictor)
    session.add_box(1, [[40, 30, 12], [80, 70, 12]])
    seen = []
    report = session.propagate("forward", slice_range=(0, 16), stop_after=None, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (5, 5) and report.slices_run == 5
    assert np.isnan(session.slice_scores()[1][17:]).all()
    stop = threading.Event()
    calls = []

    def progress(done, total):
        calls.append(done)
        if done == 2:
            stop.set()

    with pytest.raises(CancelledError, match="cancelled"):
        session.propagate("backward", stop_after=None, progress=progress, cancel=stop)
    assert calls == [1, 2]
    session.propagate("backward", stop_after=None)  # still usable after cancelling


def test_bad_prompts_get_clear_errors_and_session_stays_usable(predictor, ct):
    session = Session(ct, "axial", engine_config(), predictor=predictor)
    with pytest.raises(InputError, match="outside the volume"):
        session.add_points(1, [[500, 10, 10]], [1])
    with pytest.raises(InputError, match="slice 40 does not exist.*0..29"):
        session.add_box(1, [1, 1, 20, 20], slice_index=40)
    with pytest.raises(InputError, match="inverted"):
        session.add_box(1, [20, 20, 10, 10], slice_index=3)
    with pytest.raises(InputError, match="empty"):
        session.add_box(1, [[10, 10, 3], [10, 30, 3]])
    with pytest.raises(InputError, match="different axial slices"):
        session.add_points(1, [[10, 10, 3], [10, 10, 4]], [1, 1])
    with pytest.raises(InputError, match="0 \\(negative\\) or 1"):
        session.add_points(1, [[10, 10, 3]], [2])
    with pytest.raises(InputError, match="no objects to propagate"):
        session.propagate()
    with pytest.raises(InputError, match="unknown object 7"):
        session.propagate(objects=[7])
    with pytest.raises(InputError, match="direction"):
        session.propagate("sideways")
    with pytest.raises(InputError, match="unknown slice axis"):
        Session(ct, "oblique", engine_config(), predictor=predictor)
    assert session.objects == {}
    mask = session.add_points(1, [[60, 50, 15]], [1])
    assert mask.shape == (101, 122)
    session.propagate(stop_after=None)


def test_out_of_memory_is_reported_and_session_survives(predictor, ct, monkeypatch):
    session = Session(ct, "axial", engine_config(), predictor=predictor)
    session.add_box(1, [[40, 30, 12], [80, 70, 12]])
    real = type(predictor)._run_single_frame_inference
    state = {"n": 0}

    def flaky(self, *a, **kw):  # test double: the third slice runs out of memory once
        state["n"] += 1
        if state["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, *a, **kw)

    monkeypatch.setattr(type(predictor), "_run_single_frame_inference", flaky)
    with pytest.raises(Sam2VolumeError, match="out of memory.*still usable"):
        session.propagate(stop_after=None)
    session.propagate(stop_after=None)
    assert not np.isnan(session.slice_scores()[1]).any()
