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
        self._users: dict[tuple[Any, ...], int] = {}  #: sessions holding each predictor (freed at 0, but the default's)
        self._pinned: set[tuple[Any, ...]] = set()  #: loaded ahead (POST /v1/models/{name}/load): kept until a session takes it
        self.builds = 0  #: predictors built since the server started (GET /v1/stats ``models_built``)
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
        self._check_caps(request)
        if "feature_cache_mb" not in request:
            cfg = replace(cfg, feature_cache_mb=min(cfg.feature_cache_mb, self.config.max_feature_cache_mb))
        if model == CUSTOM:
            if not self.config.checkpoint:
                raise InputError("this server has no custom model (start it with --checkpoint FILE.pt --config FILE.yaml)")
            cfg = replace(cfg, checkpoint=self.config.checkpoint, config_file=self.config.config_file,
                          image_size=cfg.image_size or self.config.custom_image_size)
        cfg.spec()  # an unknown model fails here
        return replace(cfg, device=self.device, compile=self.config.compile)

    def _check_caps(self, request: dict[str, Any]) -> None:
        """Refuse settings a client asked for over the server's caps (each names its ``serve`` option)."""
        caps = (("image_size", self.config.max_image_size, "--max-image-size"),
                ("feature_cache_mb", self.config.max_feature_cache_mb, "--max-feature-cache-mb"),
                ("encode_ahead", self.config.max_encode_ahead, "--max-encode-ahead"),
                ("encode_batch", self.config.max_encode_batch, "--max-encode-batch"))
        for name, cap, option in caps:
            value = request.get(name)
            if value is not None and value > cap:
                raise InputError(f"{name} {value} is over this server's limit of {cap:g} ({option}); ask for at most "
                                 f"{cap:g}, or start the server with a larger {option}")

    def _key(self, cfg: Any) -> tuple[Any, ...]:
        return (cfg.spec().name, cfg.resolved_image_size, bool(cfg.random_weights), int(cfg.seed), self.device,
                # a compiled model is compiled for one propagation batch size
                cfg.encode_batch if cfg.compile else None)

    def predictor(self, cfg: Any, *, user: bool = True) -> Any:
        """The shared predictor for ``cfg`` (built on first use, under the device's lock), with one more
        user: give it back with :meth:`release` (the last user's release frees it, but the default's).
        ``user=False`` (loading ahead): no user, the predictor is kept until a session takes it."""
        key = self._key(cfg)
        with self._guard:
            pred = self._predictors.get(key)
            if pred is not None:
                self._take(key, user)
                return pred
        from ..engine.predictor import build_predictor

        with self.lock(self.device):
            with self._guard:
                pred = self._predictors.get(key)
            if pred is None:
                pred = build_predictor(cfg)
                with self._guard:
                    self.builds += 1
            with self._guard:
                pred = self._predictors.setdefault(key, pred)
                self._take(key, user)
        return pred

    def _take(self, key: tuple[Any, ...], user: bool) -> None:
        """One more user of ``key``'s predictor (a session: it is no longer pinned), or pin it: loaded ahead,
        it outlives the sessions open now, until one opened later takes it (called with the guard)."""
        if user:
            self._users[key] = self._users.get(key, 0) + 1
            self._pinned.discard(key)
        else:
            self._pinned.add(key)

    def is_loaded(self, cfg: Any) -> bool:
        with self._guard:
            return self._key(cfg) in self._predictors

    def release(self, cfg: Any) -> None:
        """One user of ``cfg``'s predictor is done; the last one frees it (kept: the server's default model)."""
        key, keep = self._key(cfg), self._default_key()
        with self._guard:
            self._users[key] = self._users.get(key, 0) - 1
            if self._users[key] > 0 or key == keep or key in self._pinned:
                return
            del self._users[key]
            pred = self._predictors.pop(key, None)
        if pred is not None:
            del pred
            import gc

            from .store import trim_heap

            gc.collect()
            trim_heap()

    def _default_key(self) -> tuple[Any, ...] | None:
        """The predictor of a session that asks for nothing (the first model at its own size): kept loaded."""
        try:
            return self._key(self.engine_config(None))
        except InputError:
            return None

    def loaded(self) -> list[str]:
        with self._guard:
            return [f"{k[0]}@{k[1]}px{' (random weights)' if k[2] else ''}" for k in self._predictors]
