"""RemoteSession against a real server process equals the in-process Session (baseline and SAM2)."""

from __future__ import annotations

import numpy as np
import pytest

from sam2volume import read_volume
from sam2volume.baseline import BaselineSession
from sam2volume.client import RemoteSession

from sam2_helpers import engine_config
from server_helpers import local_server, slab


@pytest.fixture(scope="module")
def ct(totalseg):
    return read_volume(totalseg / "example_ct_sm.nii.gz")


@pytest.fixture(scope="module")
def seg(totalseg, ct):
    from sam2volume.io import read_labelmap

    return read_labelmap(totalseg / "example_seg.nii.gz", reference=ct)


@pytest.fixture(scope="module")
def server():
    with local_server("--idle-timeout", "120", random_weights=True) as s:
        yield s


def _same_results(a, b):
    ra, rb = a.result(), b.result()
    assert np.array_equal(ra.array, rb.array)
    assert ra.array.dtype == rb.array.dtype
    np.testing.assert_allclose(ra.spacing, rb.spacing) and np.testing.assert_allclose(ra.origin, rb.origin)
    assert ra.meta["segments"] == rb.meta["segments"]
    sa, sb = a.slice_scores(), b.slice_scores()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
    for label in a.objects:
        for s in range(a.num_slices):
            assert np.array_equal(a.frame_mask(label, s), b.frame_mask(label, s)), (label, s)
    return ra


def _liver_point(seg, label=5):
    idx = np.argwhere(seg.array == label)
    return idx[len(idx) // 2].tolist()


def test_baseline_remote_equals_local(server, ct, seg):
    local = BaselineSession(ct, "axial")
    with RemoteSession(server.url, ct, "axial", engine="baseline", token=server.token) as remote:
        assert remote.num_slices == local.num_slices and remote.axis == local.axis
        p = _liver_point(seg)
        assert remote.slice_of(p) == local.slice_of(p)
        s = local.slice_of(p)
        for a, b in ((local, remote),):
            m1, m2 = a.add_points(1, [p], name="liver"), b.add_points(1, [p], name="liver")
            assert np.array_equal(m1, m2) and m1.any()
        # physical coordinates, a negative click, a box, a mask prompt: identical masks
        lps = ct.index_to_lps(np.array([p], float))
        assert np.array_equal(local.add_points(1, lps, [0], coords="lps"), remote.add_points(1, lps, [0], coords="lps"))
        sp = _liver_point(seg, 1)
        box = [[sp[0] - 6, sp[1] - 6, sp[2]], [sp[0] + 6, sp[1] + 6, sp[2]]]
        assert np.array_equal(local.add_box(2, box, name="spleen"), remote.add_box(2, box, name="spleen"))
        frame = local.frames_of(seg.array == 2)[s]
        assert np.array_equal(local.add_mask(3, frame, s), remote.add_mask(3, frame, s))
        assert np.array_equal(local.add_mask(4, seg.array == 3, s), remote.add_mask(4, seg.array == 3, s))  # 3D mask
        index, values = local.input_region(s, frame)
        r_index, r_values = remote.input_region(s, frame)
        assert index == r_index and np.array_equal(values, r_values)
        seen, seen_local = [], []
        rep_l = local.propagate("both", stop_after=3, progress=lambda d, t: seen_local.append((d, t)))
        rep_r = remote.propagate("both", stop_after=3, progress=lambda d, t: seen.append((d, t)))
        assert rep_l == rep_r
        assert seen and seen[-1] == seen_local[-1]  # the remote reports progress as it polls, ending where the local did
        _same_results(local, remote)
        # a correction, re-propagated for that object only, and a removed object
        q = _liver_point(seg)
        q[2] = min(q[2] + 4, ct.shape[2] - 1)
        assert np.array_equal(local.add_points(1, [q], [0]), remote.add_points(1, [q], [0]))
        assert local.propagate("forward", objects=[1], start=local.slice_of(q)) == remote.propagate("forward", objects=[1], start=remote.slice_of(q))
        local.remove_object(3)
        remote.remove_object(3)
        assert sorted(remote.objects) == sorted(local.objects) == [1, 2, 4]
        assert remote.objects[1].name == "liver"
        _same_results(local, remote)
        remote.reset()
        local.reset()
        assert not remote.objects and not remote.result().array.any()


def test_streamed_job_delivers_every_slice(server, ct, seg):
    """start_propagation + poll: every finished slice arrives with its masks; the final state equals propagate()."""
    local = BaselineSession(ct, "axial")
    with RemoteSession(server.url, ct, "axial", engine="baseline", token=server.token) as remote:
        p = _liver_point(seg)
        local.add_points(1, [p])
        remote.add_points(1, [p])
        rep = local.propagate("both", stop_after=None)
        job = remote.start_propagation("both", stop_after=None)
        got = {}
        for _ in range(2000):  # bounded
            for r in job.poll(wait=0.2):
                got[r.slice] = r.masks[1]
            if job.finished:
                break
        assert job.finished and job.error is None and job.report == rep
        assert job.progress == (rep.slices_run, rep.slices_run)
        assert sorted(got) == list(range(ct.shape[2]))
        for s, m in got.items():
            assert np.array_equal(m, local.frame_mask(1, s))
        assert remote.uploaded is False  # the first test's session uploaded this volume already


def test_sam2_random_weights_remote_equals_local(server, ct, seg):
    from sam2volume.session import Session

    vol = slab(ct)
    lab = slab(seg)
    cfg = engine_config()
    local = Session(vol, "axial", cfg)
    with RemoteSession(server.url, vol, "axial", cfg, engine="sam2", token=server.token) as remote:
        assert remote.server_config["image_size"] == 128 and remote.server_config["random_weights"]
        idx = np.argwhere(lab.array == 5)
        p = idx[len(idx) // 2].tolist()
        m1, m2 = local.add_points(1, [p]), remote.add_points(1, [p])
        assert np.array_equal(m1, m2)
        box = [[p[0] - 8, p[1] - 8, p[2]], [p[0] + 8, p[1] + 8, p[2]]]
        assert np.array_equal(local.add_box(2, box), remote.add_box(2, box))
        assert local.propagate("both", stop_after=None) == remote.propagate("both", stop_after=None)
        _same_results(local, remote)
        q = [p[0] + 3, p[1], min(p[2] + 2, vol.shape[2] - 1)]
        assert np.array_equal(local.add_points(1, [q], [0]), remote.add_points(1, [q], [0]))
        assert local.propagate("forward", objects=[1]) == remote.propagate("forward", objects=[1])
        _same_results(local, remote)


def test_custom_checkpoint_from_the_servers_own_flags(tmp_path, ct, seg):
    """A checkpoint on the server's disk (--checkpoint/--config), asked for as model 'custom', equals it run locally."""
    import torch

    from sam2volume.engine.config import EngineConfig
    from sam2volume.engine.predictor import build_predictor
    from sam2volume.session import Session

    from sam2_helpers import CONFIG

    cfg = engine_config()
    pred = build_predictor(cfg)
    ckpt = tmp_path / "my_model.pt"
    torch.save({"model": pred.state_dict()}, ckpt)
    vol, lab = slab(ct, 12, 4), slab(seg, 12, 4)
    idx = np.argwhere(lab.array == 5)
    p = idx[len(idx) // 2].tolist()
    local = Session(vol, "axial", cfg, predictor=pred)
    with local_server("--checkpoint", str(ckpt), "--config", CONFIG, "--custom-image-size", "128") as server:
        with RemoteSession(server.url, vol, "axial", EngineConfig(model="custom"), token=server.token) as remote:
            assert remote.server_config["checkpoint"] == str(ckpt) and remote.server_config["image_size"] == 128
            assert np.array_equal(local.add_points(1, [p]), remote.add_points(1, [p]))
            assert local.propagate("both", stop_after=None) == remote.propagate("both", stop_after=None)
            _same_results(local, remote)
