"""PostgreSQL fixtures: one server per test session, one fresh database per test.

The server is a throwaway cluster (tests/pg_server.py), or the one whose superuser URL is in
FLUXHOOK_TEST_DATABASE_URL. A migrated template database is made once; each test's database is
a copy of it (CREATE DATABASE ... TEMPLATE, much faster than migrating again). When no server
can be had, the tests that need one fail with the reason; they are never skipped.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from storage.postgres.migrations import migrate
from tests import pg_server


@dataclass
class PostgresServer:
    admin_url: str  # a superuser's URL for a maintenance database
    template: str
    _names: Iterator[int] = field(default_factory=itertools.count)

    def url_for(self, database: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{database}"))

    def create_database(self, *, template: str | None = None) -> str:
        """A new database copied from `template` (default: the migrated one); its URL."""
        name = f"fluxhook_test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template or self.template)))
        return self.url_for(name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    given = os.environ.get("FLUXHOOK_TEST_DATABASE_URL", "")
    server = None if given else pg_server.start()
    admin_url = given or server.url  # type: ignore[union-attr]
    try:
        found = PostgresServer(admin_url=admin_url, template=f"fluxhook_template_{os.getpid()}")
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(found.template)))
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                sql.Identifier(found.template)))
        with psycopg.connect(found.url_for(found.template), autocommit=True) as conn:
            migrate(conn)
        yield found
        found.drop_database(found.url_for(found.template))
    finally:
        if server is not None:
            server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, migrated database of its own for this test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def empty_postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh database with no schema at all."""
    url = postgres_server.create_database(template="template0")
    yield url
    postgres_server.drop_database(url)
