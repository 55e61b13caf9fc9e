"""SAM2's three masks for an ambiguous click (its multimask output), exposed and chosen: in the session,
through the engine server, in the Slicer module's controller; the baseline engine makes none.
SAM2 runs with random weights at 128 px (tests/sam2_helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest

from sam2_helpers import engine_config
from sam2volume import InputError, read_labelmap, read_volume
from sam2volume.baseline import BaselineSession

pytestmark = pytest.mark.sam2
LIVER = 5


@pytest.fixture(scope="module")
def predictor():
    from sam2volume.engine.predictor import build_predictor

    return build_predictor(engine_config())


@pytest.fixture(scope="module")
def ct(totalseg):
    from server_helpers import slab

    return slab(read_volume(totalseg / "example_ct_sm.nii.gz"))


@pytest.fixture(scope="module")
def click(totalseg, ct):
    """A voxel in the liver, on a slice of the test slab."""
    from server_helpers import slab

    lab = slab(read_labelmap(totalseg / "example_seg.nii.gz", reference=read_volume(totalseg / "example_ct_sm.nii.gz")))
    idx = np.argwhere(lab.array == LIVER)
    return idx[len(idx) // 2].tolist()


def session(ct, predictor):
    from sam2volume.session import Session

    return Session(ct, "axial", engine_config(), predictor=predictor)


def test_a_single_click_has_three_candidates_and_each_can_be_chosen(ct, predictor, click):
    sess = session(ct, predictor)
    shown = sess.add_points(1, [click])
    s = sess.slice_of(click)
    c = sess.candidates(1, s)
    assert c.masks.shape == (3, *sess.axis.frame_shape) and c.masks.dtype == bool
    assert c.scores.shape == (3,) and np.all(np.isfinite(c.scores))
    assert c.chosen == int(np.argmax(c.scores))  # SAM2 shows the mask it predicts best
    assert np.array_equal(shown, c.masks[c.chosen])
    assert len({m.tobytes() for m in c.masks}) == 3  # three different masks
    for k in (2, 0, 1):
        got = sess.choose_mask(1, s, k)
        assert np.array_equal(got, c.masks[k]) and np.array_equal(sess.frame_mask(1, s), c.masks[k])
        assert sess.candidates(1, s).chosen == k  # the candidates stay: another can be chosen instead
    # propagation follows the chosen mask: the slice keeps it, the labelmap has it there
    sess.propagate(stop_after=None)
    assert np.array_equal(sess.frame_mask(1, s), c.masks[1])
    index, values = sess.input_region(s, c.masks[1])
    assert np.array_equal(sess.result().array[index] == 1, values)
    assert len(sess.computed_slices(1)) == sess.num_slices


def test_a_chosen_candidate_propagates_as_its_mask_prompt(ct, predictor, click):
    """Choosing candidate k tracks the volume as a mask prompt of that mask does (a fresh session)."""
    a, b = session(ct, predictor), session(ct, predictor)
    a.add_points(1, [click])
    s = a.slice_of(click)
    k = int(np.argmin(a.candidates(1, s).scores))  # not SAM2's own pick
    mask = a.choose_mask(1, s, k)
    b.add_mask(1, mask, s)
    a.propagate(stop_after=None)
    b.propagate(stop_after=None)
    others = [x for x in range(a.num_slices) if x != s]
    dice = [2 * (a.frame_mask(1, x) & b.frame_mask(1, x)).sum() / max(1, a.frame_mask(1, x).sum() + b.frame_mask(1, x).sum())
            for x in others]
    assert min(dice) > 0.9  # the same conditioning mask, up to its resampling into SAM2's grid


def test_candidates_only_for_a_single_click(ct, predictor, click):
    sess = session(ct, predictor)
    s = sess.slice_of(click)
    sess.add_points(1, [click, [click[0] + 6, click[1], click[2]]], [1, 1])  # two points: one mask
    assert sess.candidates(1, s) is None
    with pytest.raises(InputError, match="no mask candidates"):
        sess.choose_mask(1, s, 0)
    sess.add_points(2, [click])
    assert sess.candidates(2, s) is not None
    with pytest.raises(InputError, match="candidate 3 does not exist"):
        sess.choose_mask(2, s, 3)
    with pytest.raises(InputError, match="candidate True does not exist"):
        sess.choose_mask(2, s, True)
    sess.add_points(2, [[click[0] + 6, click[1], click[2]]], [0])  # a second point there: candidates go
    assert sess.candidates(2, s) is None
    sess.add_box(3, [[click[0] - 8, click[1] - 8, click[2]], [click[0] + 8, click[1] + 8, click[2]]])
    assert sess.candidates(3, s) is None
    sess.add_points(4, [click])
    sess.add_mask(4, sess.frame_mask(4, s), s)
    assert sess.candidates(4, s) is None
    with pytest.raises(InputError, match="unknown object 9"):
        sess.candidates(9, s)
    sess.remove_object(2)
    sess.add_points(2, [click, [click[0] + 6, click[1], click[2]]])
    assert sess.candidates(2, s) is None


def test_the_baseline_makes_no_candidates(ct, click):
    base = BaselineSession(ct, "axial")
    base.add_points(1, [click])
    s = base.slice_of(click)
    assert base.candidates(1, s) is None
    with pytest.raises(InputError, match="they come from SAM2"):
        base.choose_mask(1, s, 0)


def test_remote_candidates_equal_the_local_session(ct, predictor, click):
    from sam2volume.client import RemoteSession
    from sam2volume.session import Session
    from server_helpers import local_server

    local = Session(ct, "axial", engine_config())  # the server builds the same random weights (seed 0)
    s = local.slice_of(click)
    with local_server(random_weights=True) as server, \
            RemoteSession(server.url, ct, "axial", engine_config(), engine="sam2", token=server.token) as remote:
        assert np.array_equal(local.add_points(1, [click]), remote.add_points(1, [click]))
        lc, rc = local.candidates(1, s), remote.candidates(1, s)
        assert np.array_equal(lc.masks, rc.masks) and np.allclose(lc.scores, rc.scores) and lc.chosen == rc.chosen
        k = (lc.chosen + 1) % 3
        assert np.array_equal(local.choose_mask(1, s, k), remote.choose_mask(1, s, k))
        assert np.array_equal(remote.frame_mask(1, s), lc.masks[k]) and remote.candidates(1, s).chosen == k
        local.propagate(stop_after=None)
        remote.propagate(stop_after=None)
        assert np.array_equal(local.result().array, remote.result().array)
        remote.add_points(2, [click, [click[0] + 6, click[1], click[2]]])
        assert remote.candidates(2, s) is None
        with pytest.raises(InputError, match="no mask candidates"):
            remote.choose_mask(2, s, 0)
        with pytest.raises(InputError, match="candidate 5 does not exist"):
            remote.choose_mask(1, s, 5)
    with local_server() as server, RemoteSession(server.url, ct, "axial", engine="baseline", token=server.token) as base:
        base.add_points(1, [click])
        assert base.candidates(1, s) is None


def test_slicer_controller_choice_is_kept_in_the_prompt_log(ct, predictor, click):
    """The module's controller (no Slicer import) with an in-process SAM2 session: a chosen candidate is
    written as that slice's update and replayed as a mask prompt when the session is rebuilt."""
    import slicer_scene  # noqa: F401  (puts the module folder on sys.path)
    from SegmentWithSAM2Lib.controller import SegmentationController
    from sam2volume.session import Session

    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.c_[np.r_[ct.direction * ct.spacing, np.zeros((1, 3))], np.r_[ct.origin, 1.0]]
    factory = lambda volume, axis: Session(volume, axis, engine_config(), predictor=predictor)  # noqa: E731
    c = SegmentationController(ct.array.transpose(2, 1, 0), ijk_to_ras, factory)
    slice_to_ras = np.eye(4)
    slice_to_ras[:3, 3] = (ijk_to_ras @ np.r_[click, 1.0])[:3]
    slice_to_ras[:3, :3] = np.diag([-1.0, 1.0, 1.0])  # Slicer's axial view: x = left-right, y = posterior-anterior
    c.add_points("liver", [slice_to_ras[:3, 3]], [True], slice_to_ras)
    cand = c.candidates("liver")
    assert cand is not None and cand.masks.shape[0] == 3
    k = (cand.chosen + 1) % 3
    u = c.choose_mask("liver", k)
    s = c.prompts[-1].slice
    assert c.prompts[-1].kind == "choice" and np.array_equal(c.prompts[-1].mask, cand.masks[k])
    _, values = c.session.input_region(s, cand.masks[k])
    assert np.array_equal(u.mask_kji, np.expand_dims(values, c.voxel_axis).transpose(2, 1, 0))
    c.rebuild(factory)  # new engine settings: the prompts are replayed, the choice with them
    assert np.array_equal(c.session.frame_mask(1, s), cand.masks[k])
    # on an engine without candidates (the baseline) the choice is replayed as its mask
    c.rebuild(lambda volume, axis: BaselineSession(volume, axis))
    assert np.array_equal(c.session.frame_mask(1, s), cand.masks[k])
    c.undo_last_prompt("liver")  # the choice taken back: the click alone again
    assert c.prompts[-1].kind == "points" and len(c.prompts) == 1
