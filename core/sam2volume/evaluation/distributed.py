"""Cases on a Ray cluster: one actor per GPU (or per N CPUs) builds its model once and keeps it; cases are
handed out one at a time as actors finish (a slow case holds back nobody); the driver alone writes the run
folder, so the atomic-write and resume rules of a local run hold unchanged.

Workers read the images and labels from the paths the driver gives them: they must see the dataset at the
same path (a shared file system). Only case descriptions go to the workers; records and the overlay and
prediction files they made come back to the driver, which writes them. A worker that dies (killed, out of
memory) costs its current case, which is retried once on a fresh worker, then recorded as an error.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError

MAX_ATTEMPTS = 2


def _files_under(folder: str) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


class CaseWorker:
    """A Ray actor for evaluate: one engine factory (the SAM2 model built once, on first use) for all its cases."""

    def __init__(self, factory_args: tuple) -> None:
        from .runner import _Engines

        self.factory = _Engines(*factory_args)
        self.name = f"{os.uname().nodename}:{os.getpid()}"

    def run(self, case: Any, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes], str]:
        from .runner import _run_case

        with tempfile.TemporaryDirectory(prefix="sam2volume-case-") as tmp:
            record = _run_case(case, factory=self.factory, run_dir=Path(tmp), **kwargs)
            return record, _files_under(tmp), self.name


class VolumeWorker:
    """A Ray actor for batch: segments one volume at a time into a scratch folder (the model built once)."""

    def __init__(self, config: Any, engine: str) -> None:
        self.config, self.engine, self.predictor = config, engine, None
        self.name = f"{os.uname().nodename}:{os.getpid()}"

    def run(self, item: Any, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes], str]:
        from ..api import segment
        from ..errors import Sam2VolumeError

        image, pfile, out_name, png_name, dest = item
        if self.engine == "sam2" and self.predictor is None:
            from ..engine.predictor import build_predictor

            self.predictor = build_predictor(self.config)
        with tempfile.TemporaryDirectory(prefix="sam2volume-volume-") as tmp:
            try:
                segment(image, pfile, Path(tmp) / out_name, config=self.config, engine=self.engine, predictor=self.predictor,
                        png=Path(tmp) / png_name if png_name else None, **kwargs)
                status: dict[str, Any] = {"ok": True}
            except Sam2VolumeError as exc:
                status = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            relocate_reports(tmp, dest)
            return status, _files_under(tmp), self.name


def relocate_reports(scratch: str, dest: str) -> None:
    """The run reports written in a worker's scratch folder name the files where the driver puts them
    (``dest``), not the scratch folder, which is gone once the worker returns."""
    from ..io.atomic import write_json_atomic

    prefix = str(Path(scratch)) + os.sep

    def moved(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(prefix):
            return str(Path(dest) / value[len(prefix):])
        if isinstance(value, dict):
            return {k: moved(v) for k, v in value.items()}
        if isinstance(value, list):
            return [moved(v) for v in value]
        return value

    for path in Path(scratch).glob("*.report.json"):
        write_json_atomic(path, moved(json.loads(path.read_text(encoding="utf-8"))))


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (``auto``: the one `ray start` made here), or start a local Ray
    instance when ``address`` is None or ``local``. Returns True when this call started Ray."""
    try:
        import ray
    except ModuleNotFoundError:
        raise InputError("--ray needs Ray: pip install 'segment-with-sam2[distributed]'") from None
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address in (None, "", "local"):
            ray.init(**kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot reach the Ray cluster at {address!r} ({exc}); start it with `ray start --head` "
                         "and pass its address (or --ray with no address for a local instance)") from None
    return True


def engine_wants_gpu(engine: str, config: Any) -> bool:
    """SAM2 on an automatic or CUDA device uses a GPU where the cluster has one; the baseline never does."""
    return engine == "sam2" and str(config.device).startswith(("auto", "cuda"))


def run_cases(
    address: str | None,
    cases: list[Any],
    factory_args: tuple,
    case_kwargs: dict[str, Any],
    folder: Path,
    on_done: Callable[[Any, dict[str, Any], str], None],
    *,
    worker: type = CaseWorker,
    task_id: Callable[[Any], str] = lambda case: case.case_id,
    on_dead: Callable[[Any, str], dict[str, Any]] | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float | None = None,
    wants_gpu: bool = False,
) -> dict[str, Any]:
    """Run ``cases`` on Ray actors. As each finishes, the driver writes the files its worker made into
    ``folder`` (atomically) and calls ``on_done(case, record, worker)``. Returns what the run did: workers,
    cases per worker, retries, seconds to the first case."""
    from ..io.atomic import atomic_output

    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, WorkerCrashedError

    started = connect(address)
    t0 = time.monotonic()
    try:
        resources = ray.cluster_resources()
        if gpus_per_worker is None:  # one actor per GPU where the cluster has GPUs and the engine uses one
            gpus_per_worker = 1.0 if wants_gpu and resources.get("GPU", 0) > 0 else 0.0
        if workers is None:
            if gpus_per_worker:
                workers = max(1, int(resources.get("GPU", 0) // gpus_per_worker))
            else:
                workers = max(1, int(resources.get("CPU", 1) // max(cpus_per_worker, 1e-6)))
        workers = max(1, min(workers, len(cases)))
        actor_cls = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(worker)
        queue: deque[tuple[Any, int]] = deque((c, 1) for c in cases)
        idle = [actor_cls.remote(*factory_args) for _ in range(workers)]
        pending: dict[Any, tuple[Any, Any, int]] = {}
        per_worker: Counter[str] = Counter()
        retried, first = [], None
        while queue or pending:
            while queue and idle:
                actor = idle.pop()
                case, attempt = queue.popleft()
                pending[actor.run.remote(case, case_kwargs)] = (case, actor, attempt)
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            case, actor, attempt = pending.pop(ref)
            try:
                record, files, name = ray.get(ref)
            except (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError) as exc:
                ray.kill(actor, no_restart=True)
                idle.append(actor_cls.remote(*factory_args))  # a fresh worker takes the dead one's place
                if attempt < MAX_ATTEMPTS:
                    retried.append(task_id(case))
                    queue.appendleft((case, attempt + 1))
                    continue
                message = f"WorkerDied: the worker running this died twice ({type(exc).__name__})"
                record = on_dead(case, message) if on_dead is not None else {
                    "case": case.case_id, "image": str(case.image), "label": str(case.label), "status": "error", "rows": [], "error": message}
                files, name = {}, "none"
            else:
                idle.append(actor)
            if first is None:
                first = round(time.monotonic() - t0, 3)
            per_worker[name] += 1
            for rel, data in files.items():
                with atomic_output(folder / rel) as tmp:
                    tmp.write_bytes(data)
            on_done(case, record, name)
        return {"executor": "ray", "address": address or "local", "workers": workers, "cases_per_worker": dict(per_worker),
                "retried_cases": retried, "seconds_to_first_case": first, "seconds": round(time.monotonic() - t0, 3)}
    finally:
        if started:
            ray.shutdown()
