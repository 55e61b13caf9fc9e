"""What stops a web page from driving the server: Host, Origin, Sec-Fetch-Site and Content-Type checks.

A page in a browser on the same machine can send requests to ``http://127.0.0.1:PORT``: "simple"
cross-origin POSTs (``text/plain`` or form bodies) need no CORS preflight, and a DNS-rebinding page
reaches the server under its own name (``Host: evil.example``). As Jupyter and other local servers do,
every request is checked before any route runs (and before its body is read):

- the ``Host`` header must name the server: for a loopback bind ``127.0.0.1``, ``localhost`` or
  ``[::1]``; for another address that address; for a wildcard bind (``0.0.0.0``, ``::``) any IP
  address or this machine's name; always also the names given with ``--allow-host``. The port is not
  compared (an SSH tunnel or a proxy may use another one; a rebinding page is told apart by its name);
- a request with an ``Origin`` header is refused unless that origin is the server itself (scheme, the
  Host's name and port); so is one a browser marks ``Sec-Fetch-Site: cross-site`` or ``same-site``
  (another port on localhost is the same site but not this server);
- a request with a body, or with any ``Content-Type``, must be ``application/json``, or
  ``application/octet-stream`` for a volume upload (``PUT /v1/volumes/{id}``): a browser cannot send
  either type across origins without a preflight, which the server never answers with CORS headers.

Refusals are the server's JSON errors: 403 ``HostError`` / ``OriginError``, 415 ``ContentTypeError``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from typing import Any, Iterable

from . import API_HEADER, API_VERSION

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
JSON = "application/json"
BINARY = "application/octet-stream"
VOLUME_UPLOAD = re.compile(r"^/v\d+/volumes/")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


def split_host(value: str) -> tuple[str, int | None] | None:
    """``("name", port)`` of a Host header value (``name``, ``name:port``, ``[v6]:port``); None if malformed."""
    value = value.strip().lower()
    m = re.fullmatch(r"\[([0-9a-f:.]+)\](?::(\d{1,5}))?|([^:\[\]]+)(?::(\d{1,5}))?", value)
    if m is None:
        return None
    name = m.group(1) or m.group(3)
    port = m.group(2) or m.group(4)
    return name, int(port) if port else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def check_allow_host(name: str) -> str:
    """An ``--allow-host`` value, lower-cased; InputError for one that is no host name or address."""
    from ..errors import InputError

    n = name.strip().lower().strip("[]")
    if not (_is_ip(n) or _NAME.match(n)):
        raise InputError(f"--allow-host {name!r} must be a host name or an IP address (no port, no scheme), e.g. gpu-box.example.org")
    return n


class HostPolicy:
    """The Host names a server bound to ``bind_host`` answers to (see the module's docstring)."""

    def __init__(self, bind_host: str, allow_hosts: Iterable[str] = ()):
        bound = bind_host.strip("[]").lower()
        self.names = {check_allow_host(n) for n in allow_hosts}
        self.any_address = bound in ("0.0.0.0", "::", "")
        if self.any_address:
            self.names |= set(LOOPBACK_NAMES) | {socket.gethostname().lower(), socket.getfqdn().lower()}
        elif bound == "localhost" or (_is_ip(bound) and ipaddress.ip_address(bound).is_loopback):
            self.names |= set(LOOPBACK_NAMES) | {bound}
        else:
            self.names.add(bound)

    def allows(self, name: str) -> bool:
        return name in self.names or (self.any_address and _is_ip(name))

    def problem(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str, str] | None:
        """``(status, type, message)`` for a request a web page may have sent, else None."""
        host = headers.get("host")
        parsed = split_host(host) if host is not None else None
        if parsed is None or not self.allows(parsed[0]):
            given = f"Host header {host!r}" if host is not None else "a request without a Host header"
            return 403, "HostError", (f"{given} does not name this server (it answers to "
                                      f"{', '.join(sorted(self.names))}): a web page under another name (DNS rebinding) "
                                      "may not use it; start the server with --allow-host NAME to add a name")
        site = headers.get("sec-fetch-site", "").lower()
        if site in ("cross-site", "same-site"):
            return 403, "OriginError", f"a request a browser marks Sec-Fetch-Site: {site} is refused: web pages may not use this server"
        origin = headers.get("origin")
        if origin is not None and not self._same_origin(origin, parsed):
            return 403, "OriginError", (f"a request from the web page origin {origin!r} is refused: web pages may not "
                                        "use this server (clients send no Origin header)")
        ctype = headers.get("content-type")
        has_body = headers.get("content-length", "0").strip() not in ("", "0") or "transfer-encoding" in headers
        if ctype is not None or has_body:
            want = BINARY if method == "PUT" and VOLUME_UPLOAD.match(path) else JSON
            given = (ctype or "").split(";")[0].strip().lower()
            if given != want:
                got = repr(ctype) if ctype is not None else "none"
                return 415, "ContentTypeError", f"{method} {path} needs Content-Type: {want}, got {got}"
        return None

    @staticmethod
    def _same_origin(origin: str, host: tuple[str, int | None]) -> bool:
        parts = urllib.parse.urlsplit(origin.strip().lower())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False  # "null" (sandboxed pages, files) and the like
        default = 443 if parts.scheme == "https" else 80
        try:
            port = parts.port or default
        except ValueError:
            return False
        return parts.hostname == host[0] and port == (host[1] or default)


class WebGuard:
    """ASGI middleware refusing what :meth:`HostPolicy.problem` names, before the app sees the request."""

    def __init__(self, app: Any, policy: HostPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers: dict[str, str] = {}
            for k, v in scope["headers"]:
                headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
            problem = self.policy.problem(scope["method"], scope["path"], headers)
            if problem is not None:
                from fastapi.responses import JSONResponse

                status, kind, message = problem
                response = JSONResponse({"error": {"type": kind, "message": message}}, status_code=status,
                                        headers={API_HEADER: str(API_VERSION), "Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
