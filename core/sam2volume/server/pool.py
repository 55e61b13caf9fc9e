"""One predictor per (model, device), shared by every session, and one fair lock per device.

Model work is serialised per device: a prompt takes the device's lock for its one model call, and
a propagation takes it slice by slice (it hands the lock on between slices), so prompts of other
users are answered while a long propagation runs. The lock is first come, first served.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import replace
from typing import Any

from ..errors import InputError
from .config import ServerConfig

#: fields of EngineConfig a request may set (never a path: checkpoint, config_file, extra_overrides)
REQUEST_FIELDS = ("model", "image_size", "dtype", "offload_state_to_cpu", "feature_cache_mb", "random_weights", "seed", "device",
                  "encode_batch", "encode_ahead")
#: set when the server starts (every session shares the model, so a request cannot change them)
SERVER_FIELDS = ("compile",)
PATH_FIELDS = ("checkpoint", "config_file", "extra_overrides")
CUSTOM = "custom"


class FairLock:
    """A lock handed to waiters in arrival order (a releasing thread that re-acquires queues last)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: collections.deque[object] = collections.deque()
        self._held = False

    def acquire(self) -> None:
        with self._cond:
            me = object()
            self._queue.append(me)
            while self._held or self._queue[0] is not me:
                self._cond.wait()
            self._queue.popleft()
            self._held = True

    def acquire_if_idle(self) -> bool:
        """Take the lock only if nobody holds it or waits for it (background work, lowest priority)."""
        with self._cond:
            if self._held or self._queue:
                return False
            self._held = True
            return True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def __enter__(self) -> "FairLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def yield_to_waiters(self) -> None:
        """Let anyone waiting go first, then take the lock again (between propagated slices)."""
        with self._cond:
            if not self._queue:
                return
        self.release()
        self.acquire()


class ModelPool:
    def __init__(self, config: ServerConfig):
        from ..models.registry import DEFAULT_MODEL

        self.config = config
        self.models = list(config.models) or [DEFAULT_MODEL]
        if config.checkpoint:
            self.models.insert(0, CUSTOM)
        self._predictors: dict[tuple[Any, ...], Any] = {}
        self._locks: dict[str, FairLock] = {}
        self._guard = threading.Lock()
        self._device: str | None = None

    @property
    def device(self) -> str:
        """The server's device (resolved once; ``auto`` picks CUDA, then MPS, then CPU)."""
        if self._device is None:
            from ..engine.predictor import resolve_device

            self._device = str(resolve_device(self.config.device))
        return self._device

    def lock(self, device: str) -> FairLock:
        with self._guard:
            return self._locks.setdefault(device, FairLock())

    def engine_config(self, request: dict[str, Any] | None) -> Any:
        """The EngineConfig for a session from a request's settings (checked; the server picks the device)."""
        from ..engine.config import EngineConfig

        request = dict(request or {})
        paths = [k for k in PATH_FIELDS if request.get(k)]
        if paths:
            raise InputError(
                f"a request cannot name server-side files ({', '.join(paths)}); custom checkpoints are set when the "
                f"server starts (sam2volume serve --checkpoint FILE.pt --config FILE.yaml) and then asked for as model '{CUSTOM}'"
            )
        fixed = [k for k in SERVER_FIELDS if k in request and request[k] != getattr(self.config, k)]
        if fixed:
            raise InputError(f"{', '.join(fixed)} is set when the server starts (sam2volume serve --compile), not per session")
        for k in SERVER_FIELDS:
            request.pop(k, None)
        unknown = sorted(set(request) - set(REQUEST_FIELDS) - set(PATH_FIELDS))
        if unknown:
            raise InputError(f"unknown engine setting(s) {', '.join(unknown)}; allowed: {', '.join(REQUEST_FIELDS)}")
        request.pop("device", None)  # the server's device, whatever the client had
        for k in PATH_FIELDS:
            request.pop(k, None)
        model = request.get("model") or self.models[0]
        random_weights = bool(request.get("random_weights", False))
        if random_weights and not self.config.allow_random_weights:
            raise InputError("this server does not serve random weights (start it with --allow-random-weights for tests)")
        if model != CUSTOM and model not in self.models and not random_weights:
            raise InputError(f"model {model!r} is not served here; this server serves: {', '.join(self.models)}")
        request["model"] = model
        try:
            cfg = EngineConfig(**request)
        except TypeError as exc:
            raise InputError(f"engine settings: {exc}") from None
        if model == CUSTOM:
            if not self.config.checkpoint:
                raise InputError("this server has no custom model (start it with --checkpoint FILE.pt --config FILE.yaml)")
            cfg = replace(cfg, checkpoint=self.config.checkpoint, config_file=self.config.config_file,
                          image_size=cfg.image_size or self.config.custom_image_size)
        cfg.spec()  # an unknown model fails here
        return replace(cfg, device=self.device, compile=self.config.compile)

    def predictor(self, cfg: Any) -> Any:
        """The shared predictor for ``cfg`` (built on first use, under the device's lock)."""
        key = (cfg.spec().name, cfg.resolved_image_size, bool(cfg.random_weights), int(cfg.seed), self.device,
               # a compiled model is compiled for one propagation batch size
               cfg.encode_batch if cfg.compile else None)
        with self._guard:
            pred = self._predictors.get(key)
        if pred is not None:
            return pred
        from ..engine.predictor import build_predictor

        with self.lock(self.device):
            with self._guard:
                pred = self._predictors.get(key)
            if pred is None:
                pred = build_predictor(cfg)
                with self._guard:
                    self._predictors[key] = pred
        return pred

    def loaded(self) -> list[str]:
        with self._guard:
            return [f"{k[0]}@{k[1]}px{' (random weights)' if k[2] else ''}" for k in self._predictors]
