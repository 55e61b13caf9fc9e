"""Idle connections are closed: uvicorn's HTTP/1.1 protocol (h11) with one more timer.

uvicorn closes a keep-alive connection ``timeout_keep_alive`` seconds after its last response, but a
connection that never sends a whole request header (opened and left idle, or a header dripped a byte
at a time) is held for ever. Here the same timer also runs from the moment a connection is opened and
is not restarted by the bytes of an unfinished header: whoever has not sent a whole request header
within ``--keep-alive-timeout`` seconds of connecting (or of the last response) is disconnected.
Once a request's header is in, the request itself is never cut by this timer.
"""

from __future__ import annotations

from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class IdleClosingH11(H11Protocol):
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        task = self.timeout_keep_alive_task
        deadline = task.when() if task is not None and self.conn.their_state is h11.IDLE else None
        super().data_received(data)  # cancels the timer
        if (deadline is not None and self.conn.their_state is h11.IDLE and self.timeout_keep_alive_task is None
                and not self.transport.is_closing()):
            # still no whole request header: the same deadline, not a new one per chunk
            self.timeout_keep_alive_task = self.loop.call_at(deadline, self.timeout_keep_alive_handler)
