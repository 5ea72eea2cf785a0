"""Opening the database: the one place service/ names a backend's address and its rules."""

from __future__ import annotations

from service.contracts import Stores
from service.rules import JOB_RULES
from service.settings import Settings
from storage import open_database, sqlite_url


async def open_stores(settings: Settings, *, public_url: str = "") -> Stores:
    """Open (and migrate) the database the settings name, with the core's rules."""
    return await open_database(
        settings.database_url or sqlite_url(settings.db_path), rules=JOB_RULES, public_url=public_url,
        synchronous=settings.sqlite_synchronous, pool_size=settings.database_pool_size,
    )
