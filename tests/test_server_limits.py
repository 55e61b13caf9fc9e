"""Server limits a hostile or careless client must not get past (issue 19, items 6, 7, 8, 11), on real servers on
127.0.0.1: caps on per-session engine settings, predictors freed with their last session, uploads that stall,
long polls that must not starve other users, and bad values that must come back as 4xx JSON errors, never 500."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
import zlib

import numpy as np
import pytest

from sam2volume import Volume, read_volume
from sam2volume.client import RemoteSession
from sam2volume.server.wire import canonical_json, encode_array, pack_mask, raw_bytes, volume_header, volume_id

from sam2_helpers import engine_config
from server_helpers import big_ct, local_server, raw, slab, stats, wait_for

UPLOAD_TIMEOUT = 5  # --upload-timeout of the limits server (s)


@pytest.fixture(scope="module")
def ct(totalseg):
    return read_volume(totalseg / "example_ct_sm.nii.gz")


@pytest.fixture(scope="module")
def server():
    """Small caps: 12 MiB of stored volumes, engine settings capped, uploads stalled 5 s aborted."""
    with local_server("--max-stored-mb", "12", "--max-upload-mb", "64", "--upload-timeout", str(UPLOAD_TIMEOUT),
                      "--max-image-size", "256", "--max-feature-cache-mb", "512", "--max-encode-ahead", "8",
                      "--max-encode-batch", "4", random_weights=True) as s:
        yield s


@pytest.fixture(scope="module")
def bystander(server, ct):
    """Another user's session: every bad request must leave it (and the server) working."""
    with RemoteSession(server.url, ct, "axial", engine="baseline", token=server.token) as s:
        s.add_points(1, [[60, 50, 15]])
        yield s


def _err(status, out):
    assert 400 <= status < 500, (status, out)  # never a 500
    assert set(out) == {"error"} and set(out["error"]) == {"type", "message"}, out
    return out["error"]["type"], out["error"]["message"]


def _json(server, method, path, body, **kw):
    hdrs = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return raw(server, method, path, body if isinstance(body, bytes) else json.dumps(body).encode(), headers=hdrs, **kw)


def _put(server, vid, body):
    return raw(server, "PUT", f"/v1/volumes/{vid}", body, headers={"Content-Type": "application/octet-stream"})


def _open_put(server, vid, first: bytes, total: int) -> socket.socket:
    """A PUT of ``total`` bytes on a raw socket that sends only ``first`` (the rest is never sent: a stalled client)."""
    parts = urllib.parse.urlsplit(server.url)
    assert parts.hostname == "127.0.0.1"  # loopback only
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    head = (f"PUT /v1/volumes/{vid} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n")
    if server.token:
        head += f"Authorization: Bearer {server.token}\r\n"
    sock.sendall(head.encode("ascii") + b"\r\n" + first)
    return sock


def _answer(sock: socket.socket, timeout: float) -> tuple[int, dict]:
    """The server's answer on a raw socket (TimeoutError if none comes within ``timeout`` s)."""
    sock.settimeout(timeout)
    resp = http.client.HTTPResponse(sock, method="PUT")
    resp.begin()
    return resp.status, json.loads(resp.read())


# ------------------------------------------------------------------------------------------------ item 6
def test_session_settings_over_the_caps_are_refused(server, ct, bystander):
    vid = bystander.volume_id
    base = {"model": "sam2.1-hiera-tiny", "random_weights": True, "image_size": 128, "feature_cache_mb": 64}
    for field, value, option in (("feature_cache_mb", 1e6, "--max-feature-cache-mb"), ("encode_ahead", 4096, "--max-encode-ahead"),
                                 ("encode_batch", 4096, "--max-encode-batch"), ("image_size", 8192, "--max-image-size")):
        status, out = _json(server, "POST", "/v1/sessions", {"volume": vid, "config": {**base, field: value}})
        kind, message = _err(status, out)
        assert status == 400 and kind == "InputError" and f"{field} {value}" in message and option in message, message
    # within the caps it opens; a session that asks nothing gets the server's cap, not the local default (2048 MB)
    status, out = _json(server, "POST", "/v1/sessions", {"volume": vid, "config": {**base, "encode_ahead": 8, "encode_batch": 4}})
    assert status == 200, out
    raw(server, "DELETE", f"/v1/sessions/{out['session']}")
    status, out = _json(server, "POST", "/v1/sessions", {"volume": vid, "config": {k: v for k, v in base.items() if k != "feature_cache_mb"}})
    assert status == 200 and out["config"]["feature_cache_mb"] == 512, out
    raw(server, "DELETE", f"/v1/sessions/{out['session']}")


def test_predictors_are_freed_with_their_last_session(server, ct):
    short = slab(ct, 10, 4)

    def loaded():
        status, out = raw(server, "GET", "/models")
        assert status == 200, out
        return sorted(name for name in out["loaded"] if name.startswith("sam2.1-hiera-tiny@"))

    a = RemoteSession(server.url, short, "axial", engine_config(image_size=128, feature_cache_mb=64), token=server.token)
    b = RemoteSession(server.url, short, "axial", engine_config(image_size=160, feature_cache_mb=64), token=server.token)
    a2 = RemoteSession(server.url, short, "axial", engine_config(image_size=128, feature_cache_mb=64), token=server.token)
    try:
        assert loaded() == ["sam2.1-hiera-tiny@128px (random weights)", "sam2.1-hiera-tiny@160px (random weights)"]
        a.close()  # a2 still uses the 128 px model
        assert loaded() == ["sam2.1-hiera-tiny@128px (random weights)", "sam2.1-hiera-tiny@160px (random weights)"]
        assert a2.add_points(1, [[60, 50, 1]]).shape == tuple(a2.axis.frame_shape)
        a2.close()
        assert loaded() == ["sam2.1-hiera-tiny@160px (random weights)"]
        b.close()
        assert loaded() == []
    finally:
        for s in (a, a2, b):
            s.close()


def test_a_released_predictor_is_garbage():
    """In process: once its last user gives it back, nothing keeps the predictor (its memory goes)."""
    import gc
    import weakref

    from sam2volume.server.config import ServerConfig
    from sam2volume.server.pool import ModelPool

    pool = ModelPool(ServerConfig(device="cpu", allow_random_weights=True))
    cfg = pool.engine_config({"model": "sam2.1-hiera-tiny", "random_weights": True, "image_size": 128, "feature_cache_mb": 64})
    first = pool.predictor(cfg)
    assert pool.predictor(cfg) is first  # shared: two users
    ref = weakref.ref(first)
    del first
    pool.release(cfg)
    gc.collect()
    assert ref() is not None and pool.loaded() == ["sam2.1-hiera-tiny@128px (random weights)"]  # one user left
    pool.release(cfg)
    gc.collect()
    assert ref() is None and pool.loaded() == []


# ------------------------------------------------------------------------------------------------ item 7
def test_upload_limits_are_checked_on_the_header_before_the_body(server):
    header = {"shape": [1000, 1000, 1000], "dtype": "<i2", "spacing": [1, 1, 1], "origin": [0, 0, 0],
              "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1], "modality": "CT"}
    sock = _open_put(server, "a" * 64, canonical_json(header) + b"\n", 10_000_000)  # 9.9 MB announced, never sent
    try:
        status, out = _answer(sock, 20)  # before: no answer until 4 MiB of body had come
    finally:
        sock.close()
    kind, message = _err(status, out)
    assert status == 413 and "1000000000 voxels" in message and "--max-voxels" in message


def test_a_stalled_upload_holds_only_what_it_sent_and_times_out(server):
    rng = np.random.default_rng(0)
    stalled = Volume(rng.random((140, 140, 128), dtype=np.float32), meta={"modality": "MR"})  # 10.0 MB, ~9 MB compressed
    body = b"".join(encode_array(volume_header(stalled), stalled.array))
    sock = _open_put(server, volume_id(stalled), body[: 5 << 20], len(body))  # 5 MiB sent, then nothing
    try:
        wait_for(lambda: stats(server).get("upload_bytes_reserved", 0) > 0, 20)  # its first 4 MiB are inflated
        # another user's 3 MB upload fits in the 12 MiB budget beside it (before: 429 while the upload stalled)
        other = Volume(np.arange(100 * 100 * 150, dtype=np.int16).reshape(100, 100, 150) % 7)
        status, out = _put(server, volume_id(other), b"".join(encode_array(volume_header(other), other.array)))
        assert status == 201, out
        reserved = stats(server)["upload_bytes_reserved"]
        assert 0 < reserved < stalled.array.nbytes // 2 + (1 << 20)  # what has arrived, not the announced 10 MB
        # no progress for --upload-timeout s: aborted with a 408 that names the option, its reservation freed
        status, out = _answer(sock, UPLOAD_TIMEOUT + 25)
    finally:
        sock.close()
    kind, message = _err(status, out)
    assert status == 408 and "--upload-timeout" in message, message
    assert wait_for(lambda: stats(server)["upload_bytes_reserved"] == 0, 10)
    status, out = _put(server, volume_id(stalled), body)  # the whole volume now fits (the unused 3 MB one is evicted)
    assert status == 201, out


# ------------------------------------------------------------------------------------------------ item 8
def test_long_polls_do_not_starve_other_users(totalseg, ct):
    polls = 48  # more than the server's 40 worker threads
    big = big_ct(ct)  # 488 x 404 x 120: a baseline propagation of several seconds with three objects
    with local_server() as srv:
        with RemoteSession(srv.url, big, engine="baseline", token=srv.token) as busy, \
                RemoteSession(srv.url, ct, engine="baseline", token=srv.token) as other:
            for label, point in ((1, [240, 200, 14]), (2, [200, 150, 60]), (3, [300, 250, 100])):
                busy.add_points(label, [point])
            job = busy.start_propagation("both", stop_after=None)
            answered: dict[int, tuple[int, dict]] = {}
            prompt_done = threading.Event()
            early = []  # long polls that answered before the other user's prompt did

            def long_poll(n):
                status, out = raw(srv, "GET", f"/v1/jobs/{job.id}/events?after=1000000&wait=10", timeout=60)
                if not prompt_done.is_set():
                    early.append(n)
                answered[n] = (status, out)

            threads = [threading.Thread(target=long_poll, args=(n,)) for n in range(polls)]
            for t in threads:
                t.start()
            try:
                # every long poll waits in the server (before: each held a worker thread, 40 at most)
                wait_for(lambda: stats(srv).get("long_polls", 0) >= polls, 20, 0.05)
                mask = other.add_points(1, [[60, 50, 15]])  # another user's prompt
                prompt_done.set()
                assert mask.any()
                assert not early, f"{len(early)} long polls answered before the prompt: it waited for a worker thread"
            finally:
                job.cancel()
                for t in threads:
                    t.join(60)
            assert not any(t.is_alive() for t in threads)
            assert sorted(answered) == list(range(polls)) and all(status == 200 for status, _ in answered.values())


def test_long_polls_over_the_cap_are_answered_at_once(ct):
    """--max-long-polls 4: four polls wait (each an open connection), the rest are answered at once, so
    waiting polls never hold more than four connections; the waiting ones still get their answer."""
    cap, polls = 4, 10
    big = big_ct(ct)
    with local_server("--max-long-polls", str(cap)) as srv:
        with RemoteSession(srv.url, big, engine="baseline", token=srv.token) as busy:
            for label, point in ((1, [240, 200, 14]), (2, [200, 150, 60]), (3, [300, 250, 100])):
                busy.add_points(label, [point])
            job = busy.start_propagation("both", stop_after=None)
            answered: dict[int, float] = {}
            t0 = time.monotonic()

            def long_poll(n):
                status, _ = raw(srv, "GET", f"/v1/jobs/{job.id}/events?after=1000000&wait=10", timeout=60)
                assert status == 200
                answered[n] = time.monotonic() - t0

            threads = [threading.Thread(target=long_poll, args=(n,)) for n in range(polls)]
            for t in threads:
                t.start()
            try:
                wait_for(lambda: len(answered) >= polls - cap, 20, 0.05)  # the ones over the cap came back
                assert stats(srv).get("long_polls", 0) <= cap
                assert len(answered) == polls - cap, answered  # the others still wait
            finally:
                job.cancel()
                for t in threads:
                    t.join(60)
            assert sorted(answered) == list(range(polls))


# ----------------------------------------------------------------------------------------------- item 11
def _header_body(header: dict, payload: bytes) -> bytes:
    return json.dumps(header).encode() + b"\n" + zlib.compress(payload)


def test_bad_upload_headers_are_4xx(server):
    small = Volume(np.zeros((8, 8, 4), np.int16))
    good = volume_header(small)
    voxels = zlib.compress(raw_bytes(small.array))
    text = json.dumps(good).encode()
    for what, line in (("NaN spacing", json.dumps({**good, "spacing": [float("nan"), 1.0, 1.0]}).encode()),
                       ("Infinity origin", json.dumps({**good, "origin": [float("inf"), 0.0, 0.0]}).encode()),
                       ("1e999 direction", text.replace(b'"direction": [1.0', b'"direction": [1e999'))):
        assert line != text
        status, out = _put(server, "b" * 64, line + b"\n" + voxels)  # before: 500 InternalError
        kind, message = _err(status, out)
        assert status == 400 and "finite" in message, (what, message)
    # a shape whose int64 product wraps to 0 passed the voxel cap
    status, out = _put(server, "c" * 64, _header_body({**good, "shape": [2**32, 2**32, 2]}, b""))
    kind, message = _err(status, out)
    assert status == 413 and "--max-voxels" in message and str(2**65) in message
    # no dtype (numpy reads None as float64): refused, not stored as float64
    header = {k: v for k, v in good.items() if k != "dtype"}
    payload = np.zeros((8, 8, 4), "<f8").tobytes()
    as_f8 = hashlib.sha256(canonical_json({**header, "dtype": "<f8"}) + b"\n" + payload).hexdigest()
    for hdr in (header, {**header, "dtype": None}):
        status, out = _put(server, as_f8, _header_body(hdr, payload))
        kind, message = _err(status, out)
        assert status == 400 and "no dtype" in message, message
    assert raw(server, "HEAD", f"/v1/volumes/{as_f8}")[0] == 404


def test_bad_values_in_requests_are_4xx_with_the_local_checks(server, bystander):
    sid, path = bystander.id, f"/v1/sessions/{bystander.id}"
    nan_box = b'{"label": 1, "slice": 15, "box": [NaN, 1, 50, 50]}'
    status, out = _json(server, "POST", f"{path}/box", nan_box)
    kind, message = _err(status, out)
    assert status == 400 and "box.0" in message and "finite" in message
    status, out = _json(server, "POST", f"{path}/points", b'{"label": 1, "slice": 15, "points": [[1, Infinity]]}')
    assert status == 400 and "finite" in _err(status, out)[1]
    for name, expected in (("x" * 100_000, "100000 characters"), ("liver\x1b[2J", "printable")):
        status, out = _json(server, "POST", f"{path}/objects", {"label": 2, "name": name})
        kind, message = _err(status, out)
        assert status == 400 and expected in message and len(message) < 400, message
    for color in (b"[NaN, 0, 0]", b"[2, 0, 0]", b"[0.1, 0.2, 0.3, 1]"):
        status, out = _json(server, "POST", f"{path}/objects", b'{"label": 2, "color": ' + color + b"}")
        kind, message = _err(status, out)
        assert status == 400 and "color" in message, message
    h, w = bystander.axis.frame_shape
    empty = pack_mask(np.zeros((h, w), bool))
    status, out = _json(server, "POST", f"{path}/mask", {"label": 1, "slice": 15, "mask": empty})
    kind, message = _err(status, out)
    assert status == 400 and "empty" in message and "slice 15" in message
    for window in (b'{"low": NaN, "high": 100}', b'{"low": 100, "high": -100}'):
        body = b'{"volume": "' + bystander.volume_id.encode() + b'", "engine": "baseline", "window": ' + window + b"}"
        status, out = _json(server, "POST", "/v1/sessions", body)
        kind, message = _err(status, out)
        assert status == 400 and "low" in message, message
    assert stats(server)["sessions"] == 1  # nothing opened
    # path and query parameters: the documented JSON error, not FastAPI's 422 {"detail": ...}
    status, out = raw(server, "GET", "/v1/jobs/nope/events?after=abc")
    kind, message = _err(status, out)
    assert status == 400 and kind == "InputError" and "after" in message and "'abc'" in message
    status, out = raw(server, "DELETE", f"{path}/objects/one")
    kind, message = _err(status, out)
    assert status == 400 and "label" in message and "'one'" in message
    assert bystander.add_points(1, [[62, 50, 15]]).any()  # the other user's session still works


def test_request_id_replay_is_keyed_on_endpoint_and_body(server, bystander):
    path = f"/v1/sessions/{bystander.id}"
    click = {"label": 1, "slice": 15, "points": [[50, 60]]}
    rid = {"X-Request-Id": "replayed-id-0001"}
    status, first = _json(server, "POST", f"{path}/points", click, headers=rid)
    assert status == 200 and "mask" in first
    status, again = _json(server, "POST", f"{path}/points", click, headers=rid)  # a retry: the first answer
    assert status == 200 and again == first
    # the same id on /reset (before: the points answer came back and nothing was reset)
    status, out = _json(server, "POST", f"{path}/reset", b"", headers=rid)
    kind, message = _err(status, out)
    assert status == 409 and kind == "RequestIdReused" and "replayed-id-0001" in message
    status, out = _json(server, "POST", f"{path}/points", {**click, "points": [[55, 60]]}, headers=rid)  # another body
    assert status == 409 and _err(status, out)[0] == "RequestIdReused"
    status, out = _json(server, "POST", f"{path}/jobs", {"direction": "forward"}, headers={"X-Request-Id": "job-id-0001"})
    assert status == 200
    job = out["job"]
    assert wait_for(lambda: raw(server, "GET", f"/v1/jobs/{job}/events?wait=1")[1]["done"], 30)
    status, out = _json(server, "POST", f"{path}/jobs", {"direction": "forward"}, headers={"X-Request-Id": "job-id-0001"})
    assert status == 200 and out["job"] == job  # a retried start: the same job
    status, out = _json(server, "POST", f"{path}/jobs", {"direction": "backward"}, headers={"X-Request-Id": "job-id-0001"})
    assert status == 409 and _err(status, out)[0] == "RequestIdReused"
    status, out = _json(server, "POST", f"{path}/reset", b"", headers={"X-Request-Id": "fresh-id-0002"})
    assert status == 200 and out == {"reset": True}
    assert raw(server, "GET", f"{path}/scores")[1] == {"scores": {}}  # this reset did reset
