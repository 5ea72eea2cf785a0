"""A throwaway PostgreSQL cluster for the tests (and bench/notify.py): initdb in a temp
directory, started on a free loopback port with its unix socket in that directory, trust
authentication, stopped and removed at the end. For the tests it skips fsync (nothing in it
needs to survive a power cut); `durable=True` keeps PostgreSQL's defaults (fsync, synchronous
commit), as a deployment would, for figures that compare with SQLite's `synchronous=FULL`.

PostgreSQL refuses to run as root, and CI runs as root: then the cluster belongs to the
`postgres` system user that Debian's package creates (or `nobody`), and initdb and pg_ctl run
through `runuser`. Missing server programs are an error that says how to install them
(`scripts/postgres.sh`, which `make test` runs), never a skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "postgres"


class ServerUnavailable(RuntimeError):
    pass


@dataclass
class Server:
    root: Path
    port: int
    bindir: Path
    owner: str | None  # the user the cluster runs as when we are root

    @property
    def url(self) -> str:
        """A superuser URL over loopback TCP, for the maintenance database `postgres`."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        try:
            _run_as(self.owner, [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.root / "data"),
                                 "-m", "immediate", "-w"], cwd=self.root)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def server_bindir() -> Path:
    """Where initdb and pg_ctl are: Debian keeps them off PATH, under /usr/lib/postgresql/N/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise ServerUnavailable(
        "PostgreSQL's server programs (initdb, pg_ctl) are not installed: run scripts/postgres.sh "
        "(as root it installs Debian's postgresql package; `make test` runs it), or set "
        "FLUXHOOK_TEST_DATABASE_URL to a server's superuser URL"
    )


def start(*, durable: bool = False) -> Server:
    bindir = server_bindir()
    owner = _cluster_owner()
    root = Path(tempfile.mkdtemp(prefix="fluxhook-pg-"))
    try:
        if owner is not None:
            account = pwd.getpwnam(owner)
            os.chown(root, account.pw_uid, account.pw_gid)
        _run_as(owner, [str(bindir / "initdb"), "-D", str(root / "data"), "-U", SUPERUSER,
                        "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"], cwd=root)
        port = _free_port()
        options = " ".join([
            "-c listen_addresses=127.0.0.1", f"-p {port}", f"-c unix_socket_directories={root}",
            *([] if durable else ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]),
            "-c max_connections=300", "-c shared_buffers=32MB", "-c dynamic_shared_memory_type=mmap",
        ])
        _run_as(owner, [str(bindir / "pg_ctl"), "start", "-D", str(root / "data"), "-w", "-t", "60",
                        "-l", str(root / "server.log"), "-o", options], cwd=root)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return Server(root=root, port=port, bindir=bindir, owner=owner)


def _cluster_owner() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise ServerUnavailable("running as root, and neither a postgres nor a nobody user to run PostgreSQL as")


def _run_as(owner: str | None, command: list[str], *, cwd: Path) -> None:
    program = Path(command[0]).name
    if owner is not None:
        command = ["runuser", "-u", owner, "--", *command]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log = cwd / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise ServerUnavailable(
            f"{program} failed ({done.returncode}): "
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}{tail}"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _version(path: str) -> tuple[int, ...]:
    number = Path(path).parent.parent.name
    return tuple(int(part) for part in number.split(".") if part.isdigit())
