"""Helpers for the engine-server tests: real servers as subprocesses on 127.0.0.1, raw HTTP requests."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
import urllib.parse
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def local_server(*args: str, random_weights: bool = False) -> Iterator[Any]:
    """A real ``sam2volume serve`` process on loopback (CPU), stopped afterwards."""
    from sam2volume.client import start_local_server

    server = start_local_server(device="cpu", allow_random_weights=random_weights, engine_args=args, timeout=120)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def serve_process(*args: str, token_dir: Any, timeout: float = 120.0) -> Iterator[Any]:
    """``sam2volume serve --host 127.0.0.1 --port 0 ARGS`` as it is run by hand (no --token-file unless in ARGS),
    its generated token written under ``token_dir``; yields (url, ready-file dict, log path), stopped afterwards."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    folder = Path(token_dir)
    ready, log = folder / "ready.json", folder / "serve.log"
    env = {**os.environ, "SAM2VOLUME_TOKEN_DIR": str(folder / "tokens")}
    env.pop("SAM2VOLUME_TOKEN", None)
    cmd = [sys.executable, "-m", "sam2volume", "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
           "--ready-file", str(ready), *args]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        assert wait_for(lambda: ready.is_file() or proc.poll() is not None, timeout), "serve did not start"
        assert proc.poll() is None, log.read_text()
        info = json.loads(ready.read_text())
        yield SimpleNamespace(url=info["url"], ready=info, log=log, process=proc, token=None)
    finally:
        stop_process(proc)


def stop_process(proc: Any, timeout: float = 30.0) -> None:
    """Terminate a child process; kill it if it has not ended within ``timeout`` s."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def raw(server: Any, method: str, path: str, body: Any = None, *, token: Any = True, headers: dict[str, str] | None = None,
        timeout: float = 30.0) -> tuple[int, Any]:
    """One request with http.client; returns (status, parsed JSON or raw bytes)."""
    parts = urllib.parse.urlsplit(server.url)
    assert parts.hostname == "127.0.0.1"  # loopback only
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    hdrs = dict(headers or {})
    if token is True:
        token = server.token
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif body:  # as the client sends a volume upload (the server refuses bodies of other types)
        hdrs.setdefault("Content-Type", "application/octet-stream")
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data) if data else None
    except ValueError:
        return resp.status, data


def stats(server: Any) -> dict[str, Any]:
    status, out = raw(server, "GET", "/v1/stats")
    assert status == 200, out
    return out


def wait_for(pred: Any, timeout: float, step: float = 0.1) -> bool:
    """Poll ``pred()`` until true or ``timeout`` s pass (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def run_concurrently(calls: dict[Any, Any], timeout: float) -> dict[Any, Any]:
    """Each ``calls[key]()`` on its own thread, all at once; their results by key. Fails naming every
    call that raised, or if one has not ended ``timeout`` s after the joins began (bounded)."""
    results, errors = {}, []

    def run(key: Any, fn: Any) -> None:
        try:
            results[key] = fn()
        except Exception as exc:  # collected, asserted below
            errors.append(f"{key}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    return results


def big_ct(ct: Any, inplane: int = 4, tiles: int = 4) -> Any:
    """The real CT enlarged (each voxel repeated in-plane, slices tiled) for long propagations."""
    from sam2volume import Volume

    arr = np.repeat(np.repeat(ct.array, inplane, axis=0), inplane, axis=1)
    arr = np.concatenate([arr] * tiles, axis=2)
    return Volume(arr, ct.spacing / np.array([inplane, inplane, 1.0]), ct.origin, ct.direction, {"modality": "CT"})


def slab(vol: Any, first: int = 10, n: int = 6) -> Any:
    """Slices ``first`` to ``first + n - 1`` of a volume, with their place in space (short SAM2 runs)."""
    from sam2volume import Volume

    return Volume(vol.array[:, :, first:first + n].copy(), vol.spacing, vol.index_to_lps(np.array([[0, 0, first]], float))[0],
                  vol.direction, {"modality": "CT"})
