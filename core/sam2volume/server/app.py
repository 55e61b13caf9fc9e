"""The FastAPI application: routes, token check, API version check, JSON errors, size limits.

Every route but ``GET /health`` needs the token when the server has one. Heavy work runs in the
thread pool, never on the event loop. Paths are versioned (``/v1``); a client sends its version in
the ``X-Sam2volume-Api`` header and one of another version gets a 400 that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
from typing import Any, AsyncIterator

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import CancelledError, InputError, ModelError, Sam2VolumeError
from . import API_HEADER, API_VERSION, REQUEST_ID
from .config import ServerConfig
from .hosted import HostedSession
from .pool import ModelPool
from .loading import ModelLoader
from .requests import AddBox, AddLasso, AddMask, AddObject, AddPoints, AddScribble, ChooseMask, LoadModel, OpenSession, StartJob, parse
from .store import Busy, LimitError, NotFound, RequestIdReused, SessionRegistry, VolumeStore, rss_bytes
from .token_files import bearer_matches
from .wire import ArrayDecoder, encode_array, pack_mask, scores_to_json, unpack_mask, volume_from

log = logging.getLogger("sam2volume.server")
VOLUME_ID = re.compile(r"^[0-9a-f]{64}$")


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind = status, kind


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status,
                        headers={API_HEADER: str(API_VERSION)})


def _status_of(exc: Sam2VolumeError) -> int:
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, CancelledError):
        return 409
    if isinstance(exc, ModelError):
        return 422
    return 500


def create_app(config: ServerConfig, bind_host: str = "127.0.0.1") -> FastAPI:
    """The application; ``bind_host`` (the address it listens on) decides the Host names it answers to (guards.py)."""
    pool = ModelPool(config)
    volumes = VolumeStore(config)
    registry = SessionRegistry(config, volumes)
    loader = ModelLoader(pool)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry.start_reaper()
        if config.preload:
            await run_in_threadpool(lambda: pool.predictor(pool.engine_config(None)))
        ready = getattr(app.state, "on_ready", None)
        if ready is not None:
            ready()
        yield
        registry.shutdown()
        stopped = getattr(app.state, "on_shutdown", None)
        if stopped is not None:
            stopped()

    app = FastAPI(title="sam2volume engine server", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    app.state.pool, app.state.volumes, app.state.registry = pool, volumes, registry
    from .guards import HostPolicy, WebGuard

    app.add_middleware(WebGuard, policy=HostPolicy(bind_host, config.allow_hosts))  # what a web page may not send

    # ------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.kind, str(exc))

    @app.exception_handler(Sam2VolumeError)
    async def _engine_error(request: Request, exc: Sam2VolumeError) -> JSONResponse:
        return _error(_status_of(exc), type(exc).__name__, str(exc))

    @app.exception_handler(LimitError)
    async def _limit(request: Request, exc: LimitError) -> JSONResponse:
        return _error(exc.status, "LimitError", str(exc))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, "NotFound", str(exc))

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> JSONResponse:
        return _error(409, "Busy", str(exc))

    @app.exception_handler(RequestIdReused)
    async def _reused(request: Request, exc: RequestIdReused) -> JSONResponse:
        return _error(409, "RequestIdReused", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _bad_params(request: Request, exc: RequestValidationError) -> JSONResponse:
        # path and query parameters (e.g. ?after=abc): the documented JSON error, not FastAPI's 422 {"detail": ...}
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))} {repr(e.get('input'))[:80]}: {e.get('msg')}" for e in exc.errors()[:5]]
        return _error(400, "InputError", f"bad {request.method} {request.url.path} request: " + "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error(404, "NotFound", f"no endpoint {request.method} {request.url.path}; this server speaks API "
                          f"version {API_VERSION} (paths under /v{API_VERSION}/, /health, /models)")
        if exc.status_code == 405:
            return _error(405, "MethodNotAllowed", f"{request.method} is not allowed on {request.url.path}")
        return _error(exc.status_code, "HTTPError", str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "InternalError", "internal server error (see the server log)")

    # ---------------------------------------------------------------- checks
    async def check_client(request: Request) -> None:
        version = request.headers.get(API_HEADER)
        if version is not None and version != str(API_VERSION):
            raise ApiError(400, "VersionError", f"the client speaks sam2volume API version {version}; this server "
                           f"(sam2volume {__version__}) speaks version {API_VERSION}: install matching versions on both sides")
        if config.token:
            if not bearer_matches(request.headers.get("authorization"), config.token):
                raise ApiError(401, "AuthError", "missing or wrong token: send 'Authorization: Bearer TOKEN' "
                               "(client: token=, --token-file or SAM2VOLUME_TOKEN)")

    async def body(request: Request, limit: int | None = None) -> bytes:
        limit = config.max_body_bytes if limit is None else limit
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise LimitError(f"request body of {declared} bytes is over the server's limit of {limit} bytes (--max-body-mb)")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise LimitError(f"request body is over the server's limit of {limit} bytes (--max-body-mb)")
            chunks.append(chunk)
        return b"".join(chunks)

    def hosted(sid: str) -> HostedSession:
        return registry.get(sid)

    # ---------------------------------------------------------------- public
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "service": "sam2volume", "api": API_VERSION, "version": __version__}

    v1 = APIRouter(prefix=f"/v{API_VERSION}", dependencies=[Depends(check_client)])

    def models_info() -> dict[str, Any]:
        from ..models import WeightsManager, get_model

        wm = WeightsManager()
        out = []
        for name in pool.models:
            if name == "custom":
                out.append({"name": name, "description": f"the server's custom checkpoint {config.checkpoint}"})
                continue
            spec = get_model(name)
            out.append({"name": spec.name, "image_size": spec.image_size, "description": spec.description,
                        "weights": wm.status(spec)})
        return {"models": out, "default": pool.models[0], "engines": ["sam2", "baseline"],
                "random_weights": config.allow_random_weights, "device": config.device, "loaded": pool.loaded(),
                "loading": loader.all()}

    @app.get("/models", dependencies=[Depends(check_client)])
    async def models_root() -> dict[str, Any]:
        return await run_in_threadpool(models_info)

    @v1.get("/models")
    async def models() -> dict[str, Any]:
        return await run_in_threadpool(models_info)

    @v1.post("/models/{name}/load")
    async def load_model(name: str, request: Request) -> dict[str, Any]:
        """Load a model ahead of its sessions on a worker thread; answers at once (poll GET for the stage)."""
        req = parse(LoadModel, await body(request))
        return loader.start(name, req.config)

    @v1.get("/models/{name}/load")
    async def load_state(name: str) -> dict[str, Any]:
        return loader.status(name)

    @v1.post("/models/{name}/load/cancel")
    async def cancel_load(name: str) -> dict[str, Any]:
        """Stop a queued or downloading load (its partial download kept for the next load); a building one finishes."""
        return loader.cancel(name)

    @v1.get("/stats")
    async def stats() -> dict[str, Any]:
        return {**registry.stats(), **volumes.stats(), "rss_bytes": rss_bytes(), "models_built": pool.builds, "limits": {
            "max_sessions": config.max_sessions, "max_upload_bytes": config.max_upload_bytes,
            "max_voxels": config.max_voxels, "max_body_bytes": config.max_body_bytes,
            "idle_timeout_s": config.idle_timeout_s, "upload_timeout_s": config.upload_timeout_s,
            "max_image_size": config.max_image_size, "max_feature_cache_mb": config.max_feature_cache_mb,
            "max_encode_ahead": config.max_encode_ahead, "max_encode_batch": config.max_encode_batch}}

    # --------------------------------------------------------------- volumes
    def check_vid(vid: str) -> None:
        if not VOLUME_ID.match(vid):
            raise InputError(f"volume id {vid!r} must be the 64 hex digit SHA-256 of the volume's header and voxels")

    @v1.head("/volumes/{vid}")
    async def has_volume(vid: str) -> Response:
        check_vid(vid)
        return Response(status_code=200 if volumes.has(vid) else 404)

    @v1.get("/volumes/{vid}")
    async def volume_state(vid: str) -> dict[str, Any]:
        check_vid(vid)
        return {"volume": vid, "stored": volumes.has(vid)}

    @v1.put("/volumes/{vid}")
    async def put_volume(vid: str, request: Request) -> JSONResponse:
        check_vid(vid)
        if volumes.has(vid):
            return JSONResponse({"volume": vid, "stored": True}, status_code=200)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_upload_bytes:
            raise LimitError(f"volume upload of {declared} bytes is over the server's limit of {config.max_upload_bytes} bytes (--max-upload-mb)")
        reserved = [0]  # bytes of this upload's share of --max-stored-mb: what has been inflated so far

        def check(header: dict[str, Any]) -> None:
            n = math.prod(header["shape"])  # Python ints: a product that would wrap int64 is refused too
            if n > config.max_voxels:
                raise LimitError(f"volume of shape {header['shape']} has {n} voxels, over the server's limit of "
                                 f"{config.max_voxels} voxels (--max-voxels); crop or downsample it")
            nbytes = n * np.dtype(header["dtype"]).itemsize
            if nbytes > config.max_stored_bytes:
                raise LimitError(f"volume of shape {header['shape']} takes {nbytes} bytes, over the server's limit of "
                                 f"{config.max_stored_bytes} bytes of stored volumes (--max-stored-mb); crop or downsample it")

        def grow(nbytes: int) -> None:  # reserve as the voxels arrive: a stalled upload holds only what it sent
            volumes.reserve(nbytes)
            reserved[0] += nbytes

        dec = ArrayDecoder(check, grow)
        size, pending, npending = 0, [], 0
        chunks = request.stream().__aiter__()
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), config.upload_timeout_s)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    raise LimitError(f"volume upload sent nothing for {config.upload_timeout_s:g} s (after {size} bytes) "
                                     "and was aborted (--upload-timeout); send it again", 408) from None
                size += len(chunk)
                if size > config.max_upload_bytes:
                    raise LimitError(f"volume upload is over the server's limit of {config.max_upload_bytes} compressed bytes (--max-upload-mb)")
                pending.append(chunk)
                npending += len(chunk)
                # each chunk goes to the decoder until the header line is in (its limits are checked first); then
                # the data is inflated off the event loop in pieces of 4 MiB
                if dec.header is None or npending >= 1 << 22:
                    data, pending, npending = b"".join(pending), [], 0
                    await run_in_threadpool(dec.feed, data)
            await run_in_threadpool(dec.feed, b"".join(pending))
            header, array = dec.finish()
            if dec.hasher.hexdigest() != vid:
                raise InputError(f"uploaded volume's SHA-256 {dec.hasher.hexdigest()} differs from its id {vid} (corrupted in transit?)")
            volume = volume_from(header, array)
        except BaseException:
            volumes.unreserve(reserved[0])
            raise
        volumes.put(vid, volume, reserved[0])
        log.info("volume %s stored: shape %s %s, %d bytes compressed", vid[:12], header["shape"], header["dtype"], size)
        return JSONResponse({"volume": vid, "stored": True}, status_code=201)

    # -------------------------------------------------------------- sessions
    @v1.post("/sessions")
    async def open_session(request: Request) -> dict[str, Any]:
        req = parse(OpenSession, await body(request))
        check_vid(req.volume)
        if req.engine not in ("sam2", "baseline"):
            raise InputError(f"unknown engine {req.engine!r}; use 'sam2' or 'baseline'")

        def make(sid: str) -> HostedSession:
            from ..windowing import Window

            cfg = pool.engine_config(req.config) if req.engine == "sam2" else None
            window = Window.checked(req.window.low, req.window.high) if req.window is not None else None
            volume = volumes.acquire(req.volume)
            predictor = None
            try:
                if req.engine == "baseline":
                    from ..baseline import BaselineSession

                    session: Any = BaselineSession(volume, req.axis, window=window)
                    lock = None
                else:
                    from ..session import Session

                    lock = pool.lock(pool.device)
                    predictor = pool.predictor(cfg)  # one user more; given back when the session closes
                    session = Session(volume, req.axis, cfg, predictor=predictor, window=window, model_lock=lock)
            except BaseException:
                volumes.release(req.volume)
                if predictor is not None:
                    pool.release(cfg)
                raise

            def release(vid: str) -> None:
                volumes.release(vid)
                if cfg is not None:
                    pool.release(cfg)

            return HostedSession(sid, req.engine, session, lock, req.volume, release)

        h = await run_in_threadpool(registry.add, make)
        s = h.session
        log.info("session %s opened: %s engine, %s axis, volume %s", h.id[:8], h.engine, s.axis.axis, h.volume_id[:12])
        return {"session": h.id, "engine": h.engine, "axis": s.axis.axis, "num_slices": s.num_slices,
                "frame_shape": list(s.axis.frame_shape), "window": {"low": s.window.low, "high": s.window.high},
                "device": str(getattr(s, "device", "cpu")), "config": s.config.to_dict() if h.engine == "sam2" else None,
                "idle_timeout_s": config.idle_timeout_s}

    @v1.delete("/sessions/{sid}")
    async def close_session(sid: str) -> dict[str, Any]:
        if not await run_in_threadpool(registry.close, sid):
            hosted(sid)  # raises NotFound
        return {"closed": sid}

    def what(request: Request, data: bytes) -> str:
        """The endpoint and body of a request: a replayed X-Request-Id must come with the same."""
        return f"{request.method} {request.url.path} #{hashlib.sha256(data).hexdigest()}"

    def run(sid: str, fn: Any, request: Request | None = None, data: bytes = b"") -> Any:
        """``fn(engine session)`` under the session's locks; a request sent again with the same
        X-Request-Id, endpoint and body (a client retrying after a dropped connection) gets the first answer,
        not a second prompt; the same id with another endpoint or body gets 409 RequestIdReused."""
        rid = request.headers.get(REQUEST_ID) if request is not None else None
        h = hosted(sid)
        with h.call() as session:
            return h.once(rid, lambda: fn(session), what(request, data) if request is not None else "")

    def prompt_reply(session: Any, label: int, mask: np.ndarray) -> dict[str, Any]:
        obj = session.objects[label]
        return {"mask": pack_mask(mask), "label": label, "name": obj.name, "color": obj.color}

    @v1.post("/sessions/{sid}/objects")
    async def add_object(sid: str, request: Request) -> dict[str, Any]:
        data = await body(request)
        req = parse(AddObject, data)
        obj = await run_in_threadpool(run, sid, lambda s: s.add_object(req.label, req.name, req.color), request, data)
        return {"label": obj.label, "name": obj.name, "color": obj.color}

    async def prompt_request(sid: str, request: Request, model: Any, call: Any) -> dict[str, Any]:
        """A prompt: the body checked as ``model``, then ``call(engine session, request)`` -> the slice's mask."""
        data = await body(request)
        req = parse(model, data)
        return await run_in_threadpool(run, sid, lambda s: prompt_reply(s, req.label, call(s, req)), request, data)

    @v1.post("/sessions/{sid}/points")
    async def add_points(sid: str, request: Request) -> dict[str, Any]:
        return await prompt_request(sid, request, AddPoints, lambda s, r: s.add_points(
            r.label, r.points, r.point_labels, coords="frame", slice_index=r.slice, name=r.name))

    @v1.post("/sessions/{sid}/box")
    async def add_box(sid: str, request: Request) -> dict[str, Any]:
        return await prompt_request(sid, request, AddBox, lambda s, r: s.add_box(r.label, r.box, slice_index=r.slice, name=r.name))

    @v1.post("/sessions/{sid}/mask")
    async def add_mask(sid: str, request: Request) -> dict[str, Any]:
        data = await body(request)
        req = parse(AddMask, data)
        mask = unpack_mask(req.mask)
        if not mask.any():  # as a prompts file's mask: an empty one is refused
            raise InputError(f"the mask for object {req.label} on slice {req.slice} is empty; give at least one pixel "
                             "of the object (or remove the object instead)")

        def work(s: Any) -> dict[str, Any]:
            return prompt_reply(s, req.label, s.add_mask(req.label, mask, req.slice, name=req.name))

        return await run_in_threadpool(run, sid, work, request, data)

    @v1.post("/sessions/{sid}/scribble")
    async def add_scribble(sid: str, request: Request) -> dict[str, Any]:
        return await prompt_request(sid, request, AddScribble, lambda s, r: s.add_scribble(
            r.label, r.points, r.positive, coords="frame", slice_index=r.slice, name=r.name))

    @v1.post("/sessions/{sid}/lasso")
    async def add_lasso(sid: str, request: Request) -> dict[str, Any]:
        return await prompt_request(sid, request, AddLasso, lambda s, r: s.add_lasso(
            r.label, r.points, coords="frame", slice_index=r.slice, name=r.name))

    @v1.get("/sessions/{sid}/candidates")
    async def candidates(sid: str, label: int, slice: int) -> dict[str, Any]:
        """SAM2's masks for a single click on a slice (multimask output), or null where there are none."""

        def work(s: Any) -> dict[str, Any]:
            c = s.candidates(label, slice)
            if c is None:
                return {"candidates": None}
            return {"candidates": {"masks": [pack_mask(m) for m in c.masks], "scores": [float(v) for v in c.scores],
                                   "chosen": int(c.chosen)}}

        return await run_in_threadpool(run, sid, work)

    @v1.post("/sessions/{sid}/choose")
    async def choose_mask(sid: str, request: Request) -> dict[str, Any]:
        return await prompt_request(sid, request, ChooseMask, lambda s, r: s.choose_mask(r.label, r.slice, r.index))

    @v1.delete("/sessions/{sid}/objects/{label}")
    async def remove_object(sid: str, label: int, request: Request) -> dict[str, Any]:
        await run_in_threadpool(run, sid, lambda s: s.remove_object(label), request)
        return {"removed": label}

    @v1.post("/sessions/{sid}/reset")
    async def reset(sid: str, request: Request) -> dict[str, Any]:
        await run_in_threadpool(run, sid, lambda s: s.reset(), request)
        return {"reset": True}

    @v1.get("/sessions/{sid}/scores")
    async def scores(sid: str) -> dict[str, Any]:
        return {"scores": await run_in_threadpool(run, sid, lambda s: scores_to_json(s.slice_scores()))}

    @v1.get("/sessions/{sid}/result")
    async def result(sid: str) -> StreamingResponse:
        lab = await run_in_threadpool(run, sid, lambda s: s.result())
        header = {"shape": list(lab.shape), "dtype": lab.array.dtype.str, "segments": lab.meta.get("segments", []),
                  "slice_scores": {str(k): [None if v != v else v for v in vals] for k, vals in lab.meta.get("slice_scores", {}).items()},
                  "axis": lab.meta.get("axis")}
        return StreamingResponse(encode_array(header, lab.array), media_type="application/octet-stream")

    # ------------------------------------------------------------------ jobs
    @v1.post("/sessions/{sid}/jobs")
    async def start_job(sid: str, request: Request) -> dict[str, Any]:
        data = await body(request)
        req = parse(StartJob, data)
        h = hosted(sid)
        # bad arguments end the job at once with the engine's InputError (the client checks them first)
        job = h.start_job(request.headers.get(REQUEST_ID), what(request, data), direction=req.direction, objects=req.objects, start=req.start,
                          slice_range=tuple(req.slice_range) if req.slice_range is not None else None, stop_after=req.stop_after)
        registry.add_job(job)  # again for a retried request: the same job
        return {"job": job.id}

    @v1.get("/jobs/{jid}/events")
    async def job_events(jid: str, after: int = 0, wait: float = 0.0) -> dict[str, Any]:
        job = registry.job(jid)
        if after < 0 or not wait >= 0:
            raise InputError(f"after ({after}) and wait ({wait}) must not be negative")
        wait = min(wait, config.max_wait_s)
        if registry.long_polls() >= config.max_long_polls:
            wait = 0.0  # over --max-long-polls: answered at once, so waiting polls never hold more connections than that
        # waits on the event loop (it registers as a waiter before its first await, so the count above is exact):
        # long polls hold no worker thread, so they cannot starve other users' prompts
        return await job.wait_events(after, wait)

    @v1.post("/jobs/{jid}/cancel")
    async def cancel_job(jid: str) -> dict[str, Any]:
        job = registry.job(jid)
        job.cancel_event.set()
        return {"cancelling": jid, "done": job.done}

    app.include_router(v1)
    return app
