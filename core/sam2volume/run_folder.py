"""What `evaluate` and `batch` share about their output folder: one writer at a time (a lock file),
the settings a folder was started with (a rerun with others is refused), and shards of the inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence, TypeVar

from .errors import InputError, check_count
from .locks import FileLock

LOCK_NAME = ".sam2volume.lock"
SHARD_WAIT_S = 7 * 24 * 3600.0
T = TypeVar("T")


class ResumeWarning(UserWarning):
    """A resumed evaluate or batch found a record of earlier work it cannot trust and redoes that work."""


def take_part(items: Sequence[T], num_parts: int, part_id: int) -> list[T]:
    """Shard ``part_id`` of ``num_parts`` as nnU-Net cuts them: every num_parts-th item from part_id."""
    check_count(num_parts, "num_parts")
    check_count(part_id, "part_id", minimum=0)
    if part_id >= num_parts:
        raise InputError(f"part_id {part_id} must be below num_parts {num_parts} (parts are numbered 0..{num_parts - 1})")
    return list(items)[part_id::num_parts]


def folder_lock(folder: Path, what: str, shard: bool) -> FileLock:
    """The folder's lock: a plain run refuses at once when another process holds it; a shard waits for it
    (saying whose it is), so shards of one run go into one folder one after another."""
    return FileLock(folder / LOCK_NAME, what, wait=SHARD_WAIT_S if shard else 0.0,
                    on_wait=lambda message: print(message, file=sys.stderr, flush=True))


def check_settings(settings_file: Path, settings: dict[str, Any], kind: str) -> None:
    """Refuse a rerun whose settings differ from those ``settings_file`` recorded, naming each difference;
    a record that cannot be read stops with its name (it never turns the check off)."""
    if not settings_file.is_file():
        return
    try:
        old = json.loads(settings_file.read_text(encoding="utf-8"))
        if not isinstance(old, dict) or not isinstance(old.get("settings", {}), dict):
            raise ValueError("not a settings object")
    except (OSError, ValueError) as exc:
        raise InputError(f"{settings_file} is corrupt ({exc}); restore it, or start the {kind} in a new -o folder") from None
    old_settings = old.get("settings", {})
    new_settings = json.loads(json.dumps(settings, default=str))  # as it reads back from the file
    diff = [f"{k}: {old_settings.get(k)!r} -> {new_settings.get(k)!r}" for k in sorted(set(old_settings) | set(new_settings))
            if old_settings.get(k) != new_settings.get(k)]
    if diff:
        raise InputError(f"{settings_file.parent} holds a {kind} with other settings ({'; '.join(diff)}); "
                         "rerun with the same settings or use a new -o folder")
