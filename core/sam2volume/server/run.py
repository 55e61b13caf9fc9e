"""Start the server: bind the socket first (``--port 0`` picks a free port), then hand it to uvicorn."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from .config import ServerConfig, check_bind

log = logging.getLogger("sam2volume.server")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP (not 0): asyncio then sets TCP_NODELAY on accepted connections; without it Nagle's
    # algorithm and delayed ACKs add 40 ms to every response written in two parts
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        from ..errors import InputError

        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port (0: any free one)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(config: ServerConfig, host: str = "127.0.0.1", port: int = 8765, *, ready_file: str | None = None,
          log_level: str = "info", on_ready: Any = None, parent_pid: int | None = None, exit_with_stdin: bool = False) -> None:
    """Run until interrupted. ``ready_file`` gets ``{"url", "pid"}`` (atomically) once it listens.
    ``parent_pid`` / ``exit_with_stdin``: also stop when that process ends or stdin closes (see :mod:`.lifetime`)."""
    import uvicorn

    from .app import create_app

    check_bind(host, config.token)
    sock = bind(host, port)
    url = url_of(sock)
    token_file = None
    if config.write_local_token and config.token:  # for clients on this machine (token_files.py), removed at the end
        from .token_files import write_local_token

        try:
            token_file = write_local_token(sock.getsockname()[1], config.token)
        except BaseException:
            sock.close()
            raise

    def forget_token() -> None:
        if token_file is not None:
            from .token_files import remove_local_token

            remove_local_token(token_file, config.token or "")

    app = create_app(config, bind_host=host)

    def ready() -> None:
        if ready_file:
            from ..io.atomic import write_text_atomic

            write_text_atomic(Path(ready_file), json.dumps({"url": url, "pid": os.getpid(),
                                                            **({"token_file": str(token_file)} if token_file else {})}))
        log.info("sam2volume server listening on %s (token %s)", url, "required" if config.token else "off: loopback only")
        if token_file is not None:
            log.info("token for clients on this machine in %s (clients of %s without a token read it; a new one each start)",
                     token_file, url)
        if on_ready is not None:
            on_ready(url)

    app.state.on_ready = ready
    # at shutdown: uvicorn then ends the process with the signal that stopped it, and no finally runs
    app.state.on_shutdown = forget_token
    from .connections import IdleClosingH11

    uconfig = uvicorn.Config(app, log_level=log_level, timeout_keep_alive=config.keep_alive_s, http=IdleClosingH11,
                             server_header=False, lifespan="on")
    server = uvicorn.Server(uconfig)
    if parent_pid is not None or exit_with_stdin:
        from .lifetime import watch_parent

        watch_parent(lambda: setattr(server, "should_exit", True), parent_pid=parent_pid, exit_with_stdin=exit_with_stdin)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        forget_token()  # also when start-up failed
