"""A one-line progress bar for training: epoch, samples sent, last loss and accuracy, rate.

It redraws itself in place with a carriage return, so it is drawn only on a terminal (a log
file would fill with partial lines); lines printed while it shows go through `message()`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Bar:
    def __init__(self, epochs: int, stream: TextIO | None = None, enabled: bool | None = None,
                 width: int = 24, interval: float = 0.1, clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.epochs = epochs
        self.width = width
        self.interval = interval  # seconds between redraws: drawing costs more than a frame
        self.clock = clock
        self.epoch = 0
        self.loss: float | None = None
        self.accuracy: float | None = None
        self.samples = 0  # sent in finished epochs
        self.done = 0  # sent in this epoch
        self.start = clock()
        self._drawn = 0.0
        self._shown = 0  # characters on the line now

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.done = 0

    def update(self, done: int, total: int) -> None:
        """Session's progress callback: `done` of `total` samples of this epoch sent."""
        self.done = done
        now = self.clock()
        if now - self._drawn >= self.interval or done == total:
            self._drawn = now
            self.draw(total)

    def end_epoch(self, samples: int, loss: float, accuracy: float | None) -> None:
        self.samples += samples
        self.done = 0
        self.loss, self.accuracy = loss, accuracy

    def rate(self) -> float:
        elapsed = self.clock() - self.start
        return (self.samples + self.done) / elapsed if elapsed > 0 else 0.0

    def line(self, total: int) -> str:
        filled = self.width * self.done // total if total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        text = (f"epoch {self.epoch + 1}/{self.epochs} [{bar}] {self.done}/{total}")
        if self.loss is not None:
            text += f"  loss {self.loss:.4f}"
        if self.accuracy is not None:
            text += f"  acc {100 * self.accuracy:5.1f}%"
        return text + f"  {self.rate():,.0f} samples/s"

    def draw(self, total: int) -> None:
        if not self.enabled:
            return
        text = self.line(total)
        self.stream.write("\r" + text + " " * max(0, self._shown - len(text)))
        self.stream.flush()
        self._shown = len(text)

    def clear(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0

    def message(self, text: str, stream: TextIO | None = None) -> None:
        """Print a line (to stdout by default) without leaving the bar torn in two."""
        self.clear()
        print(text, file=stream or sys.stdout, flush=True)
