"""How `fluxhook submit` shows progress: a live status line on a terminal, plain lines elsewhere.

No third-party terminal library: rich would be a new runtime dependency, and its mere presence
makes every `import httpx` load httpx's own command line (click, rich, pygments: some 40 ms)
in every fluxhook process, `serve` and `tick` included. A spinner, a bar and a redrawn line
are a few ANSI sequences.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, Protocol

from service.client import Event, Saved
from service.client_render import event_line, submitted_line

FINAL = frozenset({"succeeded", "failed", "cancelled"})
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
BAR_CELLS = 24
MIN_BAR_CELLS = 6
CLEAR_LINE = "\r\x1b[2K"


class Display(Protocol):
    def job(self, job: dict[str, Any]) -> None: ...
    def event(self, event: Event) -> None: ...
    def reconnecting(self, last: int | None) -> None: ...
    def downloading(self, name: str, total: int) -> Callable[[int], None]: ...
    def saved(self, job_id: str, saved: Saved) -> None: ...


@contextmanager
def display(mode: str, stream: IO[str]) -> Iterator[Display]:
    """`auto`: the live line on a terminal, plain lines otherwise (a pipe, a CI log)."""
    if mode == "bar" or (mode == "auto" and stream.isatty()):
        with TerminalDisplay(stream) as live:
            yield live
    else:
        yield PlainDisplay(stream if mode != "none" else None)


def status_line(label: str, fraction: float | None, elapsed_s: float, tick: int, width: int,
                detail: str = "") -> str:
    """`⠹ job_... running [██████░░░░]  40% 0:03`, the bar narrowed to fit `width` (and the
    whole cut to it). No fraction: a block bouncing along the bar, since most providers say
    nothing between submitted and done. Pure."""
    minutes, seconds = divmod(int(elapsed_s), 60)
    percent = "    " if fraction is None else f"{round(min(max(fraction, 0.0), 1.0) * 100):3d}%"
    head = f"{SPINNER[tick % len(SPINNER)]} {label} ["
    tail = f"] {percent} {minutes}:{seconds:02d}" + (f" {detail}" if detail else "")
    cells = min(max(width - 1 - len(head) - len(tail), MIN_BAR_CELLS), BAR_CELLS)
    if fraction is None:
        span = 2 * (cells - 3)
        at = tick % span if tick % span < cells - 3 else span - tick % span
        bar = " " * at + "███" + " " * (cells - 3 - at)
    else:
        full = round(min(max(fraction, 0.0), 1.0) * cells)
        bar = "█" * full + "░" * (cells - full)
    return (head + bar + tail)[: max(width - 1, 0)]


def size(count: int) -> str:
    return f"{count / 1000:.1f} kB" if count < 1_000_000 else f"{count / 1_000_000:.1f} MB"


class PlainDisplay:
    """One line per change, for a pipe or a log: `job_... running 40%`."""

    def __init__(self, stream: IO[str] | None) -> None:
        self.stream = stream
        self._last = ""

    def line(self, text: str) -> None:
        if self.stream is not None and text != self._last:
            print(text, file=self.stream, flush=True)
        self._last = text

    def job(self, job: dict[str, Any]) -> None:
        self.line(submitted_line(job))

    def event(self, event: Event) -> None:
        self.line(event_line(event))

    def reconnecting(self, last: int | None) -> None:
        self.line(f"event stream dropped; resuming after event #{last}")

    def downloading(self, name: str, total: int) -> Callable[[int], None]:
        self.line(f"downloading {name} ({total} bytes)")
        return lambda count: None

    def saved(self, job_id: str, saved: Saved) -> None:
        self.line(f"{job_id} saved {saved.path} ({saved.bytes} bytes, sha256 {saved.sha256[:12]}… matches)")


class TerminalDisplay(PlainDisplay):
    """The same lines, kept above one status line redrawn in place (a spinner, the job's status
    and progress bar, then each download's) by a small thread, so it moves while the event
    stream is quiet."""

    def __init__(self, stream: IO[str], *, interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(stream)
        self.out = stream
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="fluxhook-progress", daemon=True)
        self._tick = 0
        self._label, self._detail = "", ""
        self._fraction: float | None = None

    def __enter__(self) -> TerminalDisplay:
        self.out.write("\x1b[?25l")  # the cursor would flicker over the spinner
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.out.write(CLEAR_LINE + "\x1b[?25h")
        self.out.flush()

    def line(self, text: str) -> None:
        if text == self._last:
            return
        self._last = text
        with self._lock:
            self.out.write(f"{CLEAR_LINE}{text}\n")
            self._draw()

    def job(self, job: dict[str, Any]) -> None:
        super().job(job)
        self._follow(job)

    def event(self, event: Event) -> None:
        super().event(event)
        if event.job is not None:
            self._follow(event.job)

    def _follow(self, job: dict[str, Any]) -> None:
        progress = job.get("progress")
        fraction = float(progress) if isinstance(progress, int | float) else None
        if job.get("status") in FINAL:
            fraction = 1.0
        self._show(f"{job.get('id')} {job.get('status')}", fraction)

    def downloading(self, name: str, total: int) -> Callable[[int], None]:
        done = 0
        self._show(name, 0.0 if total else None, f"0.0/{size(total)}")

        def advance(count: int) -> None:
            nonlocal done
            done += count
            self._show(name, done / total if total else None, f"{size(done)}/{size(total)}")

        return advance

    def _show(self, label: str, fraction: float | None, detail: str = "") -> None:
        with self._lock:
            self._label, self._fraction, self._detail = label, fraction, detail
            self._draw()

    def _spin(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                self._tick += 1
                self._draw()

    def _draw(self) -> None:  # with the lock held
        if not self._label:
            return
        width = shutil.get_terminal_size((80, 24)).columns
        text = status_line(self._label, self._fraction, self._clock() - self._started, self._tick,
                           width, self._detail)
        self.out.write(CLEAR_LINE + text)
        self.out.flush()
