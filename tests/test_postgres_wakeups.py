"""LISTEN/NOTIFY wake-ups: work committed by one connection wakes a listener on another."""

from __future__ import annotations

import anyio
import psycopg
import pytest

from service.rules import JOB_RULES
from storage.postgres.database import Database
from storage.postgres.wakeups import Listener, notify

pytestmark = pytest.mark.anyio


class Heard:
    def __init__(self) -> None:
        self.wakes: list[tuple[str, str]] = []
        self._changed = anyio.Event()

    def __call__(self, channel: str, payload: str) -> None:
        self.wakes.append((channel, payload))
        self._changed.set()

    async def until(self, wake: tuple[str, str]) -> None:
        with anyio.fail_after(30):  # a guard against hanging, not a timing assertion
            while wake not in self.wakes:
                await self._changed.wait()
                self._changed = anyio.Event()


class Wakes:
    """A database's `wake`: the kinds woken in order, and `changed()` to wait for the next."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self._changed = anyio.Event()

    def __call__(self, kind: str) -> None:
        self.kinds.append(kind)
        self._changed.set()
        self._changed = anyio.Event()

    async def changed(self) -> None:
        await self._changed.wait()


@pytest.fixture
async def db(postgres_url):
    database = await Database.open(postgres_url, pool_size=2, rules=JOB_RULES)
    yield database
    await database.close()


async def test_a_notify_committed_by_one_connection_wakes_a_listener_on_another(db, postgres_url):
    heard = Heard()
    listener = Listener(postgres_url, ["fluxhook_work"], heard)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.run)
        await listener.wait_listening()
        await db.transact(lambda conn: notify(conn, "fluxhook_work", "job_1"))
        await heard.until(("fluxhook_work", "job_1"))
        tg.cancel_scope.cancel()


async def test_a_notify_in_a_rolled_back_transaction_wakes_nobody(db, postgres_url):
    heard = Heard()
    listener = Listener(postgres_url, ["fluxhook_work"], heard)

    def refused(conn):
        notify(conn, "fluxhook_work", "rolled-back")
        raise LookupError("refused")

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.run)
        await listener.wait_listening()
        with pytest.raises(LookupError):
            await db.transact(refused)
        await db.transact(lambda conn: notify(conn, "fluxhook_work", "committed"))
        await heard.until(("fluxhook_work", "committed"))  # delivered in commit order
        tg.cancel_scope.cancel()
    assert ("fluxhook_work", "rolled-back") not in heard.wakes


@pytest.mark.e2e
async def test_a_listener_whose_connection_dies_reconnects_and_wakes_its_workers(db, postgres_url):
    heard = Heard()
    listener = Listener(postgres_url, ["fluxhook_work"], heard, retry_delay=0.05)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.run)
        await listener.wait_listening()
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            killed = admin.execute(
                """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE datname = current_database() AND query LIKE 'LISTEN%%'""").fetchall()
        assert killed == [(True,)]
        await heard.until(("fluxhook_work", ""))  # the reconnect wakes: anything missed is looked for
        assert listener.connections == 2
        await listener.wait_listening()
        await db.transact(lambda conn: notify(conn, "fluxhook_work", "after"))
        await heard.until(("fluxhook_work", "after"))
        tg.cancel_scope.cancel()


async def test_a_listener_passes_over_notifications_from_the_senders_it_ignores(db, postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as mine, \
            psycopg.connect(postgres_url, autocommit=True) as theirs:
        heard = Heard()
        listener = Listener(postgres_url, ["fluxhook_work"], heard, ignore_senders={mine.info.backend_pid})
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.run)
            await listener.wait_listening()
            mine.execute("SELECT pg_notify('fluxhook_work', 'mine')")
            theirs.execute("SELECT pg_notify('fluxhook_work', 'theirs')")
            await heard.until(("fluxhook_work", "theirs"))  # delivered in commit order
            tg.cancel_scope.cancel()
    assert heard.wakes == [("fluxhook_work", "theirs")]


async def test_a_database_is_woken_by_other_processes_commits_not_by_its_own(db, postgres_url):
    """This process's loops are woken in memory by what it commits (as on SQLite); woken a
    second time by the notification, they would look for work again for nothing."""
    wakes = Wakes()
    woken, wake = wakes.kinds, wakes

    async def commit_ours_then_theirs() -> None:
        await db.transact(lambda conn: notify(conn, "fluxhook_deliveries"))
        with psycopg.connect(postgres_url, autocommit=True) as elsewhere:
            elsewhere.execute("SELECT pg_notify('fluxhook_work', '')")

    async with anyio.create_task_group() as tg:
        tg.start_soon(db.follow_wake_ups, wake)
        with anyio.fail_after(30):  # a guard against hanging, not a timing assertion
            while "work" not in woken:  # until the listener is listening
                await commit_ours_then_theirs()
                with anyio.move_on_after(0.1):
                    await wakes.changed()
            heard = woken.count("work")
            # Listening now: ours reaches the listener before theirs, and is passed over.
            await commit_ours_then_theirs()
            while woken.count("work") == heard:
                await wakes.changed()
        tg.cancel_scope.cancel()
    assert "deliveries" not in woken


async def test_a_database_following_some_kinds_listens_on_their_channels_alone(db, postgres_url):
    """A web process without workers follows only events: the workers' wake-ups (tasks,
    deliveries, recorded callbacks) would wake its listener for nothing at every commit."""
    wakes = Wakes()
    woken, wake = wakes.kinds, wakes

    def commit_theirs() -> None:
        with psycopg.connect(postgres_url, autocommit=True) as elsewhere:
            for channel in ("fluxhook_work", "fluxhook_callbacks", "fluxhook_deliveries", "fluxhook_events"):
                elsewhere.execute("SELECT pg_notify(%s, '')", (channel,))

    async with anyio.create_task_group() as tg:
        tg.start_soon(db.follow_wake_ups, wake, ("events",))
        with anyio.fail_after(30):  # a guard against hanging, not a timing assertion
            while "events" not in woken:  # until the listener is listening
                commit_theirs()
                with anyio.move_on_after(0.1):
                    await wakes.changed()
        tg.cancel_scope.cancel()
    # Sent in that order, each in its own commit: the others would have come before the event.
    assert set(woken) == {"events"}
