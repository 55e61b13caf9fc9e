"""Bad requests to a real server: the right status and message, and the server goes on serving others."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from sam2volume import Volume, read_volume
from sam2volume.client import RemoteSession, ServerError
from sam2volume.errors import InputError
from sam2volume.server.wire import canonical_json, encode_array, volume_header, volume_id

from server_helpers import local_server, raw


@pytest.fixture(scope="module")
def ct(totalseg):
    return read_volume(totalseg / "example_ct_sm.nii.gz")


@pytest.fixture(scope="module")
def server():
    # small limits: 1 MiB compressed uploads, 400k voxels, 256 KiB JSON bodies, 3 sessions; no random weights
    with local_server("--max-upload-mb", "1", "--max-voxels", "400000", "--max-body-mb", "0.25", "--max-sessions", "3") as s:
        yield s


@pytest.fixture(scope="module")
def bystander(server, ct):
    """A session of another user that every bad request must leave alone."""
    s = RemoteSession(server.url, ct, "axial", engine="baseline", token=server.token)
    s.add_points(1, [[60, 50, 15]])
    yield s
    s.close()


def _upload(server, vol, *, vid=None, body=None):
    body = b"".join(encode_array(volume_header(vol), vol.array)) if body is None else body
    return raw(server, "PUT", f"/v1/volumes/{vid or volume_id(vol)}", body)


def _err(out):
    return out["error"]["type"], out["error"]["message"]


def test_token_is_required_and_checked(server, bystander):
    assert raw(server, "GET", "/health", token=None)[0] == 200  # only the health check is open
    for token in (None, "wrong-token-of-some-length", server.token + "x"):
        status, out = raw(server, "GET", "/v1/stats", token=token)
        assert status == 401 and _err(out)[0] == "AuthError" and "token" in _err(out)[1]
        status, out = raw(server, "POST", f"/v1/sessions/{bystander.id}/reset", token=token)
        assert status == 401
    assert raw(server, "GET", "/models", token=None)[0] == 401
    status, out = raw(server, "GET", "/models")
    assert status == 200 and out["default"] == "medsam2-latest" and out["random_weights"] is False
    with pytest.raises(ServerError, match="token"):
        RemoteSession(server.url, bystander.volume, engine="baseline", token="not-the-token-at-all")


def test_upload_limits(server, ct):
    rng = np.random.default_rng(0)
    noisy = Volume(rng.random((70, 70, 60), dtype=np.float32), meta={"modality": "MR"})  # 294k voxels, ~1.1 MB compressed
    status, out = _upload(server, noisy)
    assert status == 413 and _err(out)[0] == "LimitError" and "--max-upload-mb" in _err(out)[1]
    big = Volume(np.zeros((100, 100, 50), np.int16))  # 500k voxels, a tiny zlib stream
    status, out = _upload(server, big)
    assert status == 413 and "500000 voxels" in _err(out)[1] and "--max-voxels" in _err(out)[1]
    with pytest.raises(ServerError, match="max-voxels"):
        RemoteSession(server.url, big, engine="baseline", token=server.token)
    # wrong hash, truncated stream, a bomb announcing less than it holds, a bad dtype
    small = Volume(np.zeros((20, 20, 10), np.int16))
    status, out = _upload(server, small, vid="0" * 64)
    assert status == 400 and "differs from its id" in _err(out)[1]
    body = b"".join(encode_array(volume_header(small), small.array))
    status, out = _upload(server, small, body=body[:-5])
    assert status == 400 and "truncated" in _err(out)[1]
    header = volume_header(small)
    bomb = canonical_json(header) + b"\n" + zlib.compress(bytes(small.array.nbytes * 4))
    status, out = _upload(server, small, body=bomb)
    assert status == 400 and "more than" in _err(out)[1]
    status, out = _upload(server, small, body=canonical_json({**header, "dtype": "|O"}) + b"\n")
    assert status == 400 and "dtype" in _err(out)[1]
    assert raw(server, "HEAD", f"/v1/volumes/{volume_id(small)}")[0] == 404  # nothing half-stored
    assert raw(server, "PUT", "/v1/volumes/..%2F..%2Fetc", b"")[0] in (400, 404)


def test_malformed_requests(server, ct, bystander):
    sid = bystander.id
    status, out = raw(server, "POST", f"/v1/sessions/{sid}/points", b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and _err(out) [0] == "InputError" and "not valid JSON" in _err(out)[1]
    status, out = raw(server, "POST", f"/v1/sessions/{sid}/points", {"label": "one", "slice": 3, "points": [[1, 2]]})
    assert status == 400 and "label" in _err(out)[1]
    status, out = raw(server, "POST", f"/v1/sessions/{sid}/points", {"label": 1, "slice": 3, "points": [[1, 2]], "path": "/etc"})
    assert status == 400 and "path" in _err(out)[1]
    status, out = raw(server, "POST", f"/v1/sessions/{sid}/points", {"label": 1, "slice": 3, "points": [[1, 2]] * 40000})
    assert status == 413 and "--max-body-mb" in _err(out)[1]
    status, out = raw(server, "POST", f"/v1/sessions/{sid}/points", {"label": 1, "slice": 3, "points": [[1, 2]] * 1001})
    assert status == 400 and "at most 1000" in _err(out)[1]
    status, out = raw(server, "POST", f"/v1/sessions/{sid}/box", {"label": 1, "slice": 3, "box": [1, 2, 3]})
    assert status == 400 and "box" in _err(out)[1]
    status, out = raw(server, "POST", f"/v1/sessions/{sid}/mask", {"label": 1, "slice": 3, "mask": {"shape": [101, 122], "bits": "AAAA"}})
    assert status == 400 and "bytes" in _err(out)[1]


def test_unknown_session_job_and_route(server):
    status, out = raw(server, "POST", "/v1/sessions/nope/points", {"label": 1, "slice": 0, "points": [[1, 1]]})
    assert status == 404 and "unknown session 'nope'" in _err(out)[1]
    status, out = raw(server, "GET", "/v1/jobs/nope/events")
    assert status == 404 and "unknown job 'nope'" in _err(out)[1]
    status, out = raw(server, "POST", "/v1/sessions", {"volume": "f" * 64, "engine": "baseline"})
    assert status == 404 and "upload it" in _err(out)[1]


def test_prompt_outside_the_volume(server, ct, bystander):
    with pytest.raises(InputError, match=r"point \[500.0, 50.0, 15.0\] \(voxel\) lies outside the volume"):
        bystander.add_points(1, [[500, 50, 15]])  # checked before sending, with the local API's message
    status, out = raw(server, "POST", f"/v1/sessions/{bystander.id}/points", {"label": 1, "slice": 15, "points": [[900, 5]]})
    assert status == 400 and _err(out)[0] == "InputError" and "inside the 122x101 slice" in _err(out)[1]
    status, out = raw(server, "POST", f"/v1/sessions/{bystander.id}/box", {"label": 1, "slice": 99, "box": [1, 1, 5, 5]})
    assert status == 400 and "slice 99 does not exist" in _err(out)[1]


def test_other_api_version(server):
    status, out = raw(server, "GET", "/v1/stats", headers={"X-Sam2volume-Api": "2"})
    assert status == 400 and _err(out)[0] == "VersionError" and "speaks version 1" in _err(out)[1]
    status, out = raw(server, "POST", "/v2/sessions", {})
    assert status == 404 and "API version 1" in _err(out)[1]


def test_engine_settings_and_session_cap(server, ct, bystander):
    vid = bystander.volume_id
    status, out = raw(server, "POST", "/v1/sessions", {"volume": vid, "config": {"checkpoint": "/etc/passwd"}})
    assert status == 400 and "cannot name server-side files" in _err(out)[1]
    status, out = raw(server, "POST", "/v1/sessions", {"volume": vid, "config": {"model": "sam2.1-hiera-tiny", "random_weights": True}})
    assert status == 400 and "--allow-random-weights" in _err(out)[1]
    status, out = raw(server, "POST", "/v1/sessions", {"volume": vid, "config": {"model": "sam2.1-hiera-large"}})
    assert status == 400 and "not served here" in _err(out)[1]
    status, out = raw(server, "POST", "/v1/sessions", {"volume": vid, "axis": "oblique", "engine": "baseline"})
    assert status == 400 and "unknown slice axis 'oblique'" in _err(out)[1]
    opened = []
    try:
        for _ in range(5):  # bounded: the cap is 3 (one is the bystander's)
            status, out = raw(server, "POST", "/v1/sessions", {"volume": vid, "engine": "baseline"})
            if status != 200:
                break
            opened.append(out["session"])
        assert len(opened) == 2 and status == 429 and "--max-sessions 3" in _err(out)[1]
    finally:
        for sid in opened:
            raw(server, "DELETE", f"/v1/sessions/{sid}")


def test_bystander_untouched_and_server_up(server, ct, bystander):
    from sam2volume.baseline import BaselineSession

    local = BaselineSession(ct, "axial")
    local.add_points(1, [[60, 50, 15]])
    assert np.array_equal(bystander.frame_mask(1, 15), local.frame_mask(1, 15))
    assert bystander.propagate() == local.propagate()
    assert np.array_equal(bystander.result().array, local.result().array)
    assert raw(server, "GET", "/health", token=None)[1]["status"] == "ok"
    assert json.loads(json.dumps(raw(server, "GET", "/v1/stats")[1]))["sessions"] == 1
