"""Wake-ups across hosts through PostgreSQL's LISTEN/NOTIFY.

A write transaction that creates work calls `notify(conn, channel)`; PostgreSQL delivers the
notification when (and only if) that transaction commits, to every session listening on the
channel, on any host. A `Listener` holds one dedicated connection (outside the pool) that
listens and calls `on_wake(channel, payload)` for each notification, so a worker looks for work
within milliseconds of its commit instead of at its next idle look. Idle polling stays as the
safety net: a notification sent while a listener was reconnecting is lost, so after every
reconnect the listener wakes each channel once (payload "") to make the workers look.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Sequence

import anyio
import psycopg
from psycopg import sql

from storage.postgres.connection import Connection

log = logging.getLogger(__name__)

Wake = Callable[[str, str], None]


def notify(conn: Connection, channel: str, payload: str = "") -> None:
    """Queue a notification on `channel`, sent when the current transaction commits (never if
    it rolls back). Identical notifications in one transaction are sent once."""
    conn.execute("SELECT pg_notify(?, ?)", (channel, payload))


class Listener:
    """LISTEN on `channels` over a dedicated connection; call `on_wake` for each notification
    but those sent by a server process in `ignore_senders` (a container that may grow).

    `run()` runs until cancelled, reconnecting after `retry_delay` seconds when the connection
    fails. `on_wake` runs in the event loop and must not block (setting an event is typical);
    an exception it raises is logged and the listener goes on.
    """

    def __init__(
        self,
        url: str,
        channels: Sequence[str],
        on_wake: Wake,
        *,
        retry_delay: float = 1.0,
        ignore_senders: Container[int] = (),
    ) -> None:
        self._url = url
        self._ignore_senders = ignore_senders  # server process ids whose notifications to pass over
        self._channels = tuple(channels)
        self._on_wake = on_wake
        self._retry_delay = retry_delay
        self.connections = 0  # sessions that reached LISTEN so far
        self._listening = anyio.Event()

    async def wait_listening(self) -> None:
        """Return once the current connection is listening (notifications from then on arrive)."""
        await self._listening.wait()

    async def run(self) -> None:
        while True:
            try:
                await self._listen()
            except psycopg.Error as exc:  # the server went away or refused: try again later
                log.warning("wake-up listener lost its connection (%s); reconnecting", type(exc).__name__)
            if self._listening.is_set():
                self._listening = anyio.Event()
            await anyio.sleep(self._retry_delay)

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
            for channel in self._channels:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self.connections += 1
            self._listening.set()
            if self.connections > 1:  # what was sent while we were away is lost: look anyway
                for channel in self._channels:
                    self._wake(channel, "")
            async for notification in conn.notifies():
                if notification.pid not in self._ignore_senders:
                    self._wake(notification.channel, notification.payload)

    def _wake(self, channel: str, payload: str) -> None:
        try:
            self._on_wake(channel, payload)
        except Exception:
            log.exception("wake-up callback failed for channel %s", channel)
