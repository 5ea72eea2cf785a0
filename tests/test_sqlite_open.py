"""Opening the SQLite database: processes started together on a new data directory all open it,
and one that cannot open it says so and exits, rather than hanging on the connection's thread."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

OPEN = """
import sys, anyio
from pathlib import Path
from service.rules import JOB_RULES
from storage.sqlite.database import Database

async def main():
    db = await Database.open(Path(sys.argv[1]), rules=JOB_RULES)
    await db.close()

anyio.run(main)
"""


def test_two_processes_opening_a_new_database_at_once_both_open_it(tmp_path: Path):
    """Switching a new file to WAL takes a lock SQLite does not wait for while another process
    opens the same file: "database is locked" at once, whatever the busy timeout. Racing pairs
    of processes failed on the first pair before `_configure` tried again."""
    for pair in range(5):
        path = tmp_path / f"pair{pair}" / "fluxhook.db"
        path.parent.mkdir()
        both = [subprocess.Popen([sys.executable, "-c", OPEN, str(path)], cwd=ROOT, stderr=subprocess.PIPE)
                for _ in range(2)]
        for process in both:
            _, err = process.communicate(timeout=60)
            assert process.returncode == 0, err.decode()[-2000:]


def test_a_process_that_cannot_open_its_database_says_so_and_exits(tmp_path: Path):
    (tmp_path / "fluxhook.db").write_bytes(b"not a database, " * 512)
    done = subprocess.run([sys.executable, "-m", "service.cli", "tick"], cwd=ROOT, capture_output=True,
                          env={**os.environ, "FLUXHOOK_DATA_DIR": str(tmp_path)}, timeout=30)
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    assert b"FLUXHOOK_DATA_DIR: cannot open database: file is not a database" in done.stderr
