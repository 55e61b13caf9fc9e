"""What `evaluate` and `batch` share about their output folder: one writer at a time (a lock file),
the settings a folder was started with (a rerun with others is refused), and shards of the inputs."""

from __future__ import annotations

import json
import os
import sys
import tempfile
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


def check_folder(folder: Path, what: str, subfolders: tuple[str, ...] = (), files: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output folder that cannot hold the run: a file at its place or above it,
    a file where one of its ``subfolders`` goes, a folder where one of its ``files`` goes."""
    for place in (folder, *folder.parents):
        if place.exists() and not place.is_dir():
            where = "" if place == folder else f" ({place} is in its path)"
            raise InputError(f"the {what} {folder} cannot be made: {place} is a file, not a folder{where}; give another -o folder")
    for name in subfolders:
        if (folder / name).exists() and not (folder / name).is_dir():
            raise InputError(f"{folder / name} is a file where the {what} keeps its {name}/ folder; move it away or give a new -o folder")
    for name in files:
        if (folder / name).is_dir():
            raise InputError(f"{folder / name} is a folder where the {what} writes its {name}; move it away or give a new -o folder")


def make_writable_folder(folder: Path, what: str) -> None:
    """Create ``folder`` and prove it takes a file (a read-only disk or a folder without write permission
    fails here, with the system's reason, instead of after the work)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sam2volume-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot write to the {what} {folder} ({exc.strerror or exc}); give a folder you can write to as -o") from None


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
    except (OSError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:300]
        raise InputError(f"{settings_file} is corrupt ({reason}); restore it, or start the {kind} in a new -o folder") from None
    old_settings = old.get("settings", {})
    new_settings = json.loads(json.dumps(settings, default=str))  # as it reads back from the file
    diff = [f"{k}: {old_settings.get(k)!r} -> {new_settings.get(k)!r}" for k in sorted(set(old_settings) | set(new_settings))
            if old_settings.get(k) != new_settings.get(k)]
    if diff:
        raise InputError(f"{settings_file.parent} holds a {kind} with other settings ({'; '.join(diff)}); "
                         "rerun with the same settings or use a new -o folder")
