"""A throwaway local PostgreSQL server for tests and benchmarks (datasette's idea of
keeping fixture builders in the package).

`temporary_postgres()` runs Debian's `initdb` + `pg_ctl` in a fresh temp dir, listening
on 127.0.0.1 on a free port only, and yields a `postgresql://` URL; the server and its
data are removed on exit. PostgreSQL refuses to run as root, so under root the server
runs as the unprivileged `postgres` (or `nobody`) account via `runuser`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.ports import free_port

PG_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/usr/pgsql-*/bin")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binary here, or it cannot be started; str() says why."""


def find_pg_bin() -> Path | None:
    """The folder holding initdb/pg_ctl (newest version first), or None."""
    candidates: list[Path] = []
    for pattern in PG_BIN_GLOBS:
        candidates += [Path(p) for p in glob.glob(pattern)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    candidates = [c for c in candidates if (c / "initdb").exists() and (c / "pg_ctl").exists()]
    return sorted(candidates, reverse=True)[0] if candidates else None


def _server_user() -> str | None:
    """None when we may run postgres ourselves; else an unprivileged account to run it as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and no unprivileged 'postgres' or 'nobody' account exists")


def _run(cmd: list[str], user: str | None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    if user is not None:
        # /usr/sbin is not on every PATH (e.g. a minimal CI environment).
        runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
        if runuser is None:
            raise PostgresUnavailable("running as root but `runuser` is missing")
        cmd = [runuser, "-u", user, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")


@contextmanager
def temporary_postgres(dbname: str = "workbench") -> Iterator[str]:
    """Start a private PostgreSQL on 127.0.0.1:<free port>; yield its URL; stop and delete it."""
    pg_bin = find_pg_bin()
    if pg_bin is None:
        raise PostgresUnavailable("no PostgreSQL server binary (initdb/pg_ctl) found; install `postgresql`")
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="wb-pg-"))
    data = root / "data"
    started = False
    try:
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        role = user or pwd.getpwuid(os.geteuid()).pw_name
        init = _run([str(pg_bin / "initdb"), "-D", str(data), "-U", role, "--auth=trust", "-E", "UTF8",
                     "--locale=C", "--no-sync"], user)
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {init.stderr.strip()[-500:]}")
        port = free_port()
        opts = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
                "-c fsync=off -c full_page_writes=off -c max_connections=50")
        start = _run([str(pg_bin / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w",
                      "-t", "60", "start"], user)
        if start.returncode != 0:
            log = (root / "log").read_text(errors="replace")[-800:] if (root / "log").exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed: {start.stderr.strip()[-300:]} {log}")
        started = True
        url = f"postgresql://{role}@127.0.0.1:{port}"
        yield create_database(f"{url}/postgres", dbname)
    finally:
        if started:
            _run([str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], user, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_or_skip(dbname: str = "workbench") -> Iterator[str]:
    """temporary_postgres for a test or fixture: pytest.skip when no server binary is installed or it cannot start."""
    import pytest

    if find_pg_bin() is None:
        pytest.skip("no PostgreSQL server binary (initdb/pg_ctl) installed; `bash .ci/install --test` installs it")
    try:
        with temporary_postgres(dbname) as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL could not start: {exc}")


def create_database(url: str, dbname: str) -> str:
    """Create database `dbname` on the server of `url` (any database there); return its URL."""
    import psycopg

    if not dbname.replace("_", "").isalnum():
        raise ValueError(f"database name must be alphanumeric: {dbname!r}")
    server = url.rsplit("/", 1)[0]
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{dbname}"')
            return f"{server}/{dbname}"
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
