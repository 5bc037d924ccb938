"""A local multi-replica deployment of real processes: PostgreSQL, N ``gsv-serve`` replicas, nginx.

    scripts/cluster.py up --replicas 3 --bundle BUNDLE [--port 50050] [--http-port 9880] [--state-dir D]
    scripts/cluster.py status [--state-dir D]
    scripts/cluster.py down [--state-dir D]

``up`` starts a throwaway PostgreSQL (``initdb``/``pg_ctl``; Debian's ``postgresql`` is installed
when missing), N replicas on free local ports sharing it (``--voices postgresql://...``), and nginx
(installed from Debian when missing) in front with the config of ``deploy/lb``; it prints the one
address clients use (gRPC; the HTTP doors are on ``--http-port``).  ``status`` prints JSON
``{"address": ..., "replicas": [{"address": ..., "healthy": ..., "requests_total": ...}, ...]}``
from each replica's health service and metrics.  ``down`` stops everything (replicas drain first)
and deletes the state folder; nothing is left running.  Everything listens on 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gsv.errors import GsvError, run_command
from server.lb import LbConfig, LocalNginx
from server.localpg import LocalPostgres, free_port

log = logging.getLogger(__name__)

DEFAULT_STATE = Path("/tmp/gsv-cluster")
STATE_FILE = "state.json"
READY_TIMEOUT = 600.0


def alive(pid: int | None) -> bool:
    """True while ``pid`` runs (a zombie counts as gone; one of ours is reaped)."""
    if not pid:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def health(address: str, timeout: float = 2.0) -> str:
    """grpc.health.v1 status of the server at ``address`` ("SERVING", "NOT_SERVING", "UNREACHABLE")."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        try:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def scrape(url: str, timeout: float = 2.0) -> dict[str, float] | None:
    """Sums of each metric family of a Prometheus endpoint (None if unreachable)."""
    try:
        body = urllib.request.urlopen(url, timeout=timeout).read().decode()
    except OSError:
        return None
    out: dict[str, float] = {}
    for line in body.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? ([0-9.eE+-]+|NaN)$", line)
        if m and m.group(2) != "NaN":
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


class LocalCluster:
    def __init__(self, state_dir: Path = DEFAULT_STATE):
        self.dir = Path(state_dir)
        self.state_file = self.dir / STATE_FILE

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            raise GsvError(f"no cluster is up in {self.dir} (scripts/cluster.py up ...)") from None

    @property
    def is_up(self) -> bool:
        try:
            st = self.state()
        except GsvError:
            return False
        return any(alive(r["pid"]) for r in st["replicas"]) or LocalNginx(self.dir / "lb").pid is not None

    def _save(self, st: dict) -> None:
        self.state_file.write_text(json.dumps(st, indent=2) + "\n")

    # ------------------------------------------------------------------ up
    def up(self, bundle: Path, replicas: int, *, port: int = 50050, http_port: int = 9880, threads: int | None = None,
           grace: float = 30.0, key_file: Path | None = None, serve_args: list[str] = (),
           ready_timeout: float = READY_TIMEOUT) -> dict:
        if replicas < 1:
            raise GsvError("--replicas must be >= 1")
        if not Path(bundle).is_dir():
            raise GsvError(f"--bundle {bundle}: no such bundle folder (make demo builds out/demo/voice)")
        if self.is_up:
            raise GsvError(f"a cluster is already up in {self.dir}: scripts/cluster.py down --state-dir {self.dir}")
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        os.chmod(self.dir, 0o755)  # PostgreSQL and nginx workers run as other users when we are root
        threads = threads or max(1, (os.cpu_count() or 1) // replicas)
        st = {"address": f"127.0.0.1:{port}", "http_address": f"127.0.0.1:{http_port}", "bundle": str(bundle),
              "replicas": [], "postgres": None}
        self._save(st)
        try:
            pg = LocalPostgres(data=self.dir / "pg")
            st["postgres"] = {"url": pg.start(), "data": str(pg.data), "port": pg.port}
            self._save(st)
            for i in range(replicas):
                st["replicas"].append(self._start_replica(i, bundle, pg.url, threads, grace, key_file, serve_args))
                self._save(st)
            self._wait_ready(st, ready_timeout)
            nginx = LocalNginx(self.dir / "lb")
            nginx.write(LbConfig(grpc_listen=st["address"], http_listen=st["http_address"],
                                 grpc_servers=[r["address"] for r in st["replicas"]],
                                 http_servers=[r["http_address"] for r in st["replicas"]], workers="1",
                                 prefix=nginx.prefix))
            nginx.start()
            deadline = time.monotonic() + 30
            while health(st["address"]) != "SERVING":
                if time.monotonic() > deadline:
                    raise GsvError(f"the load balancer at {st['address']} does not reach the replicas")
                time.sleep(0.1)
        except BaseException:
            self.down(keep_logs=True)
            raise
        return st

    def _start_replica(self, i: int, bundle: Path, url: str, threads: int, grace: float, key_file: Path | None,
                       serve_args) -> dict:
        port, mport, hport = free_port(), free_port(), free_port()
        logfile = self.dir / f"replica-{i}.log"
        cmd = [sys.executable, "-m", "server", "--bundle", str(bundle), "--voices", url, "--host", "127.0.0.1",
               "--port", str(port), "--metrics-port", str(mport), "--http-port", str(hport), "--threads", str(threads),
               "--grace", str(grace), *(["--voice-key-file", str(key_file)] if key_file else []), *serve_args]
        with open(logfile, "ab") as out:  # the replica keeps its own descriptor
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)  # outlives `up`; not hit by the terminal's Ctrl-C
        return {"address": f"127.0.0.1:{port}", "http_address": f"127.0.0.1:{hport}",
                "metrics": f"http://127.0.0.1:{mport}/metrics", "pid": proc.pid, "log": str(logfile)}

    def _wait_ready(self, st: dict, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for r in st["replicas"]:
            while health(r["address"], timeout=1.0) != "SERVING":
                if not alive(r["pid"]):
                    tail = Path(r["log"]).read_text(errors="replace")[-1500:]
                    raise GsvError(f"replica {r['address']} exited while starting:\n{tail}")
                if time.monotonic() > deadline:
                    raise GsvError(f"replica {r['address']} not ready after {timeout:g} s (log {r['log']})")
                time.sleep(0.2)

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        st = self.state()
        replicas = []
        for r in st["replicas"]:
            metrics = scrape(r["metrics"]) if alive(r["pid"]) else None
            replicas.append({"address": r["address"],
                             "healthy": alive(r["pid"]) and health(r["address"]) == "SERVING",
                             "requests_total": None if metrics is None else int(metrics.get("tts_requests_total", 0))})
        return {"address": st["address"], "replicas": replicas}

    # ------------------------------------------------------------------ down
    def down(self, keep_logs: bool = False, timeout: float = 60.0) -> None:
        """Stop nginx, drain and stop the replicas (SIGKILL after ``timeout``), stop PostgreSQL."""
        try:
            st = self.state()
        except GsvError:
            st = {"replicas": [], "postgres": None}
        LocalNginx(self.dir / "lb").stop()
        pids = [r["pid"] for r in st["replicas"] if alive(r["pid"])]
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            if alive(pid):
                log.warning("replica pid %d did not stop within %g s: killing it", pid, timeout)
                os.kill(pid, signal.SIGKILL)
        if st.get("postgres") or (self.dir / "pg").exists():
            try:
                LocalPostgres(data=self.dir / "pg").stop(remove=True)
            except GsvError as e:
                log.warning("stopping PostgreSQL: %s", e)
        if keep_logs:
            self.state_file.unlink(missing_ok=True)
        elif self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/cluster.py", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["up", "down", "status"])
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE, help="pids, logs, the database and nginx files")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--bundle", type=Path, help="bundle every replica serves (up)")
    p.add_argument("--port", type=int, default=50050, help="the load balancer's gRPC port")
    p.add_argument("--http-port", type=int, default=9880, help="the load balancer's HTTP/WebSocket port")
    p.add_argument("--threads", type=int, default=None, help="compute threads per replica (default: cores / replicas)")
    p.add_argument("--grace", type=float, default=30.0, help="each replica's drain grace period (seconds)")
    p.add_argument("--voice-key-file", type=Path, help="encrypt voices at rest (see gsv voice keygen)")
    p.add_argument("--serve-arg", action="append", default=[],
                   help="extra gsv-serve argument for every replica (repeatable, e.g. --serve-arg=--max-live=4)")
    p.add_argument("--keep-logs", action="store_true", help="down: keep the replicas' and nginx's logs")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    cluster = LocalCluster(args.state_dir)

    def run() -> int:
        if args.command == "up":
            if args.bundle is None:
                raise GsvError("up needs --bundle BUNDLE")
            st = cluster.up(args.bundle, args.replicas, port=args.port, http_port=args.http_port,
                            threads=args.threads, grace=args.grace, key_file=args.voice_key_file,
                            serve_args=args.serve_arg)
            log.info("%d replicas behind nginx; HTTP doors on %s; `scripts/cluster.py status` / `down`",
                     len(st["replicas"]), st["http_address"])
            print(st["address"], flush=True)
        elif args.command == "status":
            print(json.dumps(cluster.status(), indent=2))
        else:
            cluster.down(keep_logs=args.keep_logs)
        return 0

    return run_command("cluster.py", run)


if __name__ == "__main__":
    raise SystemExit(main())
