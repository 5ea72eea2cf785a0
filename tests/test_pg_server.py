"""The throwaway PostgreSQL server the tests start: never as root, and never silently absent."""

from __future__ import annotations

import os

import psycopg
import pytest

from tests import pg_server


def test_missing_server_programs_fail_and_say_how_to_install_them(monkeypatch):
    monkeypatch.setattr(pg_server.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(pg_server.shutil, "which", lambda name: None)
    with pytest.raises(pg_server.ServerUnavailable, match=r"scripts/postgres\.sh"):
        pg_server.start()


@pytest.mark.e2e
def test_a_started_server_runs_as_a_non_root_user_and_is_gone_once_stopped():
    server = pg_server.start()
    try:
        with psycopg.connect(server.url) as conn:
            data_dir = conn.execute("SELECT current_setting('data_directory')").fetchone()[0]
        owner = os.stat(data_dir).st_uid
        if os.geteuid() == 0:  # CI: PostgreSQL refuses root, so the cluster is another user's
            assert owner != 0
        else:
            assert owner == os.geteuid()
    finally:
        server.stop()
    assert not server.root.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.url, connect_timeout=5).close()
