"""Loading a model ahead of its first session (``POST /v1/models/{name}/load``), on a worker thread.

A client (the Slicer module's Initialize) asks for the model with the engine settings its sessions
will send, gets an answer at once, and polls ``GET /v1/models/{name}/load`` for the stage
(``idle``, ``queued``, ``downloading``, ``building``, ``ready``, ``failed``, ``cancelling``, ``cancelled``),
the bytes of the checkpoint downloaded so far and its total (from the weights manager's own download),
and the error if it failed.

``POST /v1/models/{name}/load/cancel`` (:meth:`ModelLoader.cancel`) stops a load that is ``queued`` or
``downloading``: it is ``cancelling`` until the worker thread stops (the download at its next chunk:
the progress callback raises CancelledError), then ``cancelled``. The partial checkpoint (``.part``) is
kept, so the next ``POST .../load`` resumes the download where it stopped. A load that is ``building``
cannot be interrupted (torch builds the model in one call): it finishes and the model stays loaded.
The predictor built is the pool's, kept until a session takes it (then freed with its last session as
any other, the server's default model excepted) or the server stops.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..errors import CancelledError, Sam2VolumeError
from .pool import CUSTOM, ModelPool

log = logging.getLogger("sam2volume.server")
STAGES = ("idle", "queued", "downloading", "building", "ready", "failed", "cancelling", "cancelled")
STOPPABLE = ("queued", "downloading")  #: the stages a cancel stops (building cannot be interrupted)
OVER = ("failed", "idle", "cancelling", "cancelled")  #: a load in one of these is started again by POST .../load
DEFAULT = "default"  #: the path name for the server's first model: /v1/models/default/load


class ModelLoad:
    """One load: its settings, stage, bytes, error (read by GET while the worker thread writes)."""

    def __init__(self, name: str, request: dict[str, Any] | None):
        self.name, self.request = name, dict(request or {})
        self.stage = "queued"
        self.bytes_done, self.bytes_total = 0, None
        self.error: tuple[str, str] | None = None
        self.config: Any = None  # the EngineConfig, once checked
        self.started, self.finished = time.monotonic(), None
        self.cancel_asked = False  # set by ModelLoader.cancel: the worker stops at its next step

    def on_bytes(self, done: int, total: int | None) -> None:
        """The download's progress callback (after each chunk written): raises CancelledError once cancelled."""
        self.bytes_done, self.bytes_total = int(done), total
        if self.cancel_asked:
            raise CancelledError(f"the download of {self.name} was cancelled after {done} bytes; the partial file is "
                                 "kept: loading again resumes it")

    def as_dict(self, pool: ModelPool) -> dict[str, Any]:
        stage = self.stage
        if stage == "ready" and not pool.is_loaded(self.config):
            stage = "idle"  # freed since: a session took it and was the last to close
        end = self.finished if self.finished is not None else time.monotonic()
        return {"model": self.name, "stage": stage, "bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
                "seconds": round(end - self.started, 3), "config": self.request or None,
                "error": None if self.error is None else {"type": self.error[0], "message": self.error[1]}}


class ModelLoader:
    """The loads asked for, by model name (the latest one of each name)."""

    def __init__(self, pool: ModelPool):
        self.pool = pool
        self._loads: dict[str, ModelLoad] = {}
        self._lock = threading.Lock()

    def resolve(self, name: str) -> str:
        return self.pool.models[0] if name == DEFAULT else name

    def start(self, name: str, request: dict[str, Any] | None) -> dict[str, Any]:
        """Start loading (or answer the load already under way or done with the same settings) and return at once.

        The settings are checked on the worker thread (resolving the device imports torch): a bad one
        ends the load as ``failed`` with the InputError naming it."""
        name = self.resolve(name)
        request = dict(request or {})
        if request.get("model") not in (None, name):
            from ..errors import InputError

            raise InputError(f"the settings name model {request['model']!r} but the path names {name!r}; "
                             f"send the model in the path only (POST /v1/models/{name}/load)")
        request["model"] = name
        with self._lock:
            load = self._loads.get(name)
            if load is not None and load.request == request and load.as_dict(self.pool)["stage"] not in OVER:
                return load.as_dict(self.pool)
            load = self._loads[name] = ModelLoad(name, request)
        threading.Thread(target=self._run, args=(load,), name=f"sam2volume-load-{name}", daemon=True).start()
        return load.as_dict(self.pool)

    def status(self, name: str) -> dict[str, Any]:
        name = self.resolve(name)
        with self._lock:
            load = self._loads.get(name)
        if load is None:
            return {"model": name, "stage": "idle", "bytes_done": 0, "bytes_total": None, "seconds": 0.0, "config": None,
                    "error": None}
        return load.as_dict(self.pool)

    def cancel(self, name: str) -> dict[str, Any]:
        """Stop the load of ``name`` if it is queued or downloading (answered at once: it is ``cancelling``
        until its worker stops, then ``cancelled``); a building one finishes; any other is left as it is.
        The answer is the load's state with ``cancelled`` (whether this stopped it) and ``message``."""
        name = self.resolve(name)
        with self._lock:
            load = self._loads.get(name)
            stoppable = load is not None and load.stage in STOPPABLE
            if stoppable:
                load.cancel_asked, load.stage = True, "cancelling"
        state = self.status(name)
        stage = state["stage"]
        if stoppable:
            message = (f"the load of {name} is cancelled: the download stops at its next chunk and its partial file is kept "
                       f"({state['bytes_done']} bytes so far), so loading again resumes it")
        elif stage == "building":
            message = (f"{name} is being built, which cannot be interrupted: it finishes and stays loaded "
                       "for the first session")
        elif stage in ("cancelling", "cancelled"):
            message = f"the load of {name} is {stage} already"
        else:
            message = f"nothing to cancel: the load of {name} is {stage}"
        return {**state, "cancelled": stoppable, "message": message}

    def _advance(self, load: ModelLoad, stage: str) -> None:
        """The worker's next stage, unless the load was cancelled (then CancelledError): one step with cancel's check."""
        with self._lock:
            if load.cancel_asked:
                raise CancelledError(f"the load of {load.name} was cancelled")
            load.stage = stage

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            loads = list(self._loads.values())
        return [load.as_dict(self.pool) for load in loads]

    def _run(self, load: ModelLoad) -> None:
        try:
            cfg = self.pool.engine_config(load.request)
            load.config = cfg
            if not cfg.random_weights and cfg.model != CUSTOM and not cfg.checkpoint:
                from ..models import WeightsManager

                spec = cfg.spec()
                wm = WeightsManager()
                if wm.status(spec) != "downloaded":
                    load.bytes_done = wm.partial_bytes(spec)  # a part kept by a cancelled load: it resumes from there
                    self._advance(load, "downloading")
                    wm.ensure(spec, on_progress=load.on_bytes)
            self._advance(load, "building")  # from here on a cancel lets it finish
            self.pool.predictor(cfg, user=False)  # built once, kept (pinned) until a session takes it
            load.stage = "ready"
            log.info("model %s loaded ahead in %.1f s", load.name, time.monotonic() - load.started)
        except CancelledError:
            load.stage = "cancelled"
            log.info("loading model %s cancelled after %d bytes of its checkpoint", load.name, load.bytes_done)
        except Sam2VolumeError as exc:
            if load.cancel_asked:  # cancelled, then the download broke off before its next chunk (a read timeout)
                load.stage = "cancelled"
                log.info("loading model %s cancelled (%s)", load.name, exc)
                return
            load.error, load.stage = (type(exc).__name__, str(exc)), "failed"
            log.warning("loading model %s failed: %s", load.name, exc)
        except Exception as exc:
            log.exception("loading model %s failed", load.name)
            if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
                load.error, load.stage = ("MemoryError", f"out of memory building model {load.name} on {self.pool.device}: {exc}"), "failed"
                return
            load.error, load.stage = ("InternalError", f"loading model {load.name} failed inside the server (see the server log)"), "failed"
        finally:
            load.finished = time.monotonic()
