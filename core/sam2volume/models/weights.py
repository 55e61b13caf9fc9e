"""Checkpoint download and cache: checksums, resume, progress, and a clear offline error.

The cache folder is ``$SAM2VOLUME_CACHE`` (default ``~/.cache/sam2volume``); set
``SAM2VOLUME_OFFLINE=1`` to never touch the network. No torch import here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from ..errors import ModelError, WeightsNotAvailableError
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

    def expected_sha256(self, spec: ModelSpec) -> str | None:
        if spec.sha256:
            return spec.sha256.lower()
        rec = self._record_path(spec)
        if rec.exists():
            try:
                return str(json.loads(rec.read_text())["sha256"]).lower()
            except (ValueError, KeyError):
                return None
        return None

    # ---------------------------------------------------------------- ensure
    def ensure(self, spec: ModelSpec, progress: bool = False) -> Path:
        """Path of a verified checkpoint, downloading it first if needed."""
        path = self.path_for(spec)
        if path.exists():
            self.verify(spec, path)
            return path
        if spec.url is None:
            raise WeightsNotAvailableError(f"custom checkpoint {spec.filename} not found")
        if self.offline:
            raise WeightsNotAvailableError(self._offline_message(spec, "offline mode (SAM2VOLUME_OFFLINE) is on"))
        return self.download(spec, progress=progress)

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
    ) -> Path:
        """Download ``spec.url`` into the cache, resuming a partial ``.part`` file."""
        if spec.url is None:
            raise ModelError(f"{spec.name} has no download address")
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path_for(spec)
        part = path.with_suffix(path.suffix + ".part")
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(spec.url, headers={"User-Agent": "sam2volume"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # the part file is already complete
                response = None
            else:
                raise WeightsNotAvailableError(self._offline_message(spec, f"HTTP {exc.code} {exc.reason}")) from None
        except (urllib.error.URLError, OSError) as exc:
            raise WeightsNotAvailableError(self._offline_message(spec, f"network error: {getattr(exc, 'reason', exc)}")) from None

        server_sha = None
        if response is not None:
            with response:
                server_sha = _server_sha256(response.headers)
                if have and response.status != 206:
                    have = 0  # server ignored the range: start again
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                bar = _progress_bar(total, have, spec.filename) if progress else None
                try:
                    with open(part, "ab" if have else "wb") as fh:
                        done = have
                        while True:
                            block = response.read(CHUNK)
                            if not block:
                                break
                            fh.write(block)
                            done += len(block)
                            if bar is not None:
                                bar.update(len(block))
                            if on_progress is not None:
                                on_progress(done, total)
                except (OSError, urllib.error.URLError) as exc:
                    raise WeightsNotAvailableError(
                        self._offline_message(spec, f"download broke off after {done} bytes: {exc}; run again to resume")
                    ) from None
                finally:
                    if bar is not None:
                        bar.close()
                if total is not None and part.stat().st_size < total:
                    raise WeightsNotAvailableError(
                        self._offline_message(spec, f"download broke off at {part.stat().st_size} of {total} bytes; run again to resume")
                    )
        expected = (spec.sha256 or server_sha or "").lower() or None
        actual = sha256_of(part)
        if expected is not None and actual != expected:
            part.unlink()
            raise ModelError(
                f"checksum mismatch downloading {spec.url}: SHA-256 {actual}, expected {expected}; "
                "the partial file was deleted, try again"
            )
        os.replace(part, path)
        self._record_path(spec).write_text(json.dumps({"sha256": actual, "url": spec.url, "verified_against": expected}))
        return path


def _server_sha256(headers) -> str | None:
    for key in ("X-Linked-Etag", "ETag"):
        value = (headers.get(key) or "").strip().strip('"').removeprefix("W/").strip('"').lower()
        if _HEX64.match(value):
            return value
    return None


def _progress_bar(total: int | None, initial: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {name}")
