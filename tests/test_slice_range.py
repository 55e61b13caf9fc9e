"""propagate(slice_range=...) refuses, before any model work, an object whose prompts all lie outside the
range (it would not propagate: the baseline returned nothing in the range, SAM2 tracked it from afar);
an object with at least one prompt inside the range propagates as before."""

import pytest
from sam2_helpers import engine_config

from sam2volume import InputError, read_volume
from sam2volume.baseline import BaselineSession

BOX = [[40, 30, 14], [80, 70, 14]]


@pytest.fixture(scope="module")
def ct(totalseg):
    return read_volume(totalseg / "example_ct_sm.nii.gz")


def _refuses_then_works(session):
    s = session.box_on_slice(BOX)[0]
    session.add_box(1, BOX, name="liver")
    far = (0, s - 6) if s >= 6 else (s + 6, session.num_slices - 1)
    before = session.encoder_calls
    with pytest.raises(InputError) as err:
        session.propagate("both", slice_range=far, stop_after=None)
    assert str(err.value).startswith(f"object 1 (liver) is prompted only on slice(s) {s}, outside slice_range ({far[0]}, {far[1]})")
    assert "add a prompt inside the range, widen slice_range" in str(err.value)
    assert session.encoder_calls == before  # refused before any model work
    near = (max(0, s - 2), min(session.num_slices - 1, s + 2))
    report = session.propagate("both", slice_range=near, stop_after=None)  # the session is still usable
    assert report.slices_run > 0 and set(session.computed_slices(1)) <= set(range(near[0], near[1] + 1)) | {s}
    other = far[1] if far[0] == 0 else far[0]
    session.add_box(1, session.box_on_slice(BOX)[1:], slice_index=other)  # a second prompt inside the far range
    session.propagate("both", slice_range=far, stop_after=None)
    assert other in session.computed_slices(1)


def test_baseline_refuses_an_object_prompted_only_outside_the_range(ct):
    _refuses_then_works(BaselineSession(ct, "axial"))


@pytest.mark.sam2
def test_sam2_session_refuses_an_object_prompted_only_outside_the_range(ct):
    from sam2volume.session import Session

    _refuses_then_works(Session(ct, "axial", engine_config()))


def test_objects_left_out_with_objects_are_not_checked(ct):
    session = BaselineSession(ct, "axial")
    s = session.box_on_slice(BOX)[0]
    session.add_box(1, BOX)
    session.add_box(2, session.box_on_slice(BOX)[1:], slice_index=s + 8)
    with pytest.raises(InputError, match=r"object 1 \(object_1\) is prompted only"):
        session.propagate(slice_range=(s + 6, s + 10))
    session.propagate(objects=[2], slice_range=(s + 6, s + 10))
