"""Where the model runs: an engine server in its own process, never Slicer's GUI thread.

Slicer's GUI thread holds the GIL while it idles (PythonQt's thread support is off), so a Python
worker thread inside Slicer only runs during timer ticks. The model therefore runs in a server
process: ``local`` starts ``sam2volume``'s engine server with Slicer's own Python on loopback (a
crash or out-of-memory in torch cannot take Slicer down), ``remote`` talks to a server elsewhere
(a GPU machine: URL and token; Slicer then needs no torch). The GUI thread only makes short HTTP
requests through :mod:`sam2volume.client`.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

MODES = ["local", "remote"]
LOCAL_IDLE_TIMEOUT_S = 4 * 3600  # a session untouched this long is freed (a safety net: the module closes its own)
# remote mode: every request after opening a session (prompts, jobs) is answered within this many seconds
# or fails with a message naming the server, so that a stalled server never holds Slicer's GUI for long
REMOTE_CALL_TIMEOUT_S = 10.0


#: where the engine is: application settings (QSettings in the widget), never the parameter node, so that
#: a saved scene holds no token and the mode and URL stay from one Slicer session to the next
CONNECTION_FIELDS = ("mode", "serverUrl", "serverToken")
SETTINGS_GROUP = "SegmentWithSAM2"  # QSettings keys: SegmentWithSAM2/mode, .../serverUrl, .../serverToken


@dataclass(frozen=True)
class Settings:
    """Everything the logic needs, read once on the GUI thread: the parameter node's fields and the
    connection (:data:`CONNECTION_FIELDS`) from the application settings."""

    mode: str = "local"
    engine: str = "sam2"
    model: str = ""
    device: str = "auto"
    window: str = "auto"
    direction: str = "both"
    stopAfter: int = 3
    encodeAhead: int = 16  # slices SAM2 encodes around each prompt in the background (0: off)
    checkpoint: str = ""
    serverUrl: str = ""
    serverToken: str = ""

    @classmethod
    def read(cls, source: Any, **connection: str) -> "Settings":
        """A snapshot of ``source``'s attributes of the same names (the parameter node), with the
        connection passed in (mode, serverUrl, serverToken: never read from ``source``)."""
        unknown = set(connection) - set(CONNECTION_FIELDS)
        if unknown:
            raise TypeError(f"not connection settings: {', '.join(sorted(unknown))} (only {', '.join(CONNECTION_FIELDS)})")
        fields = {name: getattr(source, name) for name in cls.__dataclass_fields__
                  if name not in CONNECTION_FIELDS and hasattr(source, name)}
        return cls(**fields, **connection)

    def session_key(self) -> tuple:
        """The settings a session depends on (changing one needs a new session; encodeAhead is part
        of the SAM2 session's engine config, fixed when it is created, and means nothing to the baseline)."""
        return (self.mode, self.engine, self.model, self.device, self.window, self.checkpoint, self.serverUrl, self.serverToken,
                self.encodeAhead if self.engine == "sam2" else None)


def forget_connection(parameter_node: Any) -> None:
    """Remove the connection parameters a scene saved by an older version of the module holds in its
    parameter node (a vtkMRMLScriptedModuleNode), so that saving that scene again drops the token."""
    for name in CONNECTION_FIELDS:
        parameter_node.UnsetParameter(name)  # nothing happens where it is not set


def slicer_python(launchers: tuple[str | None, ...] | None = None) -> str:
    """The interpreter for the local engine server: Slicer's real Python, else this interpreter.

    Slicer's ``PythonSlicer`` (on PATH inside Slicer; also Slicer's ``sys.executable``) is a CTK launcher:
    it sets the environment from its launcher settings and starts ``python-real`` beside it as a child,
    forwarding no signal, so stopping the launcher would leave the server running. Inside Slicer the
    environment already is Slicer's (the application set PYTHONHOME, PYTHONPATH and the library paths
    from the same launcher settings), so ``python-real`` started with it runs as PythonSlicer would.
    Where there is no ``python-real``, the launcher is used: the server's parent watch still ends it.
    """
    if launchers is None:
        launchers = (shutil.which("PythonSlicer"), sys.executable)
    for launcher in launchers:
        if not launcher:
            continue
        path = Path(launcher)
        if path.stem.lower() == "pythonslicer":
            real = path.with_name("python-real" + path.suffix)
            return str(real) if real.is_file() else str(path)
    return sys.executable


def check_connection(url: str, token: str | None = None, timeout: float = 5.0) -> str:
    """"Test connection": whether a sam2volume server answers at ``url`` and takes ``token``, within
    ``timeout`` s per request. Returns a one-line summary; raises with the reason otherwise."""
    from sam2volume.client import check_server

    if not url:
        raise ValueError("no server URL: type the remote server's address (Server URL), e.g. http://gpu-host:8765")
    info = check_server(url, token or None, timeout=timeout)
    models = ", ".join(m["name"] for m in info.get("models", [])) or "none"
    return (f"connected to sam2volume {info.get('version', '?')} at {url}: token accepted, device {info.get('device', '?')}, "
            f"models {models}")


class EngineLink:
    """Makes sessions on the engine server the settings name; starts the local one when first needed."""

    remote_call_timeout = REMOTE_CALL_TIMEOUT_S  # s; set on an instance to change it

    def __init__(self, python: str | None = None, log_file: str | None = None, allow_random_weights: bool = False,
                 engine_args: tuple = (), config_overrides: dict | None = None):
        self.python = python or slicer_python()
        self.config_overrides = dict(config_overrides or {})  # e.g. image_size, random_weights: tests and benchmarks
        self.log_file = log_file
        self.allow_random_weights = allow_random_weights
        self.engine_args = tuple(engine_args)
        self.server: Any = None
        self._server_key: tuple | None = None

    def local_server(self, settings: Settings):
        """The local engine server for these settings (started, or restarted for another device), once
        it answers (a blocking wait of up to 2 minutes: Initialize starts it without waiting)."""
        server = self.launch_local_server(settings)
        try:
            server.wait_ready(request_timeout=1.0)
        except Exception:
            self.server = None  # stopped by poll_ready: the next call starts a new one
            raise
        return server

    def launch_local_server(self, settings: Settings):
        """The local engine server for these settings, started if needed without waiting for it:
        its ``poll_ready()`` says when it answers."""
        from sam2volume.client import launch_local_server

        key = (settings.device, settings.checkpoint, settings.model if settings.checkpoint else "")
        if self.server is not None and (key != self._server_key or not self.server.alive()):
            self.stop()
        if self.server is None:
            log = self.log_file or os.path.join(os.path.expanduser("~"), ".cache", "sam2volume", "slicer-server.log")
            os.makedirs(os.path.dirname(log), exist_ok=True)
            args = ("--idle-timeout", str(LOCAL_IDLE_TIMEOUT_S)) + self.engine_args
            if settings.checkpoint:  # served as model "custom", with the chosen model's SAM2 config
                from sam2volume.models.registry import get_model

                spec = get_model(settings.model)
                args += ("--checkpoint", settings.checkpoint, "--config", spec.config, "--custom-image-size", str(spec.image_size))
            self.server = launch_local_server(self.python, device=settings.device, engine_args=args,
                                              allow_random_weights=self.allow_random_weights, log_file=log)
            self._server_key = key
        return self.server

    def endpoint(self, settings: Settings) -> tuple[str, str | None]:
        if settings.mode == "remote":
            if not settings.serverUrl:
                raise ValueError("remote mode needs the server URL (Server URL field), e.g. http://gpu-host:8765")
            return settings.serverUrl, settings.serverToken or None
        if settings.mode != "local":
            raise ValueError(f"mode {settings.mode!r} must be one of {', '.join(MODES)}")
        server = self.local_server(settings)
        return server.url, server.token

    def engine_config(self, settings: Settings) -> Any:
        """The EngineConfig sessions of these settings ask for (None for the baseline): Initialize loads
        the model of the same one, so that the first prompt's session finds it built."""
        if settings.engine != "sam2":
            return None
        from sam2volume.engine.config import EngineConfig

        # a custom checkpoint is the local server's model "custom", built with the chosen model's
        # config and image size (a remote session never names files)
        model = "custom" if settings.checkpoint and settings.mode == "local" else settings.model
        # encoding ahead: the first propagation after a prompt finds those slices encoded already
        fields = {**({"model": model} if model else {}), "encode_ahead": int(settings.encodeAhead), **self.config_overrides}
        return EngineConfig(**fields)

    def factory(self, settings: Settings) -> Callable[..., Any]:
        """``(volume, axis) -> RemoteSession`` for these settings."""
        from sam2volume.client import RemoteSession

        url, token = self.endpoint(settings)
        config = self.engine_config(settings)
        window = None if settings.window == "auto" else settings.window

        def make(volume, axis):
            return RemoteSession(url, volume, axis, config, engine=settings.engine, token=token, window=window,
                                 call_timeout=self.remote_call_timeout if settings.mode == "remote" else None)

        return make

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the local server (what is left after ``timeout`` s is killed)."""
        server, self.server = self.server, None
        if server is not None:
            server.stop(timeout)
