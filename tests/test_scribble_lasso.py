"""Scribble and lasso prompts: a lasso is its filled polygon as a mask prompt, a scribble points sampled
along it; in the core sessions (baseline and SAM2), the prompts file, the engine server and the Slicer
module (on slicer-core, with real markups curves and closed curves)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sam2volume import InputError, read_labelmap, read_volume
from sam2volume.baseline import BaselineSession
from sam2volume.prompts import apply_prompts, load_prompts, plan_prompts
from sam2volume.strokes import MAX_STROKE_POINTS, SCRIBBLE_MAX_POINTS, SCRIBBLE_SPACING_PX, rasterise_polygon, sample_scribble

LIVER, K = 5, 14  # the liver's label in example_seg, and a slice through it


@pytest.fixture(scope="module")
def ct(totalseg):
    return read_volume(totalseg / "example_ct_sm.nii.gz")


@pytest.fixture(scope="module")
def liver(totalseg, ct):
    return read_labelmap(totalseg / "example_seg.nii.gz", reference=ct).array == LIVER


def liver_polygon(liver, k=K, n=12):
    """A polygon (voxel i, j, k) around the liver on slice k: points on its outline, by angle around its centre."""
    ij = np.argwhere(liver[:, :, k])
    centre = ij.mean(axis=0)
    angles = np.arctan2(ij[:, 1] - centre[1], ij[:, 0] - centre[0])
    out = []
    for a in np.linspace(-np.pi, np.pi, n, endpoint=False):
        near = ij[np.abs(np.angle(np.exp(1j * (angles - a)))) < np.pi / n]
        far = near[np.argmax(np.linalg.norm(near - centre, axis=1))] if len(near) else centre
        out.append([float(far[0]), float(far[1]), float(k)])
    return np.array(out)


def liver_scribble(liver, k=K):
    """A polyline (voxel i, j, k) through the liver on slice k: from one end of its pixels to the other via the centre."""
    ij = np.argwhere(liver[:, :, k]).astype(float)
    centre = ij[np.argmin(np.linalg.norm(ij - ij.mean(axis=0), axis=1))]
    a, b = ij[np.argmin(ij[:, 0])], ij[np.argmax(ij[:, 0])]
    return np.array([[*a, k], [*centre, k], [*b, k]])


def frame_xy(session, ijk):
    """Voxel indices on one slice -> that slice and the frame's (x, y) pixels, as the session maps them."""
    return session._to_frame(np.asarray(ijk, float), "voxel", None)


# ------------------------------------------------------------------------------------------- strokes
def test_a_polygon_is_filled_on_the_pixel_grid():
    rect = rasterise_polygon(np.array([[2, 3], [9, 3], [9, 7], [2, 7]]), (12, 15))  # x = column, y = row
    want = np.zeros((12, 15), bool)
    want[3:8, 2:10] = True
    assert np.array_equal(rect, want)
    tri = np.array([[1.0, 1.0], [30.0, 4.0], [8.0, 25.0]])
    got = rasterise_polygon(tri, (28, 33))
    yy, xx = np.mgrid[:28, :33]

    def side(p, q):  # signed distance of pixel centres from edge p->q (positive inside for this winding)
        d = q - p
        return (d[0] * (yy - p[1]) - d[1] * (xx - p[0])) / np.hypot(*d)

    dist = np.min([side(tri[i], tri[(i + 1) % 3]) for i in range(3)], axis=0)
    assert got[dist > 0.01].all()  # every pixel whose centre is inside
    assert not got[dist < -1.0].any()  # nothing more than a pixel outside the outline


def test_a_scribble_becomes_points_at_least_the_spacing_apart_with_both_ends():
    line = np.array([[0.0, 0.0], [35.0, 0.0]])
    pts = sample_scribble(line)
    assert np.array_equal(pts[0], line[0]) and np.array_equal(pts[-1], line[-1])
    steps = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    assert len(pts) == 4 and np.allclose(steps, steps[0]) and steps.min() >= SCRIBBLE_SPACING_PX
    bent = sample_scribble(np.array([[0.0, 0.0], [40.0, 0.0], [40.0, 40.0]]))  # along the line, round the corner
    assert len(bent) == 9 and [40.0, 0.0] in bent.tolist()
    long = sample_scribble(np.array([[0.0, 0.0], [500.0, 0.0]]))
    assert len(long) == SCRIBBLE_MAX_POINTS and np.allclose(long[:, 0], np.linspace(0, 500, SCRIBBLE_MAX_POINTS))
    assert sample_scribble(np.array([[4.0, 5.0], [4.0, 5.0]])).tolist() == [[4.0, 5.0]]  # a click
    assert len(sample_scribble(np.array([[0.0, 0.0], [3.0, 0.0]]))) == 2


# ------------------------------------------------------------------------------------- core sessions
def test_a_lasso_is_the_mask_prompt_of_its_filled_polygon(ct, liver):
    poly = liver_polygon(liver)
    a, b, c = BaselineSession(ct, "axial"), BaselineSession(ct, "axial"), BaselineSession(ct, "axial")
    s, xy = frame_xy(a, poly)
    region = rasterise_polygon(xy, a.axis.frame_shape)
    frame_liver = a.frames_of(liver)[s]
    assert (region & frame_liver).sum() > 0.8 * frame_liver.sum()  # the polygon goes round the liver
    m1 = a.add_lasso(1, poly)
    m2 = b.add_mask(1, region, s)
    m3 = c.add_lasso(1, ct.index_to_ras(poly), coords="ras")
    assert np.array_equal(m1, region) and np.array_equal(m1, m2) and np.array_equal(m1, m3)
    a.propagate()
    b.propagate()
    assert np.array_equal(a.result().array, b.result().array)


@pytest.mark.parametrize("positive", [True, False])
def test_a_scribble_equals_the_points_sampled_along_it(ct, liver, positive):
    line = liver_scribble(liver)
    a, b = BaselineSession(ct, "axial"), BaselineSession(ct, "axial")
    s, xy = frame_xy(a, line)
    if not positive:  # a negative scribble cuts a mask already there
        for x in (a, b):
            x.add_box(1, [[line[:, 0].min() - 5, line[:, 1].min() - 15, K], [line[:, 0].max() + 5, line[:, 1].max() + 15, K]])
    pts = sample_scribble(xy)
    assert 3 <= len(pts) <= SCRIBBLE_MAX_POINTS
    m1 = a.add_scribble(1, line, positive)
    m2 = b.add_points(1, pts, [int(positive)] * len(pts), coords="frame", slice_index=s)
    assert np.array_equal(m1, m2) and (m1.any() or not positive)
    a.propagate()
    b.propagate()
    assert np.array_equal(a.result().array, b.result().array)


def test_bad_strokes_are_refused_before_any_model_work(ct, liver):
    from sam2_helpers import engine_config
    from sam2volume.session import Session

    session = Session(ct, "axial", engine_config())  # its model is built on first use
    poly = liver_polygon(liver)
    cases = [
        (lambda: session.add_lasso(1, np.r_[poly[:3], [[60.0, 50.0, K + 1]]]), "different axial slices"),
        (lambda: session.add_scribble(1, [[50, 40, K], [70, 55, K + 2]]), "different axial slices"),
        (lambda: session.add_lasso(1, poly[:2]), "lasso needs 3"),
        (lambda: session.add_lasso(1, [[50, 40, K], [60, 40, K], [70, 40, K]]), "encloses 0.00 pixels"),
        (lambda: session.add_scribble(1, np.tile([50.0, 40.0, K], (MAX_STROKE_POINTS + 1, 1))), f"1 to {MAX_STROKE_POINTS} points"),
        (lambda: session.add_scribble(1, [[50, 40, K]], positive=1), "positive must be True"),
        (lambda: session.add_scribble(1, [[50, 40], [60, 40]]), r"shape \(N, 3\)"),
        (lambda: session.add_scribble(1, [[50, 40], [60, 40]], coords="frame"), "need slice_index"),
        (lambda: session.add_lasso(1, [[500, 40, K], [60, 40, K], [60, 80, K]]), "outside the volume"),
        (lambda: session.add_scribble(1, [[50, 40, K], [60, 40]]), "list of coordinates"),
    ]
    for call, words in cases:
        with pytest.raises(InputError, match=words):
            call()
    assert session._predictor is None  # refused before the model was built
    assert not session.objects


@pytest.mark.sam2
def test_sam2_lasso_and_scribble_equal_their_mask_and_points(ct, liver):
    from sam2_helpers import engine_config
    from sam2volume.engine.predictor import build_predictor
    from sam2volume.session import Session

    predictor = build_predictor(engine_config())
    a, b = Session(ct, "axial", engine_config(), predictor=predictor), Session(ct, "axial", engine_config(), predictor=predictor)
    poly, line = liver_polygon(liver), liver_scribble(liver, K + 2)
    s, xy = frame_xy(a, poly)
    s2, xy2 = frame_xy(a, line)
    pts = sample_scribble(xy2)
    assert np.array_equal(a.add_lasso(1, poly), b.add_mask(1, rasterise_polygon(xy, a.axis.frame_shape), s))
    assert np.array_equal(a.add_scribble(1, line, True), b.add_points(1, pts, [1] * len(pts), coords="frame", slice_index=s2))
    a.propagate(stop_after=None, slice_range=(s - 2, s2 + 2))
    b.propagate(stop_after=None, slice_range=(s - 2, s2 + 2))
    assert np.array_equal(a.result().array, b.result().array)


# --------------------------------------------------------------------------------------- prompts file
def test_prompts_file_scribbles_and_lassos_round_trip(ct, liver, tmp_path):
    poly, line = liver_polygon(liver), liver_scribble(liver, K + 2)
    doc = {"objects": [{"name": "liver", "label": 1,
                        "lassos": [{"points": poly.tolist()}],
                        "scribbles": [{"points": line.tolist(), "positive": True}, {"points": line[:2].tolist(), "positive": False}]}]}
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(doc))
    prompts = load_prompts(path)
    obj = prompts.objects[0]
    assert obj.lassos == [poly.tolist()] and obj.scribbles == [(line.tolist(), True), (line[:2].tolist(), False)]
    from_file = BaselineSession(ct, "axial")
    apply_prompts(from_file, prompts, plan_prompts(from_file, prompts))
    direct = BaselineSession(ct, "axial")
    direct.add_scribble(1, line, True)
    direct.add_scribble(1, line[:2], False)
    direct.add_lasso(1, poly)
    for s in (K, K + 2):
        assert np.array_equal(from_file.frame_mask(1, s), direct.frame_mask(1, s)) and direct.frame_mask(1, s).any()
    assert from_file.objects[1].name == "liver"


@pytest.mark.parametrize("entry, words", [
    ({"scribbles": [{"points": [[50, 40, 14]], "positive": True, "width": 2}]}, "unknown key"),
    ({"scribbles": [{"points": [[50, 40, 14]], "positive": 1}]}, "JSON boolean"),
    ({"scribbles": [[[50, 40, 14]]]}, "expected"),
    ({"lassos": [{"points": [[50, 40, 14], [60, 40, 14]]}]}, "lasso needs 3"),
    ({"lassos": [{"points": [[50, 40, 14], [60, 40, 14], [60, "a", 14]]}]}, "lasso 1, point 3"),
    ({"lassos": [{"points": [[50, 40, 14], [60, 40, 14], [60, 60, 15]]}]}, "lasso 1: prompt points lie on different axial slices"),
    ({"scribbles": [{"points": [[50, 40, 14], [60, 40, 16]]}]}, "scribble 1: prompt points lie on different"),
])
def test_prompts_file_strokes_are_checked_strictly(ct, tmp_path, entry, words):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"objects": [{"name": "liver", **entry}]}))
    with pytest.raises(InputError, match=words):
        prompts = load_prompts(path)
        plan_prompts(BaselineSession(ct, "axial"), prompts)


def test_segment_command_takes_scribbles_and_lassos_and_refuses_a_bad_one(ct, liver, totalseg, tmp_path, capsys):
    from sam2volume.cli import main

    poly, line = liver_polygon(liver), liver_scribble(liver, K + 2)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"objects": [{"name": "liver", "lassos": [{"points": poly.tolist()}],
                                              "scribbles": [{"points": line.tolist()}]}]}))
    out = tmp_path / "out" / "liver.nii.gz"
    assert main(["segment", str(totalseg / "example_ct_sm.nii.gz"), "--prompts", str(good), "-o", str(out), "--engine", "baseline"]) == 0
    direct = BaselineSession(ct, "axial")
    direct.add_scribble(1, line)
    direct.add_lasso(1, poly)
    direct.propagate()
    assert np.array_equal(read_labelmap(out, reference=ct).array, direct.result().array)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"objects": [{"name": "liver", "lassos": [{"points": np.r_[poly[:3], [[60.0, 50.0, K + 1]]].tolist()}]}]}))
    capsys.readouterr()
    assert main(["segment", str(totalseg / "example_ct_sm.nii.gz"), "--prompts", str(bad), "-o", str(tmp_path / "b" / "x.nii.gz"),
                 "--engine", "baseline"]) == 2
    err = capsys.readouterr().err
    assert "lasso 1: prompt points lie on different axial slices" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_prompts_file_refuses_a_repeated_key_in_a_stroke(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text('{"objects": [{"name": "liver", "scribbles": [{"points": [[50, 40, 14]], "positive": true, "positive": false}]}]}')
    with pytest.raises(InputError, match="'positive' appears twice"):
        load_prompts(path)


# --------------------------------------------------------------------------------------------- server
def test_remote_scribble_and_lasso_equal_the_local_session(ct, liver):
    from sam2volume.client import RemoteSession
    from server_helpers import local_server, raw

    poly, line = liver_polygon(liver), liver_scribble(liver, K + 2)
    local = BaselineSession(ct, "axial")
    with local_server() as server, RemoteSession(server.url, ct, "axial", engine="baseline", token=server.token) as remote:
        assert np.array_equal(local.add_lasso(1, poly, name="liver"), remote.add_lasso(1, poly, name="liver"))
        assert np.array_equal(local.add_scribble(2, line), remote.add_scribble(2, line))
        lps = ct.index_to_lps(line[:2])
        assert np.array_equal(local.add_scribble(2, lps, False, coords="lps"), remote.add_scribble(2, lps, False, coords="lps"))
        local.propagate()
        remote.propagate()
        assert np.array_equal(local.result().array, remote.result().array)
        # the server's own bounds: points per stroke, and its checks, as JSON errors
        path = f"/v1/sessions/{remote.id}"
        status, body = raw(server, "POST", f"{path}/lasso", {"label": 1, "slice": K, "points": [[1.0, 1.0]] * 1001})
        assert status == 400 and body["error"]["type"] == "InputError" and "points" in body["error"]["message"]
        status, body = raw(server, "POST", f"{path}/scribble", {"label": 1, "slice": K, "points": [[1.0, 1.0]], "positive": "yes"})
        assert status == 400 and "positive" in body["error"]["message"]
        status, body = raw(server, "POST", f"{path}/lasso", {"label": 1, "slice": K, "points": [[1.0, 1.0], [5.0, 1.0], [9.0, 1.0]]})
        assert status == 400 and "encloses" in body["error"]["message"]
        with pytest.raises(InputError, match="1 to 1000 points"):  # refused here, before sending
            remote.add_scribble(1, np.tile([50.0, 40.0, K], (1001, 1)))


# ------------------------------------------------------------------------------------ Slicer module
def test_slicer_curves_reach_the_engine_at_their_control_points(totalseg, ct, liver):
    import slicer_scene as sc
    import slicer

    from SegmentWithSAM2Lib.engine_link import Settings
    from SegmentWithSAM2Lib.logic import SegmentWithSAM2Logic, curve_points

    settings = Settings(mode="local", engine="baseline", device="cpu", window="abdomen", stopAfter=3)
    sc.fresh_scene()
    node = sc.load_volume(totalseg / "example_ct_sm.nii.gz", "ct")
    link = sc.engine_link()
    logic = SegmentWithSAM2Logic(link=link)
    try:
        seg, sid = logic.prepareSegmentation(node)
        poly, line = liver_polygon(liver), liver_scribble(liver, K + 2)
        lasso = logic.prompts.get("lasso")
        assert lasso.IsA("vtkMRMLMarkupsClosedCurveNode") and lasso.GetCurveTypeAsString(lasso.GetCurveType()) == "linear"
        for v in poly:
            lasso.AddControlPointWorld(*sc.ras_of(node, v))
        logic.addLasso(node, seg, sid, lasso, sc.slice_node("Red", sc.ras_of(node, [0, 0, K])), settings)
        c = logic.controllers[(node.GetID(), seg.GetID())]
        assert c.prompts[-1].kind == "lasso"
        np.testing.assert_allclose(c.prompts[-1].ijk, poly, atol=1e-6)  # exactly the control points' voxels
        scribble = logic.prompts.get("negative_scribble")
        assert scribble.IsA("vtkMRMLMarkupsCurveNode") and scribble.GetID() != lasso.GetID() and lasso.GetLocked()
        positive = logic.prompts.get("scribble")
        for v in line:
            positive.AddControlPointWorld(*sc.ras_of(node, v))
        logic.addScribble(node, seg, sid, positive, sc.slice_node("Red", sc.ras_of(node, [0, 0, K + 2])), settings)
        np.testing.assert_allclose(c.prompts[-1].ijk, line, atol=1e-6)
        assert c.prompts[-1].labels == [1] and np.array_equal(curve_points(positive), [sc.ras_of(node, v) for v in line])
        # the segment holds what the engine makes of those voxels
        want = BaselineSession(c.volume, "axial", window="abdomen")
        want.add_lasso(1, poly)
        want.add_scribble(1, line, True)
        got = sc.segment_array(seg, sid, node)
        assert np.array_equal(got, sc.result_kji(want.result().array == 1)) and got[K].any() and got[K + 2].any()
        # a curve off the slice shown is refused; nothing is written
        off = logic.prompts.get("scribble")
        off.AddControlPointWorld(*sc.ras_of(node, [60, 50, K]))
        off.AddControlPointWorld(*sc.ras_of(node, [70, 50, K + 1]))
        with pytest.raises(InputError, match="slice spacings"):
            logic.addScribble(node, seg, sid, off, sc.slice_node("Red", sc.ras_of(node, [0, 0, K])), settings)
        assert np.array_equal(sc.segment_array(seg, sid, node), got)
        # undo takes the scribble back and removes its curve
        logic.undoLastPrompt(node, seg, sid)
        assert slicer.mrmlScene.GetNodeByID(positive.GetID()) is None and not sc.segment_array(seg, sid, node)[K + 2].any()
    finally:
        logic.reset()
        link.stop()
