"""Simulated prompts: made from the reference's key slices only, reproducible from the seed."""

import numpy as np
import pytest

from sam2volume import InputError, read_labelmap, read_volume
from sam2volume.baseline import BaselineSession
from sam2volume.evaluation.protocols import (
    PROTOCOLS,
    box_prompt,
    correction_click,
    key_slices,
    parse_protocol,
    point_prompts,
    prompt_object,
    rng_for,
)


@pytest.fixture(scope="module")
def liver(totalseg):
    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    lab = read_labelmap(totalseg / "example_seg.nii.gz", reference=ct)
    session = BaselineSession(ct, "axial", window="abdomen")
    return ct, session, session.frames_of(lab.array == 5)


class RecordingSession:
    """Test double: records the prompts a protocol sends (it stands in for an engine, not for the code under test)."""

    def __init__(self, real):
        self.real, self.sent = real, []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def add_box(self, label, box, **kw):
        self.sent.append(("box", kw["slice_index"], list(box)))

    def add_points(self, label, pts, labels, **kw):
        self.sent.append(("points", kw["slice_index"], [list(p) for p in pts], list(labels)))

    def add_mask(self, label, mask, s, **kw):
        self.sent.append(("mask", s, np.asarray(mask).copy()))


def test_key_slices_middle_largest_and_spread(liver):
    _, _, ref = liver
    areas = ref.reshape(len(ref), -1).sum(axis=1)
    occupied = np.flatnonzero(areas)
    assert key_slices(ref, parse_protocol("box-largest")) == [int(np.argmax(areas))]
    assert key_slices(ref, parse_protocol("box-middle")) == [int(occupied[len(occupied) // 2])]
    three = key_slices(ref, parse_protocol("box-3-slices"))
    assert len(three) == 3 and occupied[0] < three[0] < three[1] < three[2] < occupied[-1]


def test_box_points_and_jitter_are_reproducible_and_inside_the_organ(liver):
    _, _, ref = liver
    s = key_slices(ref, parse_protocol("box-largest"))[0]
    mask = ref[s]
    rows, cols = np.nonzero(mask)
    assert box_prompt(mask, 0.0, rng_for(0, "c", "liver")) == [cols.min(), rows.min(), cols.max(), rows.max()]
    j1 = box_prompt(mask, 0.1, rng_for(0, "c", "liver"))
    assert j1 == box_prompt(mask, 0.1, rng_for(0, "c", "liver"))
    assert j1 != box_prompt(mask, 0.1, rng_for(1, "c", "liver")) and j1 != box_prompt(mask, 0.0, rng_for(0, "c", "liver"))
    pts, labels = point_prompts(mask, 3, 2, rng_for(0, "c", "liver"))
    assert labels == [1, 1, 1, 0, 0]
    for (x, y), v in zip(pts, labels):
        assert bool(mask[y, x]) == bool(v)


def test_nothing_but_the_key_slice_of_the_reference_reaches_the_engine(liver):
    _, session, ref = liver
    for name in ("box-jitter", "points-3-neg-1", "mask-middle", "box-3-slices"):
        proto = parse_protocol(name)
        keys = key_slices(ref, proto)
        a, b = RecordingSession(session), RecordingSession(session)
        prompt_object(a, 1, "liver", ref, proto, rng_for(0, "case", "liver"))
        changed = ref.copy()
        others = [s for s in range(len(ref)) if s not in keys]
        # the reference elsewhere changes (half its voxels dropped at random); the key slices stay the
        # key slices (the simulated user only needs the organ's extent to choose them), so prompts must not change
        changed[others] &= np.random.default_rng(0).random(changed[others].shape) < 0.5
        assert key_slices(changed, proto) == keys
        prompt_object(b, 1, "liver", changed, proto, rng_for(0, "case", "liver"))
        assert len(a.sent) == len(keys)
        for x, y in zip(a.sent, b.sent):
            assert x[0] == y[0] and x[1] == y[1]
            assert all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(x[2:], y[2:]))


def test_correction_click_goes_to_the_largest_error_on_the_worst_slice():
    ref = np.zeros((3, 20, 20), bool)
    ref[:, 5:15, 5:15] = True
    pred = ref.copy()
    pred[1, 5:15, 5:9] = False  # 40 missed pixels on slice 1
    pred[2, 0:3, 0:3] = True  # 9 extra pixels on slice 2
    s, (x, y), positive = correction_click(pred, ref)
    assert s == 1 and positive == 1 and 5 <= x < 9 and 5 <= y < 15
    pred[1] = ref[1]
    s, (x, y), positive = correction_click(pred, ref)
    assert (s, positive) == (2, 0) and x < 3 and y < 3
    assert correction_click(ref, ref) is None


def test_protocol_names_and_options():
    assert parse_protocol("box-middle:jitter=0.05,corrections=2").corrections == 2
    assert set(PROTOCOLS) >= {"box-middle", "box-largest", "box-jitter", "point-center", "mask-middle", "box-3-slices", "box-correct-3"}
    with pytest.raises(InputError, match="unknown protocol 'boxes'"):
        parse_protocol("boxes")
    with pytest.raises(InputError, match="protocol option 'size=3'"):
        parse_protocol("box-middle:size=3")
    with pytest.raises(InputError, match="expected a int"):
        parse_protocol("box-middle:corrections=two")
    with pytest.raises(InputError, match="jitter"):
        parse_protocol("box-middle:jitter=2")
