"""Wake-ups between processes on one SQLite database (one host): a commit in any process wakes
the others within a millisecond or so, without polling.

SQLite has no LISTEN/NOTIFY, but in WAL mode every commit appends its pages to `<db>-wal`. On
Linux, `WalWatcher` asks the kernel (inotify, through libc) to report writes to the database's
directory, and when `<db>-wal` is written it wakes the loops as soon as `PRAGMA data_version`
(on a connection of its own) shows a commit: no work at all while nothing is committed, so an
idle process stays idle. Where inotify is missing (another OS, a container
that forbids it) it falls back to reading `PRAGMA data_version` on a connection of its own
every `poll_interval` seconds; that number changes whenever another connection commits.

Either way a wake is only a hint: a write that was not a commit makes the loops look once more
and find nothing. This process's own commits woke its loops in memory already, and waking them
again would make each claim and look for its next due time for nothing, in the way of the work
in hand: given `elsewhere` (storage/sqlite/database.py asks its own connection's
`data_version`, which only another connection's commit changes), the watcher wakes only when
it says another process committed. Nor does it wait for its own commits to become visible:
SQLite has one writer at a time, so WAL writes while this process was writing (`OwnWrites`) are
its own, and after them it looks whether another process committed too once per
`OWN_LOOK_DELAY_S`, not once per commit; then, since another's commit written meanwhile may
become visible only after that look, it reads `data_version` again now and then for a second
(`_LooksAfterOwnWrites`). A missed wake (a full inotify queue) is found by the loops' idle
looks, the safety net that stays on every backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_Q_OVERFLOW = 0x00004000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
SETTLE_S = 1.0  # longest wait, after a write to the WAL, for its commit to become visible
QUICK_LOOK_S = 0.001  # how often to look for it at first (uvloop's timers count whole ms),
QUICK_LOOKS_FOR_S = 0.004  # for this long; then each wait twice the last
OWN_LOOK_DELAY_S = 0.002  # after this process's own commits, when to look for another's


@dataclass
class OwnWrites:
    """This process's write transactions on the database (storage/sqlite/database.py counts
    them), which tell the watcher whose frames the WAL's writes are."""

    active: int = 0  # under way
    wrote_at: float = 0.0  # time.monotonic() when the last one that changed rows had committed
    _idle: anyio.Event | None = None  # set when none is under way any more, for `until_idle`

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around each write transaction (in the event loop's thread)."""
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            if not self.active and self._idle is not None:
                self._idle.set()
                self._idle = None

    def wrote(self) -> None:
        """A transaction changed rows and committed (called in the database's thread)."""
        self.wrote_at = time.monotonic()

    async def until_idle(self) -> None:
        """Until none is under way."""
        if self.active:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    def since(self, moment: float) -> bool:
        """Whether one may have written since `moment` (time.monotonic()): one is under way,
        or one that changed rows has committed since."""
        return self.active > 0 or self.wrote_at >= moment


class WalWatcher:
    """Call `on_commit()` soon after any connection, in any process, commits to `path`; with
    `elsewhere`, only when it answers True (another process's commit, not this one's)."""

    def __init__(
        self, path: Path, on_commit: Callable[[], None], *, poll_interval: float = 0.004,
        inotify: bool = True, elsewhere: Callable[[], Awaitable[bool]] | None = None,
        own_writes: OwnWrites | None = None,
    ) -> None:
        self._path = path
        self._on_commit = on_commit
        self._elsewhere = elsewhere
        self._own = own_writes if elsewhere is not None else None  # only `elsewhere` tells them apart
        self._poll_interval = poll_interval
        self._inotify = inotify  # False: poll data_version even where inotify works
        self.mechanism = ""  # "inotify" or "data_version", once running
        self.watching = anyio.Event()  # set once commits from then on are seen

    async def run(self) -> None:
        """Until cancelled."""
        fd = _inotify_watch(self._path.parent) if self._inotify else None
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            if fd is None:
                await self._poll(conn)
            else:
                await self._follow(fd, conn)
        finally:
            conn.close()
            if fd is not None:
                os.close(fd)

    async def _follow(self, fd: int, conn: sqlite3.Connection) -> None:
        self.mechanism = "inotify"
        wal = (self._path.name + "-wal").encode()
        last = _data_version(conn)
        self.watching.set()
        looked = time.monotonic()  # when the events drained last had all been read
        looks = _LooksAfterOwnWrites()
        while True:
            with anyio.move_on_after(looks.due(time.monotonic())) as waiting:
                await anyio.wait_readable(fd)
            if waiting.cancelled_caught:  # a look owed for this process's own commits
                version = _data_version(conn)
                if looks.take(time.monotonic(), changed=version != last):
                    last = version
                    await self._woken()
                continue
            previous, looked = looked, time.monotonic()
            if not _drain(fd, wal):
                continue
            if self._own is not None and self._own.since(previous):
                # This process was writing meanwhile, and SQLite lets one writer at a time write
                # the WAL: these are its own commit's frames, visible once that commit is done
                # (unless it changed nothing: a claim that found nothing writes no frame).
                # Whether another process committed too (just before it) is looked at once for
                # all the own commits of OWN_LOOK_DELAY_S, not once per commit, and then now
                # and then for SETTLE_S (`_LooksAfterOwnWrites`).
                with anyio.move_on_after(SETTLE_S):
                    await self._own.until_idle()
                if self._own.wrote_at >= previous:
                    last = _data_version(conn)
                    looks.owe(time.monotonic())
                    continue
            # The frames are written, but the commit is visible only once SQLite has synced them
            # and updated the WAL index: a loop woken before that would look, find nothing and
            # sleep until its idle look. So wake once data_version says the commit is visible
            # (or, for a write that was no commit, after SETTLE_S anyway). It looks again at
            # each further write to the WAL (the commit's last frames, after which a commit that
            # does not sync is visible at once), or after QUICK_LOOK_S (a sync), and then less
            # and less often: most wakes are the last frames of a commit already seen, which no
            # look will change.
            began, delay = time.monotonic(), QUICK_LOOK_S
            while (version := _data_version(conn)) == last \
                    and (waited := time.monotonic() - began) < SETTLE_S:
                with anyio.move_on_after(delay):
                    await anyio.wait_readable(fd)
                    _drain(fd, wal)
                if waited >= QUICK_LOOKS_FOR_S:
                    delay = min(delay * 2, SETTLE_S / 8)
            last = version
            looks.woken()
            await self._woken()

    async def _woken(self) -> None:
        if self._elsewhere is None or await self._elsewhere():
            self._on_commit()

    async def _poll(self, conn: sqlite3.Connection) -> None:
        self.mechanism = "data_version"
        last = _data_version(conn)
        self.watching.set()
        while True:
            await anyio.sleep(self._poll_interval)
            version = _data_version(conn)
            if version != last:
                last = version
                await self._woken()


class _LooksAfterOwnWrites:
    """When to look whether another process committed, after this process's own commits.

    Another process's commit whose frames reached the WAL while this process was writing is
    taken for part of the own commits: the look OWN_LOOK_DELAY_S after them (`owe`) wakes the
    loops if another process has committed, whatever it was. But that commit may be visible
    only later: its frames are written before its sync (milliseconds under load), and no
    write to the WAL follows. So the watcher looks again at `data_version`, a
    cheap read on its own connection, at doubling intervals until SETTLE_S after the last own
    commit; a change it has not accounted for is such a commit (or a later own one, which
    `committed_elsewhere` passes over)."""

    def __init__(self) -> None:
        self._at: float | None = None  # the next look
        self._owed = False  # the next look wakes (asks `elsewhere`) whatever data_version says
        self._delay = OWN_LOOK_DELAY_S
        self._until = 0.0

    def owe(self, now: float) -> None:
        """Own commits were written, and `last` read after them."""
        if self._at is None:  # no looks under way: they start again at the shortest interval
            self._delay = OWN_LOOK_DELAY_S
        self._at = now + OWN_LOOK_DELAY_S if self._at is None else min(self._at, now + OWN_LOOK_DELAY_S)
        self._owed = True
        self._until = now + SETTLE_S

    def woken(self) -> None:
        """The loops were woken for a change seen otherwise: nothing is owed (later looks stay)."""
        self._owed = False

    def due(self, now: float) -> float | None:
        """Seconds until the next look (None: no look, until the next write)."""
        return None if self._at is None else max(0.0, self._at - now)

    def take(self, now: float, *, changed: bool) -> bool:
        """A look, now: whether it wakes the loops (owed, or data_version `changed`)."""
        wake, self._owed = self._owed or changed, False
        self._delay = min(self._delay * 2, SETTLE_S / 8)
        self._at = now + self._delay if now + self._delay <= self._until else None
        return wake


def _data_version(conn: sqlite3.Connection) -> int | None:
    try:
        return int(conn.execute("PRAGMA data_version").fetchone()[0])
    except sqlite3.Error:  # busy or gone for a moment: the next look tells
        return None


def _inotify_watch(directory: Path) -> int | None:
    """A non-blocking inotify descriptor watching writes in `directory`, or None where the
    system has no inotify."""
    import ctypes.util  # here: ctypes and what it imports take ~4 ms, which a tick never needs

    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        init, add_watch = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    fd = int(init(os.O_NONBLOCK | os.O_CLOEXEC))
    if fd < 0:
        log.info("inotify unavailable (%s): watching the database by polling",
                 os.strerror(ctypes.get_errno()))
        return None
    if add_watch(fd, os.fsencode(directory), IN_MODIFY) < 0:
        log.info("cannot watch %s with inotify (%s): watching the database by polling",
                 directory, os.strerror(ctypes.get_errno()))
        os.close(fd)
        return None
    return fd


def _drain(fd: int, wal: bytes) -> bool:
    """Read every pending event; whether one was a write to the WAL (or events were lost)."""
    written = False
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return written
        offset = 0
        while offset + _EVENT.size <= len(data):
            _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW or name == wal:
                written = True
