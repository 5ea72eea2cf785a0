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
