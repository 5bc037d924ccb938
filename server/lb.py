"""The nginx load balancer in front of gsv-serve replicas: rendering ``deploy/lb/nginx.conf.template``
and running nginx as a local process (for scripts/cluster.py and the tests).

    python -m server.lb --k8s            # the Kubernetes rendering (deploy/k8s/base/lb/nginx.conf)
    python -m server.lb --grpc-server 127.0.0.1:50061 --grpc-server ... --http-server ... [--listen ...]

One template serves both: locally the replicas are listed by address; in Kubernetes the upstream
is the replicas' headless Service, re-resolved every few seconds (``resolve``, nginx >= 1.27.3) so
every pod is a peer of its own and scaling needs no reload.
"""
from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from gsv.errors import GsvError

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "deploy" / "lb" / "nginx.conf.template"
K8S_RENDERED = REPO / "deploy" / "k8s" / "base" / "lb" / "nginx.conf"
PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
MAX_FAILS = "max_fails=1 fail_timeout=3s"
STREAM_TIMEOUT = "3600s"

# Kubernetes names (deploy/k8s/base): the replicas' headless Service and the ports of gsv-serve
K8S_REPLICAS = "gsv-serve-replicas.gsv.svc.cluster.local"
GRPC_PORT, HTTP_PORT, METRICS_PORT = 50051, 9880, 9090
LB_GRPC_PORT, LB_HTTP_PORT = 50051, 8080


@dataclass(frozen=True)
class LbConfig:
    grpc_listen: str
    http_listen: str
    grpc_servers: list[str]
    http_servers: list[str]
    workers: str = "auto"
    prefix: Path | None = None  # local: pid, logs and temp files here; None: nginx's own (a container)
    resolver: str | None = None  # DNS server to re-resolve hostnames with (Kubernetes)
    main: list[str] = field(default_factory=list)  # extra main-context directives


def render(cfg: LbConfig) -> str:
    template = TEMPLATE.read_text()
    resolve = " resolve" if cfg.resolver else ""
    if cfg.prefix is not None:
        p = cfg.prefix
        main = [f"pid {p / 'nginx.pid'};", f"error_log {p / 'error.log'} warn;"]
        paths = "\n".join(f"    {name}_temp_path {p / 'tmp' / name};"
                          for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        access = str(p / "access.log")
    else:
        main, paths, access = ["error_log /dev/stderr warn;"], "", "/dev/stdout"
    values = {
        "MAIN": "\n".join(main + list(cfg.main)),
        "WORKERS": cfg.workers,
        "PATHS": paths,
        "ACCESS_LOG": access,
        "RESOLVER": f"    resolver {cfg.resolver} valid=5s ipv6=off;" if cfg.resolver else "",
        "GRPC_SERVERS": "\n".join(f"        server {s}{resolve} {MAX_FAILS};" for s in cfg.grpc_servers),
        "HTTP_SERVERS": "\n".join(f"        server {s}{resolve} {MAX_FAILS};" for s in cfg.http_servers),
        "GRPC_LISTEN": cfg.grpc_listen,
        "HTTP_LISTEN": cfg.http_listen,
        "STREAM_TIMEOUT": STREAM_TIMEOUT,
    }
    missing = set(PLACEHOLDER.findall(template)) - set(values)
    if missing:
        raise GsvError(f"{TEMPLATE}: no value for {sorted(missing)}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def k8s_config() -> LbConfig:
    """The rendering used by deploy/k8s (nginx in its own pod, replicas behind a headless Service)."""
    return LbConfig(grpc_listen=str(LB_GRPC_PORT), http_listen=str(LB_HTTP_PORT),
                    grpc_servers=[f"{K8S_REPLICAS}:{GRPC_PORT}"], http_servers=[f"{K8S_REPLICAS}:{HTTP_PORT}"],
                    resolver="kube-dns.kube-system.svc.cluster.local")


# ------------------------------------------------------------------------------------------ process
def nginx_binary(install: bool = True) -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found:
        return found
    if not install:
        raise GsvError("nginx not found")
    from server.localpg import apt_install

    apt_install("nginx")
    return nginx_binary(install=False)


class LocalNginx:
    """nginx as a local daemon (pid file, logs and temp files under ``prefix``)."""

    def __init__(self, prefix: Path):
        self.prefix = Path(prefix)
        self.conf = self.prefix / "nginx.conf"
        self.pid_file = self.prefix / "nginx.pid"

    def write(self, cfg: LbConfig) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        tmp = self.prefix / "tmp"
        tmp.mkdir(exist_ok=True)
        user = None
        if os.geteuid() == 0:  # workers run as nobody: they must reach their temp folders
            user = pwd.getpwnam("nobody")
            cfg = LbConfig(**{**cfg.__dict__, "main": [*cfg.main, "user nobody nogroup;"]})
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp / name).mkdir(exist_ok=True)
            if user:
                os.chown(tmp / name, user.pw_uid, user.pw_gid)
        self.conf.write_text(render(cfg))

    def _run(self, *args: str) -> None:
        r = subprocess.run([nginx_binary(), "-p", str(self.prefix), "-c", str(self.conf), *args],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode:
            raise GsvError(f"nginx {' '.join(args) or 'start'} failed: {r.stdout.strip()[-800:]}")

    def start(self) -> None:
        self._run("-t", "-q")  # refuse a broken config before anything starts
        self._run()  # daemonises; the master's pid lands in the pid file

    @property
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 10.0) -> None:
        pid = self.pid
        if pid is None:
            return
        os.kill(pid, signal.SIGQUIT)  # graceful: finish the calls in progress
        deadline = time.monotonic() + timeout
        while self.pid is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.pid is not None:
            os.kill(pid, signal.SIGTERM)
            while self.pid is not None and time.monotonic() < deadline + 5:
                time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.lb", description="render the gsv nginx load-balancer config")
    p.add_argument("--k8s", action="store_true", help="the Kubernetes rendering (deploy/k8s/base/lb/nginx.conf)")
    p.add_argument("--grpc-server", action="append", default=[], help="HOST:PORT of a replica's gRPC port")
    p.add_argument("--http-server", action="append", default=[], help="HOST:PORT of a replica's HTTP port")
    p.add_argument("--grpc-listen", default="127.0.0.1:50050")
    p.add_argument("--http-listen", default="127.0.0.1:8080")
    p.add_argument("--prefix", type=Path, help="folder of pid, logs and temp files")
    args = p.parse_args(argv)
    if args.k8s:
        cfg = k8s_config()
    elif args.grpc_server:
        cfg = LbConfig(args.grpc_listen, args.http_listen, args.grpc_server, args.http_server or args.grpc_server,
                       prefix=args.prefix)
    else:
        p.error("give --k8s or at least one --grpc-server")
    sys.stdout.write(render(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
