"""Initialize: start the engine server and load the chosen model in the background, stepped by a GUI timer.

Slicer's GUI thread holds the GIL while it idles, so nothing here runs on a thread: the widget's timer
calls :meth:`Initializer.step`, and each step does at most one short thing (look at the local server's
ready file, or one HTTP request of at most :data:`REQUEST_TIMEOUT_S`). The stages:

``starting`` (the local server's process is started) -> ``waiting`` (until it answers) -> ``loading`` (the
server is asked to load the model: ``POST /v1/models/{name}/load``) -> ``queued`` / ``downloading`` (bytes
so far and total, from the server's checkpoint download) / ``building`` -> ``ready``, or ``failed`` with
:attr:`Initializer.message` saying why. Once ready, the first prompt's session finds the server running
and the model built: it only encodes its slice.

:meth:`Initializer.cancel` (the Initialize button reads *Cancel* while it runs) ends it as ``cancelled``
with one request at most: a load queued or downloading on the server stops (``POST
/v1/models/{name}/load/cancel``; the partial checkpoint is kept, so Initialize again resumes the download
where it stopped); a model being built finishes on the server (torch cannot interrupt it) and stays loaded
for the first prompt; a local server still starting is stopped (nothing Initialize started keeps running
for nothing; Initialize again starts it anew), while one that already answers is left running.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from .engine_link import EngineLink, Settings

REQUEST_TIMEOUT_S = 0.5  #: the longest one step's request blocks the GUI thread (an unanswered one is no news)
STEP_INTERVAL_S = 0.25  #: steps closer together than this do nothing (the widget's timer ticks every 50 ms)
SILENT_LIMIT_S = 30.0  #: a server that answers no request for this long ends Initialize with a message
DONE = ("ready", "failed", "cancelled")


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f}"


class Initializer:
    """One Initialize for ``settings``: :meth:`step` it until :attr:`done`."""

    def __init__(self, link: EngineLink, settings: Settings, clock: Callable[[], float] = time.monotonic):
        self.link, self.settings, self.clock = link, settings, clock
        self.stage = "starting"
        self.message = "starting the engine server ..." if settings.mode == "local" else f"reaching {settings.serverUrl} ..."
        self.bytes_done, self.bytes_total = 0, None
        self.error: str | None = None
        self.url: str | None = None
        self.token: str | None = None
        self.config = link.engine_config(settings)
        self.model = getattr(self.config, "model", None) or "the server's default model"
        self.started = clock()
        self._next = 0.0
        self._silent_since: float | None = None
        self._server: Any = None

    @property
    def done(self) -> bool:
        return self.stage in DONE

    @property
    def ready(self) -> bool:
        return self.stage == "ready"

    @property
    def progress(self) -> tuple[int, int]:
        """(done, total) for a progress bar: the download's MB (also where a cancel stopped it), else (0, 0)
        (busy, no measure) while it runs, full when ready, empty when it failed or was cancelled."""
        if self.stage in ("downloading", "cancelled") and self.bytes_total:
            return int(self.bytes_done // 1_000_000), max(1, int(self.bytes_total // 1_000_000))
        if self.done:
            return (1, 1) if self.ready else (0, 1)
        return (0, 0)

    def step(self) -> "Initializer":
        """Do the next short thing (nothing if the last step was under :data:`STEP_INTERVAL_S` ago)."""
        if self.done:
            return self
        now = self.clock()
        if now < self._next:
            return self
        self._next = now + STEP_INTERVAL_S
        try:
            self._step()
        except Exception as exc:  # noqa: BLE001 - every failure ends Initialize with its message
            self._fail(str(exc) or type(exc).__name__)
        return self

    def cancel(self) -> "Initializer":
        """Stop Initialize (the Cancel button), blocking the GUI thread for one short request at most
        (:data:`REQUEST_TIMEOUT_S`); :attr:`message` says what happened. Nothing if it ended already."""
        if self.done:
            return self
        if self.url is None:  # the local server has not answered yet (or nothing started): no request
            server = self._server
            if server is not None and not server.ready:
                # SIGTERM to a process still importing ends it at once; what is left after the timeout is killed
                self.link.stop(timeout=REQUEST_TIMEOUT_S) if self.link.server is server else server.stop(REQUEST_TIMEOUT_S)
                self._cancelled("the engine server that was starting was stopped; press Initialize to start it again")
            else:
                self._cancelled("nothing had started yet; press Initialize to start again")
            return self
        from sam2volume.client import cancel_load

        try:
            state = cancel_load(self.url, self.config, token=self.token, timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - Cancel always ends Initialize; the message says what is unknown
            self._cancelled(f"the engine server did not take the Cancel ({exc}): its load of {self.model} may go on; "
                            "press Initialize again to follow it")
            return self
        stage = state.get("stage")
        self.bytes_done, self.bytes_total = int(state.get("bytes_done") or 0), state.get("bytes_total")
        if stage == "ready":
            self._ready(f"ready: {self.model} had finished loading before Cancel ({{seconds:.0f}} s); the first prompt only encodes its slice")
        elif stage == "failed":
            self._follow(state)
        elif stage == "building":
            self._cancelled(f"{self.model} was being built already, which cannot be interrupted: the server finishes "
                            "building it and keeps it for the first prompt (press Initialize again to follow it)")
        elif self.bytes_done:
            self._cancelled(f"the download of {self.model} stopped at {_mb(self.bytes_done)} of {_mb(self.bytes_total)} MB; "
                            "the partial file is kept: press Initialize again to resume the download where it stopped")
        else:
            self._cancelled(f"{self.model} was not loaded; press Initialize again to load it")
        return self

    def _cancelled(self, what: str) -> None:
        self.stage = "cancelled"
        self.message = f"Initialize cancelled: {what}."

    def _fail(self, why: str) -> None:
        self.stage, self.error = "failed", why
        server = self.link.server if self.settings.mode == "local" else None
        tail = ""
        if server is not None and not server.alive() and "its log ends" not in why:
            tail = f"\nThe local engine server stopped; its log ends:\n{server.log_tail(1500)}"
        self.message = f"Initialize failed: {why}{tail}\nThe module stays usable: fix the cause and press Initialize again."

    def _step(self) -> None:
        if self.stage == "starting":
            if self.settings.mode == "local":
                self._server = self.link.launch_local_server(self.settings)
            else:
                self.url, self.token = self.link.endpoint(self.settings)
            self.stage = "waiting"
        if self.stage == "waiting":
            if self._server is not None:
                if not self._server.poll_ready(timeout=REQUEST_TIMEOUT_S):
                    self.message = f"starting the engine server ... ({self.clock() - self.started:.0f} s)"
                    return
                self.url, self.token = self._server.url, self._server.token
            if self.config is None:  # the baseline: no model to load
                self._ready("engine server ready at {url} (baseline engine, no model to load)")
                return
            self.stage = "loading"
            return
        from sam2volume.client import TIMEOUT, load_model, load_status

        try:
            if self.stage == "loading":
                state = load_model(self.url, self.config, token=self.token, timeout=REQUEST_TIMEOUT_S)
            else:
                state = load_status(self.url, self.config, token=self.token, timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "kind", None) != TIMEOUT:
                raise
            now = self.clock()
            self._silent_since = now if self._silent_since is None else self._silent_since
            if now - self._silent_since > SILENT_LIMIT_S:
                raise RuntimeError(f"the engine server at {self.url} has not answered for {now - self._silent_since:.0f} s") from None
            return  # busy for a moment: no news
        self._silent_since = None
        self._follow(state)

    def _follow(self, state: dict[str, Any]) -> None:
        stage = state.get("stage")
        self.bytes_done, self.bytes_total = int(state.get("bytes_done") or 0), state.get("bytes_total")
        if stage == "failed":
            err = state.get("error") or {}
            self._fail(f"loading {self.model}: {err.get('message') or 'no reason given (see the server log)'}")
            return
        if stage == "ready":
            self._ready(f"ready: {self.model} is loaded ({{seconds:.0f}} s); the first prompt only encodes its slice")
            return
        if stage in ("cancelling", "cancelled"):  # cancelled on the server by another client
            self._cancelled(f"the load of {self.model} was cancelled on the engine server; press Initialize again to resume it")
            return
        if stage == "idle":  # freed again, or never asked: ask (again)
            self.stage = "loading"
            return
        self.stage = stage if stage in ("queued", "downloading", "building") else "building"
        if self.stage == "downloading":
            self.message = f"downloading {self.model}: {_mb(self.bytes_done)} of {_mb(self.bytes_total)} MB"
        elif self.stage == "queued":
            self.message = f"loading {self.model} ..."
        else:
            self.message = f"building {self.model} ... ({self.clock() - self.started:.0f} s)"

    def _ready(self, template: str) -> None:
        self.stage = "ready"
        self.message = template.format(url=self.url, seconds=self.clock() - self.started)
