"""The announced address: where the web process says it can be reached (its store).

A web process announces the public URL it serves; workers and `tick` that were not given
FLUXHOOK_PUBLIC_URL read it here, so every process builds callback and output URLs alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage.sql import SqlDatabase

class AddressStore:
    """Store methods for the one announced public URL (its store)."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    async def announce_address(self, public_url: str, *, owner: str, now: int) -> None:
        """Record `public_url` as the address to use; the latest announcement wins."""
        await self._db.transact(
            lambda conn: conn.execute(
                """INSERT INTO announced_address (id, owner, public_url, announced_at)
                   VALUES (1, ?, ?, ?)
                   ON CONFLICT (id) DO UPDATE SET owner = excluded.owner,
                       public_url = excluded.public_url, announced_at = excluded.announced_at""",
                (owner, public_url, now),
            )
        )

    async def withdraw_address(self, *, owner: str) -> None:
        """Forget the announcement, unless another process has announced since."""
        await self._db.transact(
            lambda conn: conn.execute("DELETE FROM announced_address WHERE owner = ?", (owner,))
        )

    async def announced_address(self) -> str | None:
        row = await self._db.query(
            lambda conn: conn.execute("SELECT public_url FROM announced_address WHERE id = 1").fetchone()
        )
        return str(row[0]) if row else None
