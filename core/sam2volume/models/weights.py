"""Checkpoint download and cache: checksums, resume, progress, and a clear offline error.

The cache folder is ``$SAM2VOLUME_CACHE`` (default ``~/.cache/sam2volume``); set
``SAM2VOLUME_OFFLINE=1`` to never touch the network. No torch import here.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from ..errors import ModelError, WeightsNotAvailableError
from ..locks import FileLock
from .registry import ModelSpec

CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def cache_dir() -> Path:
    return Path(os.environ.get("SAM2VOLUME_CACHE") or Path.home() / ".cache" / "sam2volume").expanduser()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class WeightsManager:
    """Finds, downloads (with resume) and verifies checkpoints in one cache folder."""

    def __init__(self, root: str | os.PathLike[str] | None = None, offline: bool | None = None, timeout: float = 30.0):
        self.root = Path(root) if root is not None else cache_dir()
        self.offline = offline if offline is not None else os.environ.get("SAM2VOLUME_OFFLINE", "") not in ("", "0")
        self.timeout = timeout

    # ------------------------------------------------------------------ paths
    def path_for(self, spec: ModelSpec) -> Path:
        return self.root / spec.filename

    def _record_path(self, spec: ModelSpec) -> Path:
        return self.root / (spec.filename + ".sha256.json")

    def status(self, spec: ModelSpec) -> str:
        if self.path_for(spec).exists():
            return "downloaded"
        if self.path_for(spec).with_suffix(self.path_for(spec).suffix + ".part").exists():
            return "partial"
        return "missing"

    def partial_bytes(self, spec: ModelSpec) -> int:
        """Bytes of the partial download (``.part``) kept in the cache, which the next download resumes from when
        the server proves it is the same file (0: none)."""
        try:
            return self.path_for(spec).with_name(spec.filename + ".part").stat().st_size
        except OSError:
            return 0

    def expected_sha256(self, spec: ModelSpec) -> str | None:
        if spec.sha256:
            return spec.sha256.lower()
        record = self.record(spec)
        return None if record is None else record["sha256"]

    def record(self, spec: ModelSpec) -> dict | None:
        """What was recorded when the checkpoint was installed: its SHA-256 and what it was checked against.

        A record that cannot be read fails closed (an error naming the file), never turns checking off."""
        rec = self._record_path(spec)
        if not rec.exists():
            return None
        try:
            data = json.loads(rec.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not _HEX64.match(str(data.get("sha256", "")).lower()):
                raise ValueError("no 64-digit sha256")
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"the digest record {rec} is corrupt ({exc}); delete it and {self.path_for(spec)} and download again "
                f"(sam2volume models download {spec.name})"
            ) from None
        data["sha256"] = str(data["sha256"]).lower()
        return data

    # ---------------------------------------------------------------- ensure
    def ensure(self, spec: ModelSpec, progress: bool = False,
               on_progress: Callable[[int, int | None], None] | None = None) -> Path:
        """Path of a verified checkpoint, downloading it first if needed (``on_progress(bytes so far,
        total or None)`` after each chunk of that download)."""
        path = self.path_for(spec)
        if path.exists():
            self.verify(spec, path)
            return path
        if spec.url is None:
            raise WeightsNotAvailableError(f"custom checkpoint {spec.filename} not found")
        if self.offline:
            raise WeightsNotAvailableError(self._offline_message(spec, "offline mode (SAM2VOLUME_OFFLINE) is on"))
        return self.download(spec, progress=progress, on_progress=on_progress)

    def verify(self, spec: ModelSpec, path: Path) -> None:
        expected = self.expected_sha256(spec)
        if expected is None:
            return
        actual = sha256_of(path)
        if actual != expected:
            raise ModelError(
                f"checksum mismatch for {path}: SHA-256 {actual}, expected {expected}; the file is corrupt "
                f"or not {spec.name}: delete it and download again (sam2volume models download {spec.name})"
            )

    def _offline_message(self, spec: ModelSpec, reason: str) -> str:
        return (
            f"checkpoint {spec.name} is not in the cache and cannot be downloaded ({reason}). "
            f"Download {spec.url} on a machine with internet access and put it at {self.path_for(spec)} "
            "(or point SAM2VOLUME_CACHE at the folder that holds it)"
        )

    # -------------------------------------------------------------- download
    def download(
        self,
        spec: ModelSpec,
        progress: bool = False,
        on_progress: Callable[[int, int | None], None] | None = None,
        on_wait: Callable[[str], None] | None = None,
        lock_wait: float = 3600.0,
    ) -> Path:
        """Download ``spec.url`` into the cache, resuming a partial ``.part`` file only when the server
        proves it is the same file (If-Range with the ETag or Last-Modified it gave before).

        A file is installed only when its size (Content-Length / Content-Range, or a completed chunked
        transfer) or its digest (the registry's or the server's) is confirmed. One process downloads a
        checkpoint at a time (a lock beside it); a second one waits for it.
        """
        if spec.url is None:
            raise ModelError(f"{spec.name} has no download address")
        self.check_writable()
        path = self.path_for(spec)
        lock = FileLock(path.with_name(path.name + ".lock"), f"the download of {path.name}", wait=lock_wait, on_wait=on_wait)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError as exc:
            raise self._not_writable(exc) from None
        try:
            if path.exists() and self._record_path(spec).exists():  # another process finished it meanwhile
                self.verify(spec, path)
                return path
            return self._download_locked(spec, path, progress, on_progress)
        finally:
            lock.release()

    def check_writable(self) -> None:
        """Refuse, before any download, a cache folder that cannot be made or written (a file on its
        path, no write permission, a read-only file system)."""
        existing = self.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise WeightsNotAvailableError(
                f"the model cache folder {self.root} cannot be made: {existing} is a file; "
                "point SAM2VOLUME_CACHE at a writable folder"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise WeightsNotAvailableError(
                f"the model cache folder {self.root} is not writable ({existing} is read-only for this user); "
                "point SAM2VOLUME_CACHE at a writable folder, or download the checkpoint elsewhere and put it there"
            )

    def _not_writable(self, exc: OSError) -> WeightsNotAvailableError:
        return WeightsNotAvailableError(
            f"the model cache folder {self.root} cannot be written ({exc.strerror or exc}"
            f"{': ' + str(exc.filename) if exc.filename else ''}); "
            "point SAM2VOLUME_CACHE at a writable folder with free space"
        )

    def _download_locked(self, spec: ModelSpec, path: Path, progress: bool, on_progress) -> Path:
        part = path.with_name(path.name + ".part")
        meta_file = path.with_name(path.name + ".part.json")
        meta = _read_json(meta_file) if part.exists() else None
        validator = _validator(meta)
        if part.exists() and (not validator or (meta or {}).get("url") != spec.url):
            part.unlink()  # nothing proves the server still has the same file: start again
            meta = None
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(spec.url, headers={"User-Agent": "sam2volume"})
        if have:
            request.add_header("Range", f"bytes={have}-")
            request.add_header("If-Range", validator)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # the part does not fit the file on the server: never install it
                part.unlink()
                meta_file.unlink(missing_ok=True)
                return self._download_locked(spec, path, progress, on_progress)
            raise WeightsNotAvailableError(self._offline_message(spec, f"HTTP {exc.code} {exc.reason}")) from None
        except (urllib.error.URLError, OSError) as exc:
            raise WeightsNotAvailableError(self._offline_message(spec, f"network error: {getattr(exc, 'reason', exc)}")) from None

        done = have
        with response:
            headers = response.headers
            server_sha = _server_sha256(headers)
            if have and response.status != 206:
                have = done = 0  # the file changed (If-Range failed) or ranges are not served: start again
            elif response.status == 206:
                mismatch = _partial_mismatch(headers, have, meta)
                if mismatch and have:  # never join two versions of a file: drop the part, fetch it whole
                    part.unlink()
                    meta_file.unlink(missing_ok=True)
                    response.close()
                    return self._download_locked(spec, path, progress, on_progress)
                if mismatch:
                    raise WeightsNotAvailableError(self._offline_message(spec, f"the server answered a whole-file request with part of it ({mismatch})"))
            total = _total_length(headers, response.status, have)
            try:
                _write_json(meta_file, {"url": spec.url, "etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified"),
                                        "length": total, "sha256": server_sha})
                fh = open(part, "ab" if have else "wb")
            except OSError as exc:
                raise self._not_writable(exc) from None
            chunked = bool(getattr(response, "chunked", False))
            bar = _progress_bar(total, have, spec.filename) if progress else None
            try:
                with fh:
                    while True:
                        block = response.read(CHUNK)
                        if not block:
                            break
                        try:
                            fh.write(block)
                        except OSError as exc:  # a full disk: the part is kept, to resume once there is room
                            raise self._not_writable(exc) from None
                        done += len(block)
                        if bar is not None:
                            bar.update(len(block))
                        if on_progress is not None:
                            on_progress(done, total)
            except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
                raise WeightsNotAvailableError(
                    self._offline_message(spec, f"download broke off after {done} bytes: {exc}; run again to resume")
                ) from None
            finally:
                if bar is not None:
                    bar.close()
        size = part.stat().st_size
        if total is not None and size != total:
            if size > total:
                part.unlink()
                meta_file.unlink(missing_ok=True)
            raise WeightsNotAvailableError(
                self._offline_message(spec, f"download ended at {size} of {total} bytes; run again to resume")
            )
        expected = (spec.sha256 or server_sha or (meta or {}).get("sha256") or "").lower() or None
        if expected is None and total is None and not chunked:
            raise WeightsNotAvailableError(self._offline_message(
                spec, f"the server gave neither the file's length nor a digest, so the {size} bytes received cannot be "
                "confirmed complete; nothing was installed"))
        actual = sha256_of(part)
        if expected is not None and actual != expected:
            part.unlink()
            meta_file.unlink(missing_ok=True)
            raise ModelError(
                f"checksum mismatch downloading {spec.url}: SHA-256 {actual}, expected {expected}; "
                "the partial file was deleted, try again"
            )
        record = {"sha256": actual, "url": spec.url, "verified_against": expected, "bytes": size,
                  "note": None if expected else "no digest was published for this file: only its length was checked"}
        try:
            _write_json(self._record_path(spec), record)
            os.replace(part, path)
        except OSError as exc:
            raise self._not_writable(exc) from None
        meta_file.unlink(missing_ok=True)
        return path


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    from ..io.atomic import json_text, write_text_atomic

    write_text_atomic(path, json_text(data, indent=None))


def _validator(meta: dict | None) -> str | None:
    """What If-Range sends for a stored part: its strong ETag, else its Last-Modified (If-Range takes no weak ETag)."""
    meta = meta or {}
    etag = meta.get("etag")
    if isinstance(etag, str) and etag and not etag.startswith("W/"):
        return etag
    modified = meta.get("last_modified")
    return modified if isinstance(modified, str) and modified else None


def _partial_mismatch(headers, have: int, meta: dict | None) -> str | None:
    """Why a 206 does not continue the stored part (None when it does): its Content-Range must start at
    ``have`` and its ETag (or, without one, its Last-Modified) must be the one the part was started with."""
    m = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)\s*$", headers.get("Content-Range") or "")
    if not m:
        return f"Content-Range {headers.get('Content-Range')!r} is not 'bytes {have}-END/TOTAL'"
    if int(m.group(1)) != have:
        return f"it starts at byte {m.group(1)}, not {have}"
    if not have:
        return None
    meta = meta or {}
    key, header = ("etag", "ETag") if _validator(meta) == meta.get("etag") else ("last_modified", "Last-Modified")
    if headers.get(header) != meta.get(key):
        return f"its {header} {headers.get(header)!r} is not the part's {meta.get(key)!r}: the file changed"
    return None


def _total_length(headers, status: int, have: int) -> int | None:
    """The whole file's length: Content-Range's total on a 206, else Content-Length on a 200."""
    if status == 206:
        m = re.match(r"bytes\s+\d+-\d+/(\d+)", headers.get("Content-Range") or "")
        if m:
            return int(m.group(1))
        length = headers.get("Content-Length")
        return have + int(length) if length is not None and length.isdigit() else None
    length = headers.get("Content-Length")
    return int(length) if length is not None and length.isdigit() else None


def _server_sha256(headers) -> str | None:
    for key in ("X-Linked-Etag", "ETag"):
        value = (headers.get(key) or "").strip().strip('"').removeprefix("W/").strip('"').lower()
        if _HEX64.match(value):
            return value
    return None


def _progress_bar(total: int | None, initial: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {name}")
