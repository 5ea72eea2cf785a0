"""storage/sqlite/wakeups.py: a commit by another connection wakes the watcher; reads do not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from storage.sqlite.wakeups import SETTLE_S, OwnWrites, WalWatcher

pytestmark = pytest.mark.anyio


def database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    return conn


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "data_version"])
async def test_a_commit_by_another_connection_wakes_the_watcher_and_a_read_does_not(tmp_path, inotify):
    path = tmp_path / "fluxhook.db"
    writer = database(path)
    commits = 0
    woken = anyio.Event()

    def on_commit() -> None:
        nonlocal commits
        commits += 1
        woken.set()

    watcher = WalWatcher(path, on_commit, inotify=inotify)
    async with anyio.create_task_group() as group:
        group.start_soon(watcher.run)
        await watcher.watching.wait()
        writer.execute("SELECT count(*) FROM t").fetchone()
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO t VALUES (1)")
        writer.execute("COMMIT")
        with anyio.fail_after(10):
            await woken.wait()
        group.cancel_scope.cancel()
    writer.close()
    assert watcher.mechanism == ("inotify" if inotify else "data_version")
    assert commits >= 1


async def test_without_commits_the_watcher_stays_asleep(tmp_path):
    path = tmp_path / "fluxhook.db"
    reader = database(path)
    commits = 0

    def on_commit() -> None:
        nonlocal commits
        commits += 1

    watcher = WalWatcher(path, on_commit)
    async with anyio.create_task_group() as group:
        group.start_soon(watcher.run)
        await watcher.watching.wait()
        for _ in range(20):
            reader.execute("SELECT count(*) FROM t").fetchone()
        await anyio.sleep(0.2)
        group.cancel_scope.cancel()
    reader.close()
    assert commits == 0


async def test_only_another_processes_commits_wake_a_database_follower(tmp_path):
    """Its own commits woke the process's loops in memory: the WAL watcher passes them over
    (storage/sqlite/database.py `follow_wake_ups` gives it `committed_elsewhere`)."""
    from service.rules import JOB_RULES
    from storage.sqlite.database import Database

    path = tmp_path / "fluxhook.db"
    db = await Database.open(path, rules=JOB_RULES)
    other = database(path)
    wakes = 0
    foreign = anyio.Event()

    def on_commit() -> None:
        nonlocal wakes
        wakes += 1
        foreign.set()

    def own_write(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS own (x INTEGER)")
        conn.execute("INSERT INTO own VALUES (1)")

    watcher = WalWatcher(path, on_commit, elsewhere=db.committed_elsewhere)
    try:
        assert await db.committed_elsewhere()  # the first look
        assert not await db.committed_elsewhere()
        async with anyio.create_task_group() as group:
            group.start_soon(watcher.run)
            await watcher.watching.wait()
            for _ in range(5):
                await db.transact(own_write)
            other.execute("INSERT INTO t VALUES (1)")
            with anyio.fail_after(10):
                await foreign.wait()
            group.cancel_scope.cancel()
        # The watcher takes writes in order: a wake for the own commits would have come first.
        assert wakes == 1
        await db.transact(own_write)
        assert not await db.committed_elsewhere()
        other.execute("INSERT INTO t VALUES (2)")
        assert await db.committed_elsewhere()
    finally:
        other.close()
        await db.close()


async def test_another_processes_commit_written_among_own_ones_wakes_once_it_becomes_visible(
    tmp_path, monkeypatch
):
    """Another process's frames reached the WAL while this one was writing, so the watcher took
    them for its own; that commit became visible only after the look owed for the own commits
    (its sync was slow, as under load), and no later write to the WAL tells of it. The watcher
    still wakes the loops, not at their next idle look. `data_version` is scripted here: when a
    commit becomes visible is up to the other process's disk."""
    from storage.sqlite import wakeups

    path = tmp_path / "fluxhook.db"
    database(path).close()
    seen = {"version": 1, "foreign": False}  # what PRAGMA data_version and `elsewhere` answer
    monkeypatch.setattr(wakeups, "_data_version", lambda conn: seen["version"])
    asked = 0

    async def elsewhere() -> bool:
        nonlocal asked
        asked += 1
        return bool(seen["foreign"])

    own = OwnWrites()
    woken = anyio.Event()
    watcher = WalWatcher(path, woken.set, elsewhere=elsewhere, own_writes=own)
    async with anyio.create_task_group() as group:
        group.start_soon(watcher.run)
        await watcher.watching.wait()
        with own.writing():
            (tmp_path / "fluxhook.db-wal").write_bytes(b"frames")  # the own commit's and the other's
            await anyio.sleep(0.01)  # drained while this process writes
            seen["version"] = 2  # the own commit is visible
            own.wrote()
        with anyio.fail_after(5):
            while not asked:  # the look owed for the own commit: nobody else's is visible yet
                await anyio.sleep(0.001)
        assert not woken.is_set()
        seen["version"], seen["foreign"] = 3, True  # now it is, and nothing is written
        with anyio.fail_after(SETTLE_S + 1):
            await woken.wait()
        group.cancel_scope.cancel()


async def test_a_database_following_some_kinds_wakes_those_alone(tmp_path):
    """A commit does not say what it wrote: a follower of only events (a web process without
    workers) wakes its streams, never the worker's, notifier's or applier's signals."""
    from service.rules import JOB_RULES
    from storage.sqlite.database import Database

    path = tmp_path / "fluxhook.db"
    db = await Database.open(path, rules=JOB_RULES)
    other = database(path)
    woken: list[str] = []
    changed = anyio.Event()

    def wake(kind: str) -> None:
        woken.append(kind)
        changed.set()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(db.follow_wake_ups, wake, ("events",))
            with anyio.fail_after(10):  # a guard against hanging, not a timing assertion
                while not woken:  # until the watcher watches
                    other.execute("INSERT INTO t VALUES (1)")
                    with anyio.move_on_after(0.1):
                        await changed.wait()
            group.cancel_scope.cancel()
        assert set(woken) == {"events"}
    finally:
        other.close()
        await db.close()
