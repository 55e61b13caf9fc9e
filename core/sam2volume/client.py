"""A session on a remote engine server, with the interface of :class:`sam2volume.session.Session`.

Needs numpy and the standard library only (no torch, SAM2, FastAPI or image readers), so it runs
inside 3D Slicer's Python without installing anything. Prompts are checked here, with the same
messages as a local session, before anything is sent; geometry (``slice_of``, ``input_region``)
is computed here; the engine runs on the server. Protocol: see ``sam2volume.server`` and the
README's "Engine server" section.

    with RemoteSession("http://gpu-box:8765", volume, "axial", token=token) as session:
        mask = session.add_points(1, [[120, 88, 40]])
        session.propagate()
        labelmap = session.result()
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import errors
from .errors import CancelledError, InputError, Sam2VolumeError
from .server import API_HEADER, API_VERSION, REQUEST_ID
from .server.wire import decode_array, encode_array, scores_from_json, unpack_mask, volume_header, volume_id
from .session_base import MaskCandidates, PropagationReport, SessionBase
from .volume import Volume
from .windowing import Window

__all__ = ["RemoteSession", "RemoteJob", "SliceResult", "ServerError", "LocalServer", "RemoteEngine", "start_local_server",
           "launch_local_server", "read_token", "check_server", "engine_settings", "load_model", "load_status", "cancel_load"]

#: EngineConfig fields a remote session sends (the server picks the device; paths never travel)
_CONFIG_FIELDS = ("model", "image_size", "dtype", "offload_state_to_cpu", "feature_cache_mb", "random_weights", "seed",
                  "encode_batch", "encode_ahead")
_ERROR_TYPES = {name: getattr(errors, name) for name in (
    "Sam2VolumeError", "InputError", "GeometryMismatchError", "UnevenSpacingError", "ModelError", "WeightsNotAvailableError", "CancelledError")}


class ServerError(Sam2VolumeError):
    """The server cannot be reached, timed out, refused the request (token, limit, version) or failed."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None, kind: str | None = None):
        super().__init__(message)
        self.url, self.status, self.kind = url, status, kind


def read_token(token: str | None = None, token_file: str | os.PathLike[str] | None = None, url: str | None = None) -> str | None:
    """The token: given, else from ``token_file``, else ``$SAM2VOLUME_TOKEN``, else, for a loopback ``url``,
    the one a ``sam2volume serve`` on that port wrote for itself (:mod:`sam2volume.server.token_files`), else None."""
    from .server.token_files import local_token_for, read_token_text

    if token:
        return token
    if token_file:
        p = Path(token_file)
        if not p.is_file():
            raise InputError(f"token file {p} does not exist")
        return read_token_text(p) or None  # InputError (one sentence) for an unreadable or non-UTF-8 file
    return os.environ.get("SAM2VOLUME_TOKEN") or (local_token_for(url) if url else None)


class _Http:
    """One keep-alive HTTP connection to the server (thread-safe); every failure is a ServerError."""

    def __init__(self, url: str, token: str | None, timeout: float):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"server URL {url!r} must look like http://HOST:PORT (https behind a TLS proxy)")
        self.url = url.rstrip("/")
        self._parts = parts
        self._base = parts.path.rstrip("/")
        self.token = token
        self.timeout = float(timeout)
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._last = 0.0

    #: a connection idle this long is replaced before use: the server (30 s) or a proxy may have closed it
    IDLE_REUSE_S = 5.0

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        return cls(self._parts.hostname, self._parts.port, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None, *, timeout: float | None = None,
                chunked: bool = False, ok: Sequence[int] = (200, 201)) -> tuple[int, bytes]:
        # the request id lets the server answer a retry (after a dropped keep-alive connection) only once
        headers = {API_HEADER: str(API_VERSION), "Accept": "application/json", REQUEST_ID: secrets.token_hex(8)}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        elif body is not None:
            headers["Content-Type"] = "application/octet-stream"  # a volume upload; the server refuses other types
        timeout = self.timeout if timeout is None else timeout
        where = f"{method} {self._base}{path}"
        with self._lock:
            if self._conn is not None and time.monotonic() - self._last > self.IDLE_REUSE_S:
                self.close_locked()
            for attempt in (0, 1):
                fresh = self._conn is None
                if fresh:
                    self._conn = self._connect(timeout)
                conn = self._conn
                try:
                    conn.timeout = timeout
                    if conn.sock is not None:
                        conn.sock.settimeout(timeout)
                    conn.request(method, self._base + path, body=body, headers=headers, encode_chunked=chunked)
                    resp = conn.getresponse()
                    data = resp.read()
                    status = resp.status
                    self._last = time.monotonic()
                    if resp.will_close:
                        self.close_locked()
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                    self.close_locked()
                    if attempt == 0 and not fresh and not chunked:  # a stale keep-alive connection: once more, same id
                        continue
                    raise ServerError(f"the sam2volume server at {self.url} closed the connection during {where} "
                                      f"({type(exc).__name__}); it may have stopped or crashed", url=self.url) from None
                except TimeoutError:
                    self.close_locked()
                    raise ServerError(f"the sam2volume server at {self.url} did not answer {where} within {timeout:g} s",
                                      url=self.url, kind=TIMEOUT) from None
                except (OSError, http.client.HTTPException) as exc:
                    self.close_locked()
                    raise ServerError(f"cannot reach the sam2volume server at {self.url} ({exc}); is it running and is "
                                      "the URL right?", url=self.url) from None
        if status not in ok:
            raise self._error(status, data, where)
        return status, data

    def _error(self, status: int, data: bytes, where: str) -> Sam2VolumeError:
        try:
            err = json.loads(data)["error"]
            kind, message = str(err["type"]), str(err["message"])
        except (ValueError, KeyError, TypeError):
            return ServerError(f"the server at {self.url} answered {where} with HTTP {status}: {data[:200]!r}",
                               url=self.url, status=status)
        cls = _ERROR_TYPES.get(kind)
        if cls is not None:
            return cls(message)  # the engine's own error, with its own message
        return ServerError(f"the sam2volume server at {self.url} refused {where} (HTTP {status} {kind}): {message}",
                           url=self.url, status=status, kind=kind)

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        _, data = self.request(method, path, body, **kw)
        try:
            return json.loads(data) if data else {}
        except ValueError:
            raise ServerError(f"the server at {self.url} sent no JSON for {method} {path}: {data[:200]!r}", url=self.url) from None

    def check_server(self) -> dict[str, Any]:
        info = self.json("GET", "/health")
        if not isinstance(info, dict) or info.get("service") != "sam2volume":
            raise ServerError(f"{self.url} is not a sam2volume server (GET /health answered {info!r})", url=self.url)
        if info.get("api") != API_VERSION:
            raise ServerError(f"the sam2volume server at {self.url} (version {info.get('version')}) speaks API version "
                              f"{info.get('api')}; this client speaks version {API_VERSION}: install matching sam2volume "
                              "versions on both sides", url=self.url)
        return info

    def close_locked(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()


@dataclass
class SliceResult:
    """One propagated slice: each object's 2D mask there (frame layout)."""

    slice: int
    masks: dict[int, np.ndarray]


TIMEOUT = "Timeout"  #: ServerError.kind of a request the server did not answer in time


class RemoteJob:
    """A propagation running on the server; poll it from a GUI timer, or wait for it."""

    WAIT_POLL_HZ = 4.0

    def __init__(self, session: "RemoteSession", job_id: str):
        self.session = session
        self.id = job_id
        self._next = 0
        self.progress: tuple[int, int] = (0, 0)
        self.finished = False
        self.report: PropagationReport | None = None
        self.slices_encoded: int | None = None  # slices the server's image encoder ran on for it (SAM2)
        self.error: Sam2VolumeError | None = None
        self._cancel_sent = False
        self._silent_since: float | None = None  # the first of the polls in a row the server left unanswered
        self._retry_at = 0.0

    def poll(self, wait: float = 0.0, *, timeout: float | None = None) -> list[SliceResult]:
        """The slices finished since the last poll (one HTTP request; ``wait`` s at most for news).

        A server that fails or vanishes ends the job: ``finished`` becomes True and ``error`` a
        :class:`ServerError`; poll itself does not raise for that. ``timeout`` (a GUI timer's poll,
        e.g. 1 s) bounds how long this poll blocks: a poll left unanswered that long is no news, the
        next request goes out ``timeout`` s later, and the job ends with an error once the server has
        not answered for the session's request timeout in a row (a stalled server).
        """
        if self.finished:
            return []
        http_ = self.session._http
        now = time.monotonic()
        if timeout is not None and now < self._retry_at:
            return []
        try:
            rep = http_.json("GET", f"/v{API_VERSION}/jobs/{self.id}/events?after={self._next}&wait={wait:g}",
                             timeout=(http_.timeout if timeout is None else timeout) + wait)
        except Sam2VolumeError as exc:
            if timeout is not None and getattr(exc, "kind", None) == TIMEOUT:
                self._silent_since = now if self._silent_since is None else self._silent_since
                silent = time.monotonic() - self._silent_since
                if silent < http_.timeout:
                    self._retry_at = time.monotonic() + timeout
                    return []
                exc = ServerError(f"the sam2volume server at {http_.url} has not answered for {silent:.0f} s (request timeout "
                                  f"{http_.timeout:g} s) while propagating: it is stalled or overloaded; the slices so far "
                                  "are kept", url=http_.url, kind=TIMEOUT)
            self.error, self.finished = exc, True
            return []
        self._silent_since = None
        out = []
        for ev in rep["events"]:
            masks = {int(k): unpack_mask(m) for k, m in ev["masks"].items()}
            for label, m in masks.items():
                self.session._masks.setdefault(label, {})[int(ev["slice"])] = m
            out.append(SliceResult(int(ev["slice"]), masks))
        self._next = int(rep["next"])
        self.progress = (int(rep["progress"][0]), int(rep["progress"][1]))
        if rep.get("done") and "report" in rep:
            self._finish(rep)
        return out

    def _finish(self, rep: dict[str, Any]) -> None:
        for key, slices in (rep.get("present") or {}).items():
            keep = set(slices)
            store = self.session._masks.get(int(key), {})
            for s in [s for s in store if s not in keep]:
                del store[s]
        if rep.get("report") is not None:
            r = rep["report"]
            self.report = PropagationReport(int(r["slices_run"]), {int(k): v for k, v in r["stopped"].items()}, bool(r["cancelled"]))
            self.slices_encoded = r.get("slices_encoded")
        if rep.get("error") is not None:
            self.error = _ERROR_TYPES.get(rep["error"]["type"], ServerError)(rep["error"]["message"])
        self.finished = True

    def cancel(self, *, timeout: float | None = None) -> None:
        """Stop between slices; slices finished so far are kept (``timeout``: s to wait for the server's answer)."""
        if self.finished or self._cancel_sent:
            return
        self._cancel_sent = True
        self.session._http.json("POST", f"/v{API_VERSION}/jobs/{self.id}/cancel", timeout=timeout)

    def wait(self, timeout: float | None = None, progress: Callable[[int, int], None] | None = None,
             cancel: Callable[[], bool] | threading.Event | None = None) -> PropagationReport:
        """Block until the job ends; returns its report or raises its error (CancelledError on cancel)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        should_stop = cancel.is_set if isinstance(cancel, threading.Event) else cancel
        shown = None
        while not self.finished:
            if should_stop is not None and not self._cancel_sent and should_stop():
                self.cancel()
            step = 0.5 if should_stop is not None else 2.0
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerError(f"propagation job {self.id} did not finish within {timeout:g} s (it goes on on the "
                                      "server; cancel() stops it)", url=self.session._http.url)
                step = min(step, left)
            t0 = time.monotonic()
            self.poll(wait=step)
            if progress is not None and self.progress != shown and self.progress[1]:
                shown = self.progress
                progress(*self.progress)
            # a blocking wait needs no slice the moment it is done: at most WAIT_POLL_HZ polls a second
            # leave the CPUs to the model (client and server may share them)
            rest = 1.0 / self.WAIT_POLL_HZ - (time.monotonic() - t0)
            if rest > 0 and not self.finished:
                time.sleep(rest)
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


class RemoteSession(SessionBase):
    """:class:`sam2volume.session.Session`'s interface, with the engine on a sam2volume server.

    The volume is uploaded once (compressed, with its geometry, under its SHA-256: a second session
    on the same volume skips the upload). ``config`` is an EngineConfig (model, image size, dtype,
    ...; never a server-side path, and the server picks the device); ``engine`` is ``sam2`` or
    ``baseline``. ``token`` defaults to ``$SAM2VOLUME_TOKEN``, then (loopback URL) the token a local
    ``sam2volume serve`` wrote for itself.

    ``timeout`` (s) bounds opening the session (the server may build the model then) and, at least
    300 s, uploads and results; ``call_timeout`` (s, default ``timeout``) every other request: the
    health check, prompts, jobs and their polls, so that a stalled server is noticed that soon.
    """

    def __init__(
        self,
        url: str,
        volume: Volume,
        axis: str = "axial",
        config: Any = None,
        *,
        engine: str = "sam2",
        token: str | None = None,
        window: Window | str | None = None,
        window_width: float | None = None,
        window_level: float | None = None,
        timeout: float = 60.0,
        call_timeout: float | None = None,
        progress: bool = False,
    ):
        super().__init__(volume, axis, window=window, window_width=window_width, window_level=window_level, progress=progress)
        if engine not in ("sam2", "baseline"):
            raise InputError(f"unknown engine {engine!r}; use 'sam2' or 'baseline'")
        self.engine_name = engine
        self.config = config
        settings = self._config_settings(config) if engine == "sam2" else None
        self._masks: dict[int, dict[int, np.ndarray]] = {}
        self._closed = False
        if call_timeout is not None and not call_timeout > 0:
            raise InputError(f"call_timeout {call_timeout!r} must be a positive number of seconds")
        self._open_timeout = float(timeout)
        self._http = _Http(url, read_token(token, url=url), timeout if call_timeout is None else call_timeout)
        self._http.check_server()
        self.volume_id = volume_id(volume)
        self.uploaded = self._upload()
        rep = self._http.json("POST", f"/v{API_VERSION}/sessions", {
            "volume": self.volume_id, "axis": self.axis.axis, "engine": engine, "config": settings,
            "window": {"low": float(self.window.low), "high": float(self.window.high)}}, timeout=self._open_timeout)
        self.id = rep["session"]
        self.device = rep.get("device", "unknown")
        self.server_config = rep.get("config")
        if tuple(rep.get("frame_shape", ())) != tuple(self.axis.frame_shape) or rep.get("num_slices") != self.num_slices:
            self.close()
            raise ServerError(f"the server at {url} cut the volume into other slices ({rep}); client and server versions differ?", url=url)

    @staticmethod
    def _config_settings(config: Any) -> dict[str, Any] | None:
        return engine_settings(config)

    def _upload(self) -> bool:
        path = f"/v{API_VERSION}/volumes/{self.volume_id}"
        if self._http.json("GET", path).get("stored"):
            return False
        self._http.request("PUT", path, encode_array(volume_header(self.volume), self.volume.array), chunked=True,
                           timeout=max(self._open_timeout, 300.0))
        return True

    # ------------------------------------------------------------------ calls
    def _path(self, tail: str = "") -> str:
        if self._closed:
            raise InputError("this remote session is closed; open a new one")
        return f"/v{API_VERSION}/sessions/{self.id}{tail}"

    def _prompt(self, kind: str, label: int, s: int, payload: dict[str, Any], name: str | None) -> np.ndarray:
        SessionBase.add_object(self, label, name)
        rep = self._http.json("POST", self._path(f"/{kind}"), {"label": int(label), "slice": int(s), "name": name, **payload})
        obj = self.objects[int(label)]
        obj.name, obj.color = rep.get("name", obj.name), rep.get("color", obj.color)
        mask = unpack_mask(rep["mask"])
        self._masks.setdefault(int(label), {})[int(s)] = mask
        return mask

    def add_object(self, label: int, name: str | None = None, color: Sequence[float] | None = None) -> Any:
        obj = super().add_object(label, name, color)
        self._http.json("POST", self._path("/objects"), {"label": obj.label, "name": name, "color": list(color) if color else None})
        return obj

    def add_points(self, label: int, points: Any, point_labels: Sequence[int] | None = None, *, coords: str = "voxel",
                   slice_index: int | None = None, name: str | None = None) -> np.ndarray:
        """As :meth:`Session.add_points`: returns the slice's 2D mask."""
        s, xy, pl = self.points_on_slice(points, point_labels, coords, slice_index)
        return self._prompt("points", label, s, {"points": xy.tolist(), "point_labels": pl}, name)

    def add_box(self, label: int, box: Any, *, slice_index: int | None = None, coords: str = "voxel",
                name: str | None = None) -> np.ndarray:
        """As :meth:`Session.add_box`."""
        s, x0, y0, x1, y1 = self.box_on_slice(box, slice_index=slice_index, coords=coords)
        return self._prompt("box", label, s, {"box": [x0, y0, x1, y1]}, name)

    def add_mask(self, label: int, mask: Any, slice_index: int, *, name: str | None = None) -> np.ndarray:
        """As :meth:`Session.add_mask` (a 3D mask is cut to its slice here; only that slice travels)."""
        from .server.wire import pack_mask

        s, m = self.mask_on_slice(mask, slice_index)
        return self._prompt("mask", label, s, {"mask": pack_mask(m)}, name)

    def add_scribble(self, label: int, points: Any, positive: bool = True, *, coords: str = "voxel",
                     slice_index: int | None = None, name: str | None = None) -> np.ndarray:
        """As :meth:`Session.add_scribble`: checked here, sampled into points on the server."""
        s, xy = self._checked_scribble(points, positive, coords, slice_index)
        return self._prompt("scribble", label, s, {"points": xy.tolist(), "positive": bool(positive)}, name)

    def add_lasso(self, label: int, polygon: Any, *, coords: str = "voxel", slice_index: int | None = None,
                  name: str | None = None) -> np.ndarray:
        """As :meth:`Session.add_lasso`: the polygon travels, the server fills it (no image library here)."""
        s, xy = self._checked_lasso(polygon, coords, slice_index)
        return self._prompt("lasso", label, s, {"points": xy.tolist()}, name)

    def candidates(self, label: int, slice_index: int) -> MaskCandidates | None:
        """As :meth:`Session.candidates` (None from the baseline engine)."""
        self._require_object(label)
        s = self._check_slice(slice_index)
        rep = self._http.json("GET", self._path(f"/candidates?label={int(label)}&slice={s}"))["candidates"]
        if rep is None:
            return None
        return MaskCandidates(np.stack([unpack_mask(m) for m in rep["masks"]]), np.asarray(rep["scores"], dtype=np.float64),
                              int(rep["chosen"]))

    def choose_mask(self, label: int, slice_index: int, index: int) -> np.ndarray:
        """As :meth:`Session.choose_mask`."""
        self._require_object(label)
        s = self._check_slice(slice_index)
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise InputError(f"candidate {index!r} must be a whole number (0, 1 or 2)")
        rep = self._http.json("POST", self._path("/choose"), {"label": int(label), "slice": s, "index": int(index)})
        mask = unpack_mask(rep["mask"])
        self._masks.setdefault(int(label), {})[s] = mask
        return mask

    def remove_object(self, label: int) -> None:
        self._require_object(label)
        self._http.json("DELETE", self._path(f"/objects/{int(label)}"))
        del self.objects[label]
        self._masks.pop(label, None)

    def reset(self) -> None:
        self._http.json("POST", self._path("/reset"))
        self.objects.clear()
        self._masks.clear()

    # -------------------------------------------------------------- propagate
    def start_propagation(self, direction: str = "both", *, objects: Iterable[int] | None = None, start: int | None = None,
                          slice_range: tuple[int, int] | None = None, stop_after: int | None = 3) -> RemoteJob:
        """Start a propagation on the server and return at once (see :class:`RemoteJob`)."""
        labels, lo, hi, _ = self._plan(direction, objects, slice_range, stop_after, None)
        if start is not None:
            self._check_slice(start)
        rep = self._http.json("POST", self._path("/jobs"), {
            "direction": direction, "objects": None if objects is None else labels, "start": None if start is None else int(start),
            "slice_range": None if slice_range is None else [lo, hi], "stop_after": stop_after})
        return RemoteJob(self, rep["job"])

    def propagate(self, direction: str = "both", *, objects: Iterable[int] | None = None, start: int | None = None,
                  slice_range: tuple[int, int] | None = None, stop_after: int | None = 3,
                  progress: Callable[[int, int], None] | None = None,
                  cancel: Callable[[], bool] | threading.Event | None = None) -> PropagationReport:
        """As :meth:`Session.propagate` (progress is reported as the server's slices come in; a session
        made with ``progress=True`` draws a bar)."""
        job = self.start_propagation(direction, objects=objects, start=start, slice_range=slice_range, stop_after=stop_after)
        progress, close_progress = self._progress_or_bar(progress)
        try:
            return job.wait(progress=progress, cancel=cancel)
        finally:
            close_progress()

    # ----------------------------------------------------------------- results
    @property
    def encoder_calls(self) -> None:
        return None  # counted on the server

    def frame_mask(self, label: int, s: int) -> np.ndarray:
        """Object ``label``'s mask on slice ``s`` as last received (zeros where none)."""
        m = self._masks.get(label, {}).get(s)
        return np.zeros(self.axis.frame_shape, bool) if m is None else m

    def computed_slices(self, label: int) -> list[int]:
        return sorted(self._masks.get(label, {}))

    def slice_scores(self) -> dict[int, np.ndarray]:
        return scores_from_json(self._http.json("GET", self._path("/scores"))["scores"])

    def result(self) -> Volume:
        """The labelmap with the input's geometry, as the server's session makes it."""
        _, data = self._http.request("GET", self._path("/result"), timeout=max(self._open_timeout, 300.0))
        header, array = decode_array(data)
        if tuple(array.shape) != self.volume.shape:
            raise ServerError(f"the server sent a labelmap of shape {array.shape} for a volume of {self.volume.shape}", url=self._http.url)
        scores = {int(k): [np.nan if v is None else v for v in vals] for k, vals in header.get("slice_scores", {}).items()}
        return self.volume.with_array(array, segments=header.get("segments", []), slice_scores=scores, axis=header.get("axis"))

    # ------------------------------------------------------------------- close
    def close(self) -> None:
        """Free the server-side session (safe to call twice; a vanished server is not an error here)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._http.request("DELETE", f"/v{API_VERSION}/sessions/{self.id}", ok=(200, 404), timeout=min(self._http.timeout, 10.0))
        except ServerError:
            pass
        finally:
            self._http.close()

    def __enter__(self) -> "RemoteSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def engine_settings(config: Any) -> dict[str, Any] | None:
    """The engine settings a remote session sends for ``config`` (an EngineConfig or a dict; None: the
    server's defaults): never a path on the server, never the device."""
    if config is None:
        return None
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    paths = [k for k in ("checkpoint", "config_file", "extra_overrides") if d.get(k)]
    if paths:
        raise InputError(f"a remote session cannot name files on the server ({', '.join(paths)}); start the server with "
                         "--checkpoint FILE.pt --config FILE.yaml and ask for model 'custom'")
    return {k: d[k] for k in _CONFIG_FIELDS if k in d}


def _load_path(settings: dict[str, Any] | None) -> str:
    name = (settings or {}).get("model") or "default"  # "default": the server's first model
    return f"/v{API_VERSION}/models/{urllib.parse.quote(str(name), safe='')}/load"


def load_model(url: str, config: Any = None, *, token: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
    """Ask the server at ``url`` to load the model of ``config`` (the settings its sessions will send; None:
    its default model) ahead of them, on its own worker thread. Returns at once (within ``timeout`` s) the
    load's state as :func:`load_status` does; a session opened afterwards with the same settings finds the
    model built."""
    settings = engine_settings(config)
    http_ = _Http(url, read_token(token, url=url), timeout)
    try:
        return http_.json("POST", _load_path(settings), {"config": settings})
    finally:
        http_.close()


def load_status(url: str, config: Any = None, *, token: str | None = None, timeout: float = 1.0) -> dict[str, Any]:
    """The state of the load :func:`load_model` asked for (one short request): ``stage`` (idle, queued,
    downloading, building, ready, failed; cancelling, cancelled: see :func:`cancel_load`), ``bytes_done`` and
    ``bytes_total`` (None: unknown) of the checkpoint's download, and ``error`` ({type, message} or None)."""
    http_ = _Http(url, read_token(token, url=url), timeout)
    try:
        return http_.json("GET", _load_path(engine_settings(config)))
    finally:
        http_.close()


def cancel_load(url: str, config: Any = None, *, token: str | None = None, timeout: float = 1.0) -> dict[str, Any]:
    """Stop the load :func:`load_model` asked for (one short request), if it is queued or downloading: its
    download stops at the next chunk and its partial file is kept, so :func:`load_model` again resumes it; a
    load that is building finishes. Returns its state as :func:`load_status` does (``stage`` ``cancelling``,
    then ``cancelled``, where this stopped it), with ``cancelled`` (whether it did) and ``message``."""
    http_ = _Http(url, read_token(token, url=url), timeout)
    try:
        return http_.json("POST", _load_path(engine_settings(config)) + "/cancel")
    finally:
        http_.close()


def check_server(url: str, token: str | None = None, *, timeout: float = 5.0) -> dict[str, Any]:
    """Whether a sam2volume server answers at ``url`` (``GET /health``, same API version) and takes
    ``token`` (``GET /v1/models``), each request within ``timeout`` s. Returns /health's answer with the
    models' (``models``, ``device``, ...); raises ServerError (``kind`` ``AuthError`` for the token)."""
    http_ = _Http(url, read_token(token, url=url), timeout)
    try:
        info = http_.check_server()
        return {**info, **http_.json("GET", f"/v{API_VERSION}/models")}
    finally:
        http_.close()


# ---------------------------------------------------------------------------- local server
class LocalServer:
    """A ``sam2volume serve`` process on loopback, started by :func:`start_local_server`."""

    def __init__(self, url: str, token: str, process: subprocess.Popen, folder: Path, log_file: Path, command: list[str],
                 start_timeout: float = 120.0):
        self.url, self.token, self.process = url, token, process
        self.folder, self.log_file, self.command = folder, log_file, command
        self.ready = bool(url)  #: it answers at ``url`` (set by :meth:`poll_ready`)
        self.start_timeout = float(start_timeout)
        self._deadline = time.monotonic() + start_timeout

    def poll_ready(self, timeout: float = 0.5) -> bool:
        """Whether the server answers yet, without waiting for it (one look at its ready file, then one
        ``/health`` request of at most ``timeout`` s). Raises ServerError naming the command and the log's
        tail, after stopping what is left, if the process exited or did not come up in time."""
        if self.ready:
            return True
        cmd = " ".join(self.command)
        ready_file = self.folder / "ready.json"
        if not self.alive():
            self.stop()  # a launcher that exited may leave its child in the group
            raise ServerError(f"the sam2volume server exited with code {self.process.returncode} while starting ({cmd}); "
                              f"its log ends:\n{self.log_tail()}")
        late = time.monotonic() > self._deadline
        if not ready_file.is_file():
            if late:
                self.stop()
                raise ServerError(f"the sam2volume server did not come up within {self.start_timeout:g} s ({cmd}); its log ends:\n{self.log_tail()}")
            return False
        url = json.loads(ready_file.read_text())["url"]  # written atomically once it listens
        try:
            _Http(url, self.token, timeout).check_server()
        except Sam2VolumeError as exc:
            if getattr(exc, "kind", None) == TIMEOUT and not late:
                return False  # busy for a moment: ask again at the next poll
            self.stop()
            raise ServerError(f"the sam2volume server started ({cmd}) but does not answer: {exc}; its log ends:\n{self.log_tail()}") from None
        self.url, self.ready = url, True
        return True

    def wait_ready(self, request_timeout: float | None = None) -> "LocalServer":
        """Block until :meth:`poll_ready` says the server answers (it raises if the server exited or is not
        up in time); each ``/health`` request waits ``request_timeout`` s, default what is left of the start-up time."""
        while not self.poll_ready(timeout=request_timeout or max(1.0, self._deadline - time.monotonic())):
            time.sleep(0.05)
        return self

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """End the server and every process of its group, even behind a launcher that forwards no signal.

        Closing its stdin lets the server shut itself down (``--exit-with-stdin``); SIGTERM goes to the
        whole process group (the launcher and the real interpreter); what is left after ``timeout`` s is
        killed. Windows: the process is terminated (a job object for its children is a TODO)."""
        proc = self.process
        if proc.stdin is not None and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        self._signal_group(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        while self._group_alive() and time.monotonic() < deadline:  # the real interpreter may outlive its launcher
            time.sleep(0.05)
        self._signal_group(signal.SIGKILL if os.name == "posix" else signal.SIGTERM)
        proc.wait()
        (self.folder / "token").unlink(missing_ok=True)

    def _signal_group(self, sig: int) -> None:
        if os.name != "posix":
            if self.alive():
                self.process.terminate() if sig == signal.SIGTERM else self.process.kill()
            return
        try:
            os.killpg(self.process.pid, sig)  # its own session's group: start_local_server starts it so
        except (ProcessLookupError, PermissionError):
            pass

    def _group_alive(self) -> bool:
        if os.name != "posix":
            return self.alive()
        try:
            os.killpg(self.process.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_local_server(python: str = sys.executable, *, device: str = "auto", model: str | None = None,
                       engine_args: Sequence[str] = (), timeout: float = 120.0, allow_random_weights: bool = False,
                       log_file: str | os.PathLike[str] | None = None, parent_pid: int | None = None) -> LocalServer:
    """Start ``sam2volume serve`` with ``python`` on a free loopback port, with a fresh random token.

    Waits until ``GET /health`` answers; raises ServerError naming the command and the log's tail if
    the process exits or does not come up within ``timeout`` s. ``engine_args`` are more ``serve``
    options (limits, ``--idle-timeout``...). The child finds this copy of sam2volume first.
    :func:`launch_local_server` starts it without waiting (a GUI polls :meth:`LocalServer.poll_ready`).
    """
    server = launch_local_server(python, device=device, model=model, engine_args=engine_args, timeout=timeout,
                                 allow_random_weights=allow_random_weights, log_file=log_file, parent_pid=parent_pid)
    return server.wait_ready()


def launch_local_server(python: str = sys.executable, *, device: str = "auto", model: str | None = None,
                        engine_args: Sequence[str] = (), timeout: float = 120.0, allow_random_weights: bool = False,
                        log_file: str | os.PathLike[str] | None = None, parent_pid: int | None = None) -> LocalServer:
    """Start the server as :func:`start_local_server` does and return at once: its
    :meth:`LocalServer.poll_ready` says when it answers (and raises if it exited or is not up within
    ``timeout`` s).

    The server lives only as long as its parent: its stdin is a pipe this process holds
    (``--exit-with-stdin``), and on POSIX it also watches ``parent_pid`` (default: this process;
    ``--parent-pid``), so a crash or kill of this process ends it too. It runs in its own process group
    (POSIX) that :meth:`LocalServer.stop` ends as a whole.
    """
    folder = Path(tempfile.mkdtemp(prefix="sam2volume-server-"))
    token = secrets.token_urlsafe(32)
    token_file = folder / "token"
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    ready = folder / "ready.json"
    log = Path(log_file) if log_file else folder / "server.log"
    cmd = [str(python), "-m", "sam2volume", "serve", "--host", "127.0.0.1", "--port", "0", "--token-file", str(token_file),
           "--ready-file", str(ready), "--device", device, "--exit-with-stdin"]
    if os.name == "posix":
        cmd += ["--parent-pid", str(os.getpid() if parent_pid is None else parent_pid)]
    if model:
        cmd += ["--model", model]
    if allow_random_weights:
        cmd.append("--allow-random-weights")
    cmd += [str(a) for a in engine_args]
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log, "ab") as out:
        group = {"start_new_session": True} if os.name == "posix" else {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.PIPE, env=env, **group)
    return LocalServer("", token, proc, folder, log, cmd, start_timeout=timeout)


class RemoteEngine:
    """Sessions on one server for a run over many volumes (``evaluate --server``): one open at a time."""

    def __init__(self, url: str, token: str | None = None):
        self.url, self.token = url, read_token(token, url=url)
        self._open: RemoteSession | None = None

    def session(self, volume: Volume, axis: str = "axial", config: Any = None, *, engine: str = "sam2",
                window: Window | str | None = None) -> RemoteSession:
        """A new remote session; the previous one is closed (its results were taken already)."""
        self.close()
        self._open = RemoteSession(self.url, volume, axis, config, engine=engine, token=self.token, window=window)
        return self._open

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None
