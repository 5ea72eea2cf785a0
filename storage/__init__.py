"""Storage: the database behind its stores, and the blob store.

`open_database(url, ...)` chooses the backend from the URL and returns the database object with
its stores (service/contracts.py `Stores` is the contract every backend implements):

- `sqlite:///absolute/path.db`, `sqlite:relative/path.db` or a bare path: storage/sqlite/.
- `postgresql://user:password@host:port/dbname` (or `postgres://`): storage/postgres/.

Both run the same stores (storage/sql/) over the same numbered migrations.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage.postgres.database import Database as PostgresDatabase
    from storage.rules import JobRules
    from storage.sqlite.database import Database


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


async def open_database(
    url: str, *, rules: JobRules, public_url: str = "", synchronous: str = "FULL", pool_size: int = 10
) -> Database | PostgresDatabase:
    """Open (and migrate) the database `url` names. `synchronous` is SQLite's PRAGMA;
    `pool_size` is how many connections PostgreSQL's pool holds."""
    scheme, _, rest = url.partition(":")
    if scheme in ("postgresql", "postgres"):
        from storage.postgres.database import Database as PostgresDatabase

        database = await PostgresDatabase.open(url, pool_size=pool_size, rules=rules, public_url=public_url)
        try:
            await database.migrate()
        except BaseException:
            await database.close()
            raise
        return database
    if not rest or len(scheme) == 1:  # a bare path (a Windows drive letter included)
        scheme, rest = "sqlite", url
    if scheme != "sqlite":
        raise ValueError(f"no storage backend for a {scheme}: database URL")
    path = rest[2:] if rest.startswith("//") else rest
    from storage.sqlite.database import Database  # the backend's modules load only when chosen

    return await Database.open(Path(path), rules=rules, public_url=public_url, synchronous=synchronous)
