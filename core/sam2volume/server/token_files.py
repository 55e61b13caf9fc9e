"""Token files: reading one (a clear error for an unreadable or non-UTF-8 file, a warning when others may
read it) and the token ``sam2volume serve`` makes for itself on loopback.

``serve`` without ``--token-file`` (and without ``--no-token``) on a loopback address makes a random
token and writes it, readable by the user only, to ``token_dir()/loopback-PORT.token``:
``$SAM2VOLUME_TOKEN_DIR`` if set, else ``$XDG_CONFIG_HOME/sam2volume/tokens``, else
``~/.config/sam2volume/tokens``. A client given no token for ``http://127.0.0.1:PORT`` (or
``localhost``, ``[::1]``) reads that file. The server removes it when it stops. Standard library only
(the client imports this).
"""

from __future__ import annotations

import logging
import os
import stat
import urllib.parse
from pathlib import Path

from ..errors import InputError
from .config import is_loopback

log = logging.getLogger("sam2volume.server")


def read_token_text(path: str | os.PathLike[str]) -> str:
    """The stripped text of a token file; InputError (one sentence) if it cannot be read or is not UTF-8."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read token file {p} ({exc.strerror or exc}); give a readable file with --token-file") from None
    try:
        return data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise InputError(f"token file {p} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}); write the token "
                         "as plain text, e.g. python -c \"import secrets; print(secrets.token_urlsafe(32))\" > FILE") from None


def warn_if_shared(path: str | os.PathLike[str]) -> str | None:
    """Log (and return) a one-line warning when group or others may read the token file."""
    if os.name != "posix":
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return None
    message = f"token file {path} can be read by other users (mode {stat.S_IMODE(mode):03o}): run chmod 600 {path}"
    log.warning(message)
    return message


def token_dir() -> Path:
    """Where ``serve`` writes the token it makes on loopback (see the module's docstring)."""
    if os.environ.get("SAM2VOLUME_TOKEN_DIR"):
        return Path(os.environ["SAM2VOLUME_TOKEN_DIR"]).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config).expanduser() / "sam2volume" / "tokens"


def local_token_path(port: int) -> Path:
    return token_dir() / f"loopback-{int(port)}.token"


def write_local_token(port: int, token: str) -> Path:
    """Write ``token`` for a loopback server on ``port`` (mode 600, folder 700, atomically); returns the path."""
    path = local_token_path(port)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(token + "\n")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise InputError(f"cannot write the server's token to {path} ({exc.strerror or exc}); set SAM2VOLUME_TOKEN_DIR to a "
                         "writable folder, or give --token-file FILE") from None
    return path


def remove_local_token(path: Path, token: str) -> None:
    """Remove the token file if it still holds ``token`` (another server may have taken the port since)."""
    try:
        if path.read_text(encoding="utf-8").strip() == token:
            path.unlink()
    except (OSError, UnicodeDecodeError):
        pass


def local_token_for(url: str) -> str | None:
    """The token a loopback server on ``url``'s port wrote for itself, if there is one."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        return None
    if port is None or not is_loopback(host):
        return None
    path = local_token_path(port)
    if not path.is_file():
        return None
    return read_token_text(path) or None


def bearer_matches(authorization: str | None, token: str) -> bool:
    """True when an ``Authorization`` header value is ``Bearer TOKEN`` (scheme in any case) with this token,
    compared in constant time (the engine server's and the web page's check)."""
    auth = authorization or ""
    return auth[:7].lower() == "bearer " and token_matches(auth[7:], token)


def token_matches(given: str | None, token: str) -> bool:
    """``given`` is ``token``, compared in constant time (``secrets.compare_digest``); None never is."""
    import secrets

    return given is not None and secrets.compare_digest(given.encode("utf-8"), token.encode("utf-8"))
