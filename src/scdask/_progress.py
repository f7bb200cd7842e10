"""Progress of long steps: a bar on a terminal, a line every few seconds anywhere else.

A step is a ``with step("write cells.h5ad"):`` block. While it runs, a daemon thread reports
on ``sys.stderr``: on a terminal it redraws one line in place a few times a second (a bar
once the number of blocks is known); anywhere else (a log file, a SLURM job's output, a pipe)
it prints a line at least every ``scdask.progress-interval`` (dask config, default 9 s), so
that a job that has not printed for longer is known to be stuck, not busy.

scdask's own loops report what they do with :func:`expect` (blocks to come) and
:func:`advance` (blocks done); both do nothing outside a step, so library code calls them
unconditionally. One step is active at a time in a process: a step entered while another is
active adds its blocks to the outer one.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

import dask.config
from dask.utils import parse_timedelta

from scdask._errors import InputError

__all__ = ["advance", "expect", "step"]

#: Seconds between redraws of the line on a terminal.
_REDRAW = 0.2
#: Characters in the bar on a terminal.
_BAR_WIDTH = 24

_lock = threading.Lock()
_current: _Step | None = None


class _Step:
    """One active step: its counts, and the thread that reports them."""

    def __init__(self, name: str, stream: TextIO, interval: float, tty: bool) -> None:
        self.name, self.stream, self.interval, self.tty = name, stream, interval, tty
        self.done = 0
        self.total = 0
        self.t0 = time.perf_counter()
        self.stopped = threading.Event()
        self.printed = False  # whether any line was written
        self.width = 0  # length of the last line drawn on the terminal
        self.thread = threading.Thread(target=self._report, name="scdask-progress", daemon=True)

    def _counts(self) -> str:
        with _lock:
            done, total = self.done, self.total
        if total:
            return f"{done}/{total} blocks"
        return f"{done} blocks" if done else ""

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        counts = self._counts()
        return f"[scdask] {self.name}: {elapsed:.1f} s so far" + (f", {counts}" if counts else "")

    def _bar(self) -> str:
        elapsed = time.perf_counter() - self.t0
        with _lock:
            done, total = self.done, self.total
        if not total:
            counts = f", {done} blocks" if done else ""
            return f"[scdask] {self.name}: {elapsed:.1f} s{counts}"
        filled = min(_BAR_WIDTH, _BAR_WIDTH * done // total)
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        return f"[scdask] {self.name} [{bar}] {done}/{total} blocks, {elapsed:.1f} s"

    def _write(self, text: str) -> None:
        # A closed or broken stream must not kill the step (or leave a thread traceback).
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()
            self.printed = True

    def _draw(self) -> None:
        text = self._bar()
        self._write("\r" + text.ljust(self.width))
        self.width = len(text)

    def _report(self) -> None:
        period = _REDRAW if self.tty else self.interval
        deadline = self.t0 + period
        while not self.stopped.wait(max(0.0, deadline - time.perf_counter())):
            if self.tty:
                self._draw()
            else:
                self._write(self._line() + "\n")
            # the next report one period on; if this one was late, one period from now
            deadline = max(deadline + period, time.perf_counter())

    def start(self) -> None:
        self.thread.start()

    def finish(self, failed: bool) -> None:
        """Stop the thread (nothing is written after this returns) and close the report."""
        self.stopped.set()
        self.thread.join()
        if self.tty:
            self._draw()
            self._write("\n")
            return
        elapsed = time.perf_counter() - self.t0
        counts = self._counts()
        verb = "stopped after" if failed else "done in"
        self._write(
            f"[scdask] {self.name}: {verb} {elapsed:.1f} s"
            + (f", {counts}" if counts else "")
            + "\n"
        )


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


@contextlib.contextmanager
def step(
    name: str, *, interval: float | str | None = None, stream: TextIO | None = None
) -> Iterator[None]:
    """Report the progress of one long step until it ends.

    On a terminal one line is redrawn in place a few times a second (a bar once the number of
    blocks is known) and ended when the step ends. Elsewhere a line such as
    ``[scdask] NAME: 12.3 s so far, 14/98 blocks`` is printed at least every ``interval``
    seconds, and one closing line at the end (``done in`` or ``stopped after``), also for a
    step shorter than ``interval``. Nothing is printed once the step has ended.

    Parameters
    ----------
    name
        What the step does, as shown in the lines.
    interval
        Seconds (or a dask time string such as ``"9s"``) between lines off a terminal;
        default: dask config ``scdask.progress-interval``.
    stream
        Where the report goes; default: ``sys.stderr`` at the time of the call.

    Examples
    --------
    >>> import io, time
    >>> from scdask._progress import advance, expect, step
    >>> out = io.StringIO()  # not a terminal: a line every interval, then a closing line
    >>> with step("write", interval=0.05, stream=out):
    ...     expect(4)
    ...     for _ in range(4):
    ...         time.sleep(0.05)
    ...         advance()
    >>> out.getvalue().splitlines()[-1]  # doctest: +ELLIPSIS
    '[scdask] write: done in ... s, 4/4 blocks'
    """
    global _current
    stream = sys.stderr if stream is None else stream
    seconds = parse_timedelta(
        interval if interval is not None else dask.config.get("scdask.progress-interval", "9s"),
        default="seconds",
    )
    if not seconds or seconds <= 0:
        raise InputError(f"The progress interval must be positive, got {interval!r}.")
    current = _Step(name, stream, float(seconds), _isatty(stream))
    with _lock:
        if _current is not None:  # inside another step: that one reports these blocks
            current = None
        else:
            _current = current
    if current is None:
        yield
        return
    current.start()
    failed = True
    try:
        yield
        failed = False
    finally:
        try:
            current.finish(failed)
        finally:
            with _lock:
                _current = None


def expect(total: int) -> None:
    """Announce ``total`` more blocks in the active step (added to those announced before).

    Does nothing outside a step.

    Examples
    --------
    >>> from scdask._progress import expect
    >>> expect(10)  # no step: nothing happens
    """
    with _lock:
        if _current is not None:
            _current.total += int(total)


def advance(n: int = 1) -> None:
    """Count ``n`` blocks of the active step as done. Does nothing outside a step.

    Examples
    --------
    >>> from scdask._progress import advance
    >>> advance()  # no step: nothing happens
    """
    with _lock:
        if _current is not None:
            _current.done += int(n)
