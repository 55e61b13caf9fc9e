"""Progress for long work: a tqdm bar on a terminal, plain lines elsewhere (logs, CI, nohup).

A bar redrawn with carriage returns makes an unreadable log; off a terminal each update that moves
the count by at least ``every`` (or finishes) prints one line ``desc: n/total unit (postfix)``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class PlainProgress:
    """The part of tqdm's interface we use, printing whole lines."""

    def __init__(self, total: int | None, initial: int = 0, desc: str = "", unit: str = "it", stream: TextIO | None = None,
                 every: int | None = None):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every = every or max(1, (total or 10) // 10)
        self._last = initial
        self._postfix = ""
        self._t0 = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n - self._last >= self.every or (self.total is not None and self.n >= self.total):
            self._line()

    def set_postfix_str(self, text: str) -> None:
        self._postfix = text

    def _line(self) -> None:
        self._last = self.n
        total = "?" if self.total is None else self.total
        extra = f" ({self._postfix})" if self._postfix else ""
        print(f"{self.desc}: {self.n}/{total} {self.unit}{extra}, {time.monotonic() - self._t0:.0f} s", file=self.stream, flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int | None, *, initial: int = 0, desc: str = "", unit: str = "it", **kwargs: Any) -> Any:
    """tqdm on a terminal, :class:`PlainProgress` lines otherwise."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, **kwargs)
    return PlainProgress(total, initial, desc, unit)
