"""The server's settings: what it serves, on which device, and the limit on every size."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..errors import InputError

TOKEN_HOWTO = (
    "make one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\" > sam2volume.token && "
    "chmod 600 sam2volume.token, then start with --token-file sam2volume.token and give clients the same token "
    "(--token-file or SAM2VOLUME_TOKEN)"
)


@dataclass
class ServerConfig:
    token: str | None = None
    device: str = "auto"
    models: list[str] = field(default_factory=list)  #: registry names clients may ask for (first: default)
    checkpoint: str | None = None  #: a custom model, named "custom", from the server's own files
    config_file: str | None = None
    custom_image_size: int = 1024  #: the custom model's input size unless a client sets image_size (MedSAM2: 512)
    allow_random_weights: bool = False  #: tests and benchmarks only
    preload: bool = False  #: build the default model at start-up
    compile: bool = False  #: torch.compile the shared models (slow first calls, then faster)
    max_sessions: int = 16
    max_upload_bytes: int = 1 << 30  #: compressed bytes of one volume upload
    max_voxels: int = 512 * 512 * 2048  #: voxels of one volume
    max_stored_bytes: int = 8 << 30  #: uploaded volumes held at once (decompressed)
    max_body_bytes: int = 16 << 20  #: a JSON request
    idle_timeout_s: float = 900.0  #: a session nobody touched for this long is closed
    volume_ttl_s: float = 300.0  #: an uploaded volume no session uses is kept this long (re-opening skips the upload)
    reaper_interval_s: float = 5.0
    max_wait_s: float = 10.0  #: longest long-poll of job events
    max_long_polls: int = 64  #: long-polls waiting at once; more are answered at once (--max-long-polls)
    keep_alive_s: float = 30.0  #: a connection without a whole request header for this long is closed (--keep-alive-timeout)
    allow_hosts: list[str] = field(default_factory=list)  #: Host names beyond the bound address's (--allow-host; guards.py)
    write_local_token: bool = False  #: ``token`` was made for this run: write it for local clients (token_files.py)
    upload_timeout_s: float = 30.0  #: an upload that sends nothing for this long is aborted (its reservation freed)
    max_image_size: int = 1024  #: largest image_size a session may ask for
    max_feature_cache_mb: float = 2048.0  #: largest feature_cache_mb a session may ask for
    max_encode_ahead: int = 64  #: largest encode_ahead a session may ask for
    max_encode_batch: int = 16  #: largest encode_batch a session may ask for

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_upload_bytes", "max_voxels", "max_stored_bytes", "max_body_bytes", "max_image_size",
                     "max_encode_ahead", "max_encode_batch", "max_long_polls"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("idle_timeout_s", "volume_ttl_s", "reaper_interval_s", "max_wait_s", "upload_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= float(self.max_feature_cache_mb) < float("inf"):
            raise InputError(f"max_feature_cache_mb must be a finite number >= 0, got {self.max_feature_cache_mb}")
        if (self.checkpoint is None) != (self.config_file is None):
            raise InputError("a custom model needs both --checkpoint FILE.pt and --config FILE.yaml")
        if not 0 < float(self.keep_alive_s) < float("inf"):
            raise InputError(f"--keep-alive-timeout must be a positive number of seconds, got {self.keep_alive_s}")
        from .guards import check_allow_host

        self.allow_hosts = [check_allow_host(name) for name in self.allow_hosts]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token."""
    if not token and not is_loopback(host):
        raise InputError(f"refusing to listen on {host} without a token: anyone who can reach it could use the server; {TOKEN_HOWTO}")


def read_token_file(path: str) -> str:
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise InputError(f"token file {path} does not exist; {TOKEN_HOWTO}")
    from .token_files import read_token_text

    token = read_token_text(p)  # InputError for an unreadable or non-UTF-8 file
    if len(token) < 16 or any(c.isspace() for c in token):
        raise InputError(f"token file {path} must hold one token of at least 16 characters without spaces; {TOKEN_HOWTO}")
    return token
