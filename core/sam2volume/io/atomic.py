"""Write files so that a crash or an error never leaves a partial output behind."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from ..errors import InputError, OutputError


def split_suffix(path: Path) -> tuple[str, str]:
    """Split ``a/b.seg.nrrd`` into (``b``, ``.seg.nrrd``); double suffixes we know are kept."""
    name = path.name
    for suffix in (".seg.nrrd", ".nii.gz", ".seg.dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return path.stem, path.suffix


def write_failed(path: Path, exc: OSError) -> OutputError:
    """One sentence naming the output and the operating system's reason (a full disk, a size limit, ...)."""
    cause: BaseException | None = exc
    while cause is not None and not (isinstance(cause, OSError) and cause.errno is not None):
        cause = cause.__cause__ or cause.__context__  # a writer may re-raise the OS's error in its own words
    if cause is not None:
        exc = cause
    reason = exc.strerror or " ".join(str(exc).split())
    code = f" ({errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
    return OutputError(f"cannot write {path}: {reason}{code}; nothing was written: free space on that disk or choose another output folder")


def os_reason_for_short_file(tmp: Path) -> OSError | None:
    """A writer that does not report a failed write (ITK's NIfTI writer) left ``tmp`` short: writing more to it
    shows why (the same full disk or file size limit); None if the system accepts more bytes now."""
    try:
        with open(tmp, "ab") as fh:
            fh.write(b"\0" * (1 << 20))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return exc
    return None


def _fsync(tmp: Path) -> None:
    """Flush a written file to the disk: a full disk or a quota may only show here."""
    if tmp.is_file():
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` with the same suffix; rename it on success.

    ``verify(tmp)``, if given, checks the written file before it is flushed to disk and renamed. On any
    exception the temporary file (or folder) is removed and ``path`` is untouched; an :class:`OSError` (a full
    disk, a file size limit, a read-only folder) becomes an :class:`OutputError` naming ``path`` and the reason.
    """
    path = Path(path)
    try:
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        stem, suffix = split_suffix(path)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".partial{suffix}", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_failed(path, exc) from None
    tmp = Path(tmp_name)
    tmp.unlink()  # writers create it themselves (some refuse to overwrite)
    try:
        yield tmp
        if verify is not None:
            verify(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        if isinstance(exc, OSError):
            raise write_failed(path, exc) from None
        raise


def remove_partials(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Delete temporary files a killed process left behind (``.NAME.XXXX.partial.EXT``, see
    :func:`atomic_output`); returns what was removed."""
    folder = Path(folder)
    removed = []
    for p in (folder.rglob if recursive else folder.glob)(".*.partial*"):
        if p.is_file():
            p.unlink()
            removed.append(p)
    return removed


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: str | os.PathLike[str], inputs: "list[str | os.PathLike[str]]" = (), what: str = "output") -> Path:
    """Refuse, before any work, an output that is one of the inputs (after resolving links), that is a
    folder, or whose folder cannot be written. Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name (e.g. {path / 'result.nii.gz'})")
    for item in inputs:
        src = Path(item)
        files = [f for f in src.iterdir() if f.is_file()] if src.is_dir() else [src]
        for f in files:
            if _same_file(path, f) or path.resolve() == f.resolve():
                raise InputError(f"{what} {path} is the input {f}; writing it would destroy the input: choose another output name or folder")
    folder = path.parent if str(path.parent) else Path(".")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{what} folder {folder} cannot be made: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{what} folder {existing} is not writable; choose another output folder")
    return path


NULL_NOTE = "null stands for a number that is undefined here (NaN), e.g. a surface distance when a mask is empty"


def _finite_or_none(value: object) -> object:
    """JSON has no NaN or infinity: those become null; numpy scalars and arrays become plain values."""
    import math

    if isinstance(value, dict):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar or array
        return _finite_or_none(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(data: object, *, indent: int | None = 2, default=str) -> str:
    """Valid JSON (never NaN/Infinity: null instead), for every file and answer we write."""
    import json

    return json.dumps(_finite_or_none(data), indent=indent, default=default, allow_nan=False)


def write_json_atomic(path: str | os.PathLike[str], data: object, *, indent: int | None = 2) -> None:
    write_text_atomic(path, json_text(data, indent=indent))
