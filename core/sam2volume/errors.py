"""Errors raised by sam2volume.

Every error says which value is wrong and how to fix it; callers can catch
:class:`Sam2VolumeError` to handle any of them.
"""


class Sam2VolumeError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(Sam2VolumeError, ValueError):
    """A file, argument or prompt is not usable; the message names it and the fix."""


class GeometryMismatchError(InputError):
    """Two volumes that must share a voxel grid do not."""


class UnevenSpacingError(InputError):
    """A DICOM series whose slices are not evenly spaced."""


class OutputError(Sam2VolumeError):
    """An output file cannot be written completely (a full disk, a file size limit, a read-only folder);
    the message names the file and the operating system's reason. Nothing is left behind."""


class ModelError(Sam2VolumeError):
    """A model, config or checkpoint cannot be used."""


class WeightsNotAvailableError(ModelError):
    """A checkpoint is not on disk and cannot be downloaded."""


class CancelledError(Sam2VolumeError):
    """Long work stopped because the caller asked it to."""


def check_count(value: object, name: str, *, minimum: int = 1, allow_none: bool = False) -> None:
    """Refuse, before any work, a count that is not an integer >= ``minimum`` (None allowed if said)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or None" if allow_none else ""
        raise InputError(f"{name} must be an integer >= {minimum}{extra}, got {value!r}")
