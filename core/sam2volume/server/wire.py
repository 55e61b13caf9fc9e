"""The wire format shared by the server and the client: numpy and the standard library only, no pickle.

* Arrays (a volume upload, a result labelmap) travel as one JSON header line, ``b"\\n"``, then the
  zlib-compressed C-order bytes of a little-endian array of a whitelisted dtype. A volume's id is
  the SHA-256 of its canonical header line, ``b"\\n"`` and its raw bytes: geometry is part of it.
* 2D masks travel inside JSON as ``{"shape": [rows, cols], "bits": base64(np.packbits(mask))}``.
* NaN scores travel as JSON ``null``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import zlib
from typing import Any, Iterator

import numpy as np

from ..errors import InputError

#: dtypes a volume or labelmap may have on the wire (never object, never structured)
DTYPES = ("|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f4", "<f8")
MAX_HEADER_BYTES = 1 << 20
CHUNK = 1 << 20


def wire_dtype(dtype: Any) -> np.dtype:
    """The little-endian whitelisted dtype for ``dtype``, or an InputError naming it."""
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise InputError(f"array dtype {dtype!r} is not a numeric dtype; use one of {', '.join(DTYPES)}") from None
    if dt.kind in "biuf" and dt.itemsize > 1:
        dt = dt.newbyteorder("<")
    if dt.str not in DTYPES:
        raise InputError(f"array dtype {dt.str!r} cannot be sent; use one of {', '.join(DTYPES)}")
    return dt


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


# ------------------------------------------------------------------------------------- volumes
def volume_header(volume: Any) -> dict[str, Any]:
    """The geometry header of a :class:`sam2volume.Volume` (no file paths, no patient data)."""
    dt = wire_dtype(volume.array.dtype)
    return {
        "shape": [int(v) for v in volume.array.shape],
        "dtype": dt.str,
        "spacing": [float(v) for v in volume.spacing],
        "origin": [float(v) for v in volume.origin],
        "direction": [float(v) for v in np.asarray(volume.direction).ravel()],
        "modality": str(volume.meta.get("modality", "unknown")),
    }


def raw_bytes(array: np.ndarray) -> memoryview:
    arr = np.ascontiguousarray(array, dtype=wire_dtype(array.dtype))
    return memoryview(arr).cast("B")


def volume_id(volume: Any) -> str:
    """The content id of a volume: SHA-256 of its canonical header and raw voxel bytes."""
    h = hashlib.sha256(canonical_json(volume_header(volume)) + b"\n")
    h.update(raw_bytes(volume.array))
    return h.hexdigest()


def encode_array(header: dict[str, Any], array: np.ndarray, level: int = 1) -> Iterator[bytes]:
    """Header line + zlib stream of ``array``'s bytes, in chunks (for a streamed request or response)."""
    yield canonical_json(header) + b"\n"
    raw = raw_bytes(array)
    comp = zlib.compressobj(level)
    for start in range(0, len(raw), 8 * CHUNK):
        out = comp.compress(raw[start : start + 8 * CHUNK])
        if out:
            yield out
    yield comp.flush()


class ArrayDecoder:
    """Incremental decoder of :func:`encode_array`'s stream with limits checked before inflating.

    ``check(header)`` runs once the header line is in (it raises to refuse the array, e.g. a limit);
    the inflated bytes go into one preallocated buffer of exactly the announced size, so a
    compressed bomb cannot grow memory past it. ``grow(n)`` runs before each ``n`` inflated bytes
    are stored (it raises to refuse them: the server reserves memory as the data arrives).
    """

    def __init__(self, check: Any = None, grow: Any = None):
        self.check = check
        self.grow = grow
        self.header: dict[str, Any] | None = None
        self._head = bytearray()
        self._inflate = zlib.decompressobj()
        self._buf: np.ndarray | None = None
        self._pos = 0
        self.hasher = hashlib.sha256()

    def feed(self, chunk: bytes) -> None:
        if self.header is None:
            self._head += chunk
            nl = self._head.find(b"\n")
            if nl < 0:
                if len(self._head) > MAX_HEADER_BYTES:
                    raise InputError("array header line is missing or longer than 1 MiB")
                return
            line, rest = bytes(self._head[:nl]), bytes(self._head[nl + 1 :])
            self._head = bytearray()
            self._start(line)
            chunk = rest
        if not chunk:
            return
        assert self._buf is not None
        try:
            data = self._inflate.decompress(chunk, self._buf.nbytes - self._pos + 1)
        except zlib.error as exc:
            raise InputError(f"array data is not a valid zlib stream ({exc})") from None
        if self._inflate.unconsumed_tail or self._pos + len(data) > self._buf.nbytes:
            raise InputError(f"array data holds more than the {self._buf.nbytes} bytes its header announces")
        if self.grow is not None and data:
            self.grow(len(data))
        self._buf[self._pos : self._pos + len(data)] = np.frombuffer(data, np.uint8)
        self.hasher.update(data)
        self._pos += len(data)

    def _start(self, line: bytes) -> None:
        try:
            header = json.loads(line, parse_constant=_refuse_constant)
            canonical_json(header)  # a number too large for a float (1e999) is infinite: refused here
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InputError(f"array header is not valid JSON of finite numbers ({exc})") from None
        if not isinstance(header, dict):
            raise InputError("array header must be a JSON object")
        shape = header.get("shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
            raise InputError(f"array shape {shape!r} must be three positive integers")
        if header.get("dtype") is None:  # numpy would read a missing dtype as float64
            raise InputError(f"array header has no dtype; give one of {', '.join(DTYPES)}")
        dt = wire_dtype(header["dtype"])
        header["dtype"] = dt.str
        if self.check is not None:
            self.check(header)
        self.header = header
        self.hasher.update(canonical_json(header) + b"\n")
        self._buf = np.empty(math.prod(shape) * dt.itemsize, np.uint8)

    def finish(self) -> tuple[dict[str, Any], np.ndarray]:
        if self.header is None or self._buf is None:
            raise InputError("array upload ended before its header line")
        if not self._inflate.eof or self._pos != self._buf.nbytes:
            raise InputError(f"array data ended after {self._pos} of {self._buf.nbytes} bytes (truncated upload)")
        arr = self._buf.view(np.dtype(self.header["dtype"])).reshape(self.header["shape"])
        return self.header, arr


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def decode_array(data: bytes) -> tuple[dict[str, Any], np.ndarray]:
    dec = ArrayDecoder()
    for start in range(0, len(data), CHUNK):
        dec.feed(data[start : start + CHUNK])
    return dec.finish()


def volume_from(header: dict[str, Any], array: np.ndarray) -> Any:
    """A :class:`Volume` from an uploaded header and array (geometry checked by Volume itself)."""
    from ..volume import Volume

    try:
        spacing = np.asarray(header.get("spacing"), dtype=np.float64).reshape(3)
        origin = np.asarray(header.get("origin"), dtype=np.float64).reshape(3)
        direction = np.asarray(header.get("direction"), dtype=np.float64).reshape(3, 3)
    except (TypeError, ValueError):
        raise InputError("volume header needs spacing (3 numbers), origin (3) and direction (9)") from None
    if not (np.all(np.isfinite(origin)) and np.all(np.isfinite(direction))):
        raise InputError("volume origin and direction must be finite numbers")
    modality = header.get("modality", "unknown")
    meta = {"modality": modality if isinstance(modality, str) else "unknown", "source": "uploaded volume"}
    return Volume(array, spacing, origin, direction, meta)


# --------------------------------------------------------------------------------------- masks
def pack_mask(mask: np.ndarray) -> dict[str, Any]:
    m = np.asarray(mask, dtype=bool)
    return {"shape": [int(v) for v in m.shape], "bits": base64.b64encode(np.packbits(m, axis=None).tobytes()).decode("ascii")}


def unpack_mask(obj: Any, what: str = "mask") -> np.ndarray:
    if not isinstance(obj, dict) or not isinstance(obj.get("bits"), str):
        raise InputError(f"{what} must be {{'shape': [rows, cols], 'bits': base64 of np.packbits}}")
    shape = obj.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16 for v in shape)):
        raise InputError(f"{what} shape {shape!r} must be two positive integers (rows, cols)")
    try:
        raw = base64.b64decode(obj["bits"], validate=True)
    except (ValueError, TypeError):
        raise InputError(f"{what} bits are not valid base64") from None
    n = shape[0] * shape[1]
    if len(raw) != (n + 7) // 8:
        raise InputError(f"{what} bits hold {len(raw)} bytes; a {shape[0]}x{shape[1]} mask needs {(n + 7) // 8}")
    return np.unpackbits(np.frombuffer(raw, np.uint8), count=n).reshape(shape).astype(bool)


def scores_to_json(scores: dict[int, np.ndarray]) -> dict[str, list[float | None]]:
    return {str(k): [None if not np.isfinite(v) else float(v) for v in arr] for k, arr in scores.items()}


def scores_from_json(obj: dict[str, list[float | None]]) -> dict[int, np.ndarray]:
    return {int(k): np.array([np.nan if v is None else v for v in vals], dtype=np.float64) for k, vals in obj.items()}
