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
from typing import Any, Callable

MODES = ["local", "remote"]
LOCAL_IDLE_TIMEOUT_S = 4 * 3600  # a session untouched this long is freed (a safety net: the module closes its own)


@dataclass(frozen=True)
class Settings:
    """Everything the logic needs from the parameter node, read once on the GUI thread."""

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
    def read(cls, source: Any) -> "Settings":
        """A snapshot of ``source``'s attributes of the same names (the parameter node)."""
        return cls(**{name: getattr(source, name) for name in cls.__dataclass_fields__ if hasattr(source, name)})

    def session_key(self) -> tuple:
        """The settings a session depends on (changing one needs a new session; encodeAhead is part
        of the SAM2 session's engine config, fixed when it is created, and means nothing to the baseline)."""
        return (self.mode, self.engine, self.model, self.device, self.window, self.checkpoint, self.serverUrl, self.serverToken,
                self.encodeAhead if self.engine == "sam2" else None)


def slicer_python() -> str:
    """Slicer's own Python (PythonSlicer, on PATH inside Slicer), else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


class EngineLink:
    """Makes sessions on the engine server the settings name; starts the local one when first needed."""

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
        """The local engine server for these settings (started, or restarted for another device)."""
        from sam2volume.client import start_local_server

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
            self.server = start_local_server(self.python, device=settings.device, engine_args=args,
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

    def factory(self, settings: Settings) -> Callable[..., Any]:
        """``(volume, axis) -> RemoteSession`` for these settings."""
        from sam2volume.client import RemoteSession

        url, token = self.endpoint(settings)
        config = None
        if settings.engine == "sam2":
            from sam2volume.engine.config import EngineConfig

            # a custom checkpoint is the local server's model "custom", built with the chosen model's
            # config and image size (a remote session never names files)
            model = "custom" if settings.checkpoint and settings.mode == "local" else settings.model
            # encoding ahead: the first propagation after a prompt finds those slices encoded already
            fields = {**({"model": model} if model else {}), "encode_ahead": int(settings.encodeAhead), **self.config_overrides}
            config = EngineConfig(**fields)
        window = None if settings.window == "auto" else settings.window

        def make(volume, axis):
            return RemoteSession(url, volume, axis, config, engine=settings.engine, token=token, window=window)

        return make

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()
