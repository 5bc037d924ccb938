"""A throwaway local PostgreSQL server (``initdb`` + ``pg_ctl``) for tests and the local cluster.

Debian's ``postgresql`` package is installed with apt-get when no PostgreSQL binaries are found
(as root; otherwise the error says what to install).  PostgreSQL refuses to run as root, so as
root the server runs as the ``postgres`` system user, in a data folder under /tmp that user owns.
It listens on 127.0.0.1 only, trusts local connections (it holds test data and nothing else) and
skips fsync.  :meth:`LocalPostgres.stop` stops it and, with ``remove``, deletes its data.
"""
from __future__ import annotations

import glob
import logging
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from gsv.errors import GsvError

log = logging.getLogger(__name__)

DB_USER = "gsv"
DB_NAME = "gsv"
RUN_AS = "postgres"  # the system user PostgreSQL runs as when this process is root


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free 127.0.0.1 TCP port below the kernel's ephemeral range: a server that binds it seconds
    later (after loading a model) cannot find it taken by some outgoing connection's source port."""
    low, _ = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(10000, max(10001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # (a crowded machine: any free port)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apt_install(*packages: str) -> None:
    """Install Debian packages (root only), after an apt-get update."""
    if os.geteuid() != 0:
        raise GsvError(f"{' '.join(packages)} not found; install it (apt-get install {' '.join(packages)})")
    log.info("installing %s with apt-get", " ".join(packages))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode:
            raise GsvError(f"{' '.join(cmd)} failed: {r.stderr.strip()[-500:]}")


def pg_bin(install: bool = True) -> Path:
    """The folder of PostgreSQL's server binaries (initdb, pg_ctl)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if versions:
        return Path(versions[-1]).parent
    if not install:
        raise GsvError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    apt_install("postgresql")
    return pg_bin(install=False)


class LocalPostgres:
    def __init__(self, port: int | None = None, data: Path | None = None):
        self.bin = pg_bin()
        self.port = port or free_port()
        self.user = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam(RUN_AS)
            except KeyError:
                raise GsvError(f"running as root, PostgreSQL needs the {RUN_AS!r} system user (Debian's "
                               "postgresql package creates it)") from None
        self.data = Path(data) if data else Path(tempfile.mkdtemp(prefix="gsv-pg-", dir="/tmp"))
        self.url = f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        kw = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []} if self.user else {}
        r = subprocess.run([str(self.bin / args[0]), *args[1:]], cwd="/tmp", stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, **kw)
        if check and r.returncode:
            raise GsvError(f"{args[0]} failed: {r.stdout.strip()[-800:]}")
        return r

    @property
    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def start(self) -> str:
        """Initialise (first time), start and wait until it accepts connections; returns the URL."""
        first = not self.initialised
        if first:
            self.data.mkdir(parents=True, exist_ok=True)
            if self.user:
                os.chown(self.data, self.user.pw_uid, self.user.pw_gid)
            os.chmod(self.data, 0o700)
            self._run("initdb", "-D", str(self.data), "-U", DB_USER, "--auth=trust", "--encoding=UTF8",
                      "--no-locale", "--no-sync")
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"), "-w", "-t", "60", "-o", opts,
                  "start")
        if first:
            self._create_database()
        return self.url

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://{DB_USER}@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DB_NAME}")

    @property
    def running(self) -> bool:
        return self.initialised and self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def stop(self, remove: bool = False) -> None:
        """Stop (fast shutdown: clients are disconnected); ``remove`` deletes the data folder too."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        if remove:
            shutil.rmtree(self.data, ignore_errors=True)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.data / "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""
