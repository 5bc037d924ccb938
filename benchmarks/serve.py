"""``gsv-bench serve``: latency and throughput of a running gsv server, measured like a game client.

    gsv-bench serve --server HOST:PORT --voice V --concurrency 1,2,4,8 --requests N --out R.json [--plot R.png]
    gsv-bench serve --compare "bundle=B1,backend=torch" "bundle=B1,backend=onnx" --ref-audio R.wav ... --out R.json
    gsv-bench serve --protocol grpc,http,openai,ws --launch "bundle=B,max-audio-seconds=6" --ref-audio R.wav ... --out R.json
    gsv-bench serve --protocol http --burst 100 --launch "bundle=B,max-live=2,max-queue=4" ... --out R.json
    gsv-bench serve --models m1,m2,m3 [--distribution zipf] --launch "models=DIR,max-resident-models=2" ... --out R.json
    gsv-bench serve --server LB_ADDRESS --replica-metrics URL1,URL2,... (or --cluster STATE_DIR) --out R.json

``--protocol`` picks the door(s): gRPC StreamingSynthesize, upstream ``/tts`` (raw PCM, streamed),
OpenAI ``/v1/audio/speech`` (``pcm``) or the WebSocket session; several doors run the same sweep
interleaved level by level and are reported with their ratios to gRPC (``ratios_vs_grpc``).  The
HTTP doors take no per-request audio cap: give the server one (``max-audio-seconds=`` in the spec).
``--burst N`` sends N requests at once and reports how fast the excess is refused and how the
admitted streams are delivered.

``--models A,B,C`` spreads the requests over several models of one server (``--distribution uniform``
or ``zipf``: model k drawn with probability proportional to 1 / k^s) and adds, per level, each model's
time to first audio and the loads/unloads the server did (its ListModels before and after).

Closed loop: at each concurrency level, that many clients each stream one request after another
until ``--requests`` requests have completed.  Open loop (``--rates``): Poisson arrivals at the given
requests per second.  Per level: time to first audio p50/p95/p99, inter-chunk gaps, underruns (a
chunk arriving after the audio received before it had finished playing), real-time factor,
aggregate audio seconds per wall second, error codes; with ``--metrics`` (or a launched server) also
the server's mean GPT batch size and tokens per second over the level.  ``--compare`` runs two server
configurations level by level, interleaved, in one run and reports ratios (B / A).  Behind a load
balancer (``--server`` = its address), ``--replica-metrics`` (or ``--cluster``, the state folder of
``scripts/cluster.py``) adds each replica's requests and audio seconds per level, and their spread.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks import doors
from clients.tts_client import StreamResult, TtsClient

TEXTS = {
    "en": ["The quick brown fox jumps over the lazy dog.", "Welcome back, traveler. The gates open at dawn.",
           "I have been waiting for you for a very long time.", "Take this sword, and may it serve you well.",
           "The market is closed today, come back tomorrow morning."],
    "zh": ["欢迎来到我们的村庄，旅行者。", "今天的天气非常好，我们去散步吧。", "这把剑是你的了，好好使用它。",
           "市场今天不开门，明天早上再来吧。", "我已经等你很久了。"],
}


def add_arguments(p) -> None:
    p.add_argument("--server", help="HOST:PORT of a running server")
    p.add_argument("--voice", default="bench", help="voice id to synthesize with")
    p.add_argument("--concurrency", default="1,2,4,8", help="closed-loop levels")
    p.add_argument("--rates", default="", help="open-loop Poisson arrival rates (requests/s), e.g. 0.5,1")
    p.add_argument("--requests", type=int, default=16, help="requests per level")
    p.add_argument("--out", required=True, help="JSON results")
    p.add_argument("--plot", help="PNG plot of the results")
    p.add_argument("--max-audio-seconds", type=float, default=None)
    p.add_argument("--lang", default="en")
    p.add_argument("--text", action="append", help="text(s) to synthesize (default: built-in game lines)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--metrics", help="server Prometheus URL (http://host:port/metrics) for server-side figures")
    p.add_argument("--token")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured requests before the first level")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="two server specs: HOST:PORT or key=value lists launched here "
                        "(bundle=DIR,backend=torch|onnx|...,max-live=N,max-queue=N,threads=N; code=CHECKOUT runs "
                        "that checkout's server, e.g. the previous commit; http=off for servers without HTTP doors)")
    p.add_argument("--protocol", default="grpc",
                   help=f"door(s), comma-separated: {', '.join(doors.PROTOCOLS)} (several: interleaved, with ratios)")
    p.add_argument("--http-server", help="base URL of the server's HTTP port (for http/openai/ws with --server)")
    p.add_argument("--launch", metavar="SPEC", help="launch one server here (same spec as --compare) and measure it")
    p.add_argument("--latency", choices=["balanced", "lowest", "quality"], default="balanced")
    p.add_argument("--burst", type=int, default=0, help="send this many requests at once (overload), per door")
    p.add_argument("--burst-baseline", type=int, default=2, help="concurrent streams measured alone before a burst")
    p.add_argument("--ref-audio", help="reference audio to register --voice on launched servers")
    p.add_argument("--ref-text")
    p.add_argument("--ref-lang")
    p.add_argument("--models", default="", help="spread requests over these model ids (comma-separated)")
    p.add_argument("--distribution", choices=["uniform", "zipf"], default="uniform",
                   help="how --models are drawn per request")
    p.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent (model k has weight 1 / k^s)")
    p.add_argument("--replica-metrics", default="",
                   help="comma-separated Prometheus URLs of the replicas behind --server (per-replica figures)")
    p.add_argument("--cluster", help="state folder of scripts/cluster.py: --server and --replica-metrics from it")


# ----------------------------------------------------------------------------------- measuring
def percentile(xs, q):
    return float(np.percentile(xs, q)) if len(xs) else None


def scrape(url: str | None) -> dict[str, float]:
    if not url:
        return {}
    try:
        body = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return {}
    out = {}
    for line in body.splitlines():
        m = re.match(r"^(tts_ar_batch_size_(?:sum|count)|tts_semantic_tokens_total|tts_audio_seconds_total|tts_decoded_audio_seconds_total) ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def summarize(results: list, errors: dict, wall: float, before: dict, after: dict) -> dict:
    ok = [r for r in results if isinstance(r, StreamResult)]
    ttfa = [r.ttfa_ms for r in ok if r.ttfa_ms is not None]
    gaps = []
    for r in ok:
        t = [c.arrival for c in r.chunks]
        gaps += [1000 * (b - a) for a, b in zip(t, t[1:])]
    audio = sum(r.audio_seconds for r in ok)
    level = {
        "requests": len(results), "ok": len(ok),
        "ttfa_ms_p50": percentile(ttfa, 50), "ttfa_ms_p95": percentile(ttfa, 95), "ttfa_ms_p99": percentile(ttfa, 99),
        "ttfa_ms_mean": float(np.mean(ttfa)) if ttfa else None,
        "inter_chunk_ms_p50": percentile(gaps, 50), "inter_chunk_ms_p95": percentile(gaps, 95),
        "inter_chunk_ms_max": max(gaps) if gaps else None,
        "underruns": sum(r.underruns() for r in ok),
        "requests_with_underrun": sum(1 for r in ok if r.underruns()),
        "rtf_mean": float(np.mean([r.total_ms / 1000 / r.audio_seconds for r in ok if r.audio_seconds])) if ok else None,
        "audio_seconds": audio, "wall_seconds": wall,
        "audio_seconds_per_second": audio / wall if wall else 0.0,
        "errors": errors,
    }
    if before and after:
        count = after.get("tts_ar_batch_size_count", 0) - before.get("tts_ar_batch_size_count", 0)
        level["server_mean_ar_batch"] = ((after.get("tts_ar_batch_size_sum", 0) - before.get("tts_ar_batch_size_sum", 0))
                                         / count) if count else None
        level["server_tokens_per_second"] = (after.get("tts_semantic_tokens_total", 0)
                                             - before.get("tts_semantic_tokens_total", 0)) / wall
        emitted = after.get("tts_audio_seconds_total", 0) - before.get("tts_audio_seconds_total", 0)
        decoded = after.get("tts_decoded_audio_seconds_total", 0) - before.get("tts_decoded_audio_seconds_total", 0)
        known = "tts_decoded_audio_seconds_total" in after  # servers before the metric: unknown, not 0
        level["decoder_overhead_ratio"] = decoded / emitted if emitted > 0 and known else None
    return level


def texts_of(args) -> list[str]:
    return args.text or TEXTS.get(args.lang, TEXTS["en"])


def model_plan(args, n: int) -> list[str]:
    """The model of each of ``n`` requests ("" everywhere without --models), drawn reproducibly."""
    models = [m for m in getattr(args, "models", "").split(",") if m]
    if not models:
        return [""] * n
    weights = [1.0 / (k + 1) ** args.zipf_s for k in range(len(models))] if args.distribution == "zipf" else None
    return random.Random(args.seed).choices(models, weights=weights, k=n)


def model_states(target) -> dict:
    """{model: (loads, unloads)} from the server's ListModels ({} when it cannot answer)."""
    try:
        with TtsClient(target, timeout=30) as c:
            return {m.model_id: (m.loads, m.unloads) for m in c.list_models().models}
    except Exception:  # noqa: BLE001 - an older server, or an HTTP-only target
        return {}


def per_model(results, plan, before: dict, after: dict) -> dict:
    """Per model: requests, ok, TTFA p50/p95, and the server's loads/unloads during the level."""
    out = {}
    for m in sorted(set(plan)):
        ok = [r for r, pm in zip(results, plan) if pm == m and isinstance(r, StreamResult)]
        ttfa = [r.ttfa_ms for r in ok if r.ttfa_ms is not None]
        b, a = before.get(m, (0, 0)), after.get(m, (0, 0))
        out[m or "default"] = {"requests": sum(pm == m for pm in plan), "ok": len(ok),
                               "ttfa_ms_p50": percentile(ttfa, 50), "ttfa_ms_p95": percentile(ttfa, 95),
                               "loads": a[0] - b[0], "unloads": a[1] - b[1]}
    return out


async def closed_loop(target, args, concurrency: int):
    door = doors.as_door(target)
    texts = texts_of(args)
    plan = model_plan(args, args.requests)
    async with doors.open_client(door, args.token) as client:
        counter = iter(range(args.requests))
        results = [None] * args.requests

        async def worker():
            for i in counter:
                results[i] = await doors.request(client, door, texts[i % len(texts)], args, i, plan[i])

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.monotonic() - t0


async def open_loop(target, args, rate: float):
    door = doors.as_door(target)
    texts = texts_of(args)
    rng = random.Random(args.seed)
    async with doors.open_client(door, args.token) as client:
        tasks = []
        t0 = time.monotonic()
        plan = model_plan(args, args.requests)
        for i in range(args.requests):
            tasks.append(asyncio.ensure_future(doors.request(client, door, texts[i % len(texts)], args, i, plan[i])))
            await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks)
        return list(results), time.monotonic() - t0


def replica_urls(args) -> list[str]:
    return [u for u in getattr(args, "replica_metrics", "").split(",") if u]


def scrape_replicas(urls: list[str]) -> list[dict[str, float] | None]:
    from server.cluster import scrape as scrape_totals

    return [scrape_totals(u) for u in urls]


def replica_figures(urls: list[str], before: list, after: list) -> dict:
    """Each replica's share of a level (requests finished, audio seconds made) and the spread of the
    audio seconds: (max - min) / mean over the replicas."""
    rows = []
    for url, b, a in zip(urls, before, after):
        if a is None or b is None:
            rows.append({"metrics": url, "requests": None, "audio_seconds": None, "voice_store_queries": None})
            continue
        delta = {k: a.get(k, 0.0) - b.get(k, 0.0) for k in ("tts_requests_total", "tts_audio_seconds_total",
                                                           "tts_voice_store_queries_total")}
        rows.append({"metrics": url, "requests": int(delta["tts_requests_total"]),
                     "audio_seconds": delta["tts_audio_seconds_total"],
                     "voice_store_queries": int(delta["tts_voice_store_queries_total"])})
    audio = [r["audio_seconds"] for r in rows if r["audio_seconds"] is not None]
    mean = sum(audio) / len(audio) if audio else 0.0
    return {"replicas": rows, "replica_audio_spread": (max(audio) - min(audio)) / mean if mean else None}


def run_level(target, args, kind: str, value, metrics_url):
    before = scrape(metrics_url)
    door = doors.as_door(target)
    grpc_target = door.address if door.protocol == "grpc" else None  # (ListModels: loads and unloads)
    multi = bool(getattr(args, "models", ""))
    states = model_states(grpc_target) if multi and grpc_target else {}
    urls = replica_urls(args)
    replicas_before = scrape_replicas(urls)
    fn = closed_loop if kind == "concurrency" else open_loop
    results, wall = asyncio.run(fn(target, args, value))
    errors: dict[str, int] = {}
    for r in results:
        if doors.is_request_error(r):
            errors[doors.error_code(r)] = errors.get(doors.error_code(r), 0) + 1
    level = summarize(results, errors, wall, before, scrape(metrics_url))
    if urls:
        level.update(replica_figures(urls, replicas_before, scrape_replicas(urls)))
    level[kind] = value
    if multi:
        after = model_states(grpc_target) if grpc_target else {}
        level["models"] = per_model(results, model_plan(args, args.requests), states, after)
    return level


# ----------------------------------------------------------------------------------- launching
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class LaunchedServer:
    """A gsv-serve subprocess for --compare specs like ``bundle=DIR,backend=onnx,max-live=8``."""

    def __init__(self, spec: str, args):
        opts = dict(kv.split("=", 1) for kv in spec.split(","))
        if not {"bundle", "bundles", "models"} & set(opts):
            raise SystemExit(f"gsv-bench: error: server spec {spec!r} needs bundle=DIR, bundles=A|B or models=DIR")
        self.port, self.mport, self.hport = _free_port(), _free_port(), _free_port()
        self.voices = tempfile.mkdtemp(prefix="gsv-bench-voices-")
        # code=DIR: run the server from another checkout (a previous commit, for before/after in one run);
        # http=off: no HTTP doors (servers older than them have no --http-port)
        code, http = opts.pop("code", None), opts.pop("http", "on") != "off"
        bundles = ([opts.pop("bundle")] if "bundle" in opts else []) + [b for b in opts.pop("bundles", "").split("|") if b]
        cmd = [sys.executable, "-m", "server", *(a for b in bundles for a in ("--bundle", b)), "--voices", self.voices,
               "--port", str(self.port), "--metrics-port", str(self.mport), "--host", "localhost"]
        if http:
            cmd += ["--http-port", str(self.hport), "--http-host", "127.0.0.1", "--no-playground"]
        for k, v in opts.items():
            cmd += [f"--{k}", v]
        env = dict(os.environ, PYTHONPATH=str(Path(code).resolve())) if code else None
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                                     cwd=str(Path(code).resolve()) if code else None)
        self.target = f"localhost:{self.port}"
        self.metrics = f"http://localhost:{self.mport}/metrics"
        self.http = f"http://127.0.0.1:{self.hport}"
        self.spec = spec
        with TtsClient(self.target, token=args.token, timeout=600) as c:
            c.wait_ready(600)
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            stub = health_pb2_grpc.HealthStub(c.channel)
            deadline = time.time() + 600
            while stub.Check(health_pb2.HealthCheckRequest()).status != health_pb2.HealthCheckResponse.SERVING:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"gsv-bench: error: server {spec!r} did not become ready")
                time.sleep(0.2)
            if args.ref_audio:
                c.register_voice(args.voice, Path(args.ref_audio).read_bytes(), args.ref_text, args.ref_lang,
                                 consent="benchmark reference voice")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ----------------------------------------------------------------------------------- main
def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}


def sweep(servers: list[tuple[str, str, str | None]], args) -> dict[str, tuple[list, list]]:
    """Run every level on every server ``(label, target, metrics_url)``, interleaved level by level
    (A B, then B A at the next level, ...), so drift of a shared machine hits both alike."""
    if args.warmup:
        warm = argparse.Namespace(**dict(vars(args), requests=args.warmup))  # --warmup requests, one at a time
        for _, target, _ in servers:
            asyncio.run(closed_loop(target, warm, 1))
    out = {label: ([], []) for label, _, _ in servers}
    steps = [("concurrency", int(x)) for x in args.concurrency.split(",") if x]
    steps += [("rate", float(r)) for r in args.rates.split(",") if r]
    for i, (kind, value) in enumerate(steps):
        for label, target, metrics_url in (servers if i % 2 == 0 else servers[::-1]):
            lv = run_level(target, args, kind, value, metrics_url)
            print(f"[{label}] {kind} {value}: ttfa p50 {lv['ttfa_ms_p50']} ms, {lv['audio_seconds_per_second']:.2f} "
                  f"audio s/s, underruns {lv['underruns']}, errors {lv['errors']}", file=sys.stderr)
            out[label][0 if kind == "concurrency" else 1].append(lv)
    return out


def run(args) -> int:
    if args.cluster:  # a local cluster's state: the balancer's address and every replica's metrics
        state = json.loads((Path(args.cluster) / "state.json").read_text())
        args.server = args.server or state["address"]
        args.replica_metrics = args.replica_metrics or ",".join(r["metrics"] for r in state["replicas"])
    report = {"benchmark": "serve", "machine": machine(), "requests_per_level": args.requests,
              "max_audio_seconds": args.max_audio_seconds, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.compare:
        servers = [LaunchedServer(s, args) if "=" in s else None for s in args.compare]
        targets = [s.target if s else spec for s, spec in zip(servers, args.compare)]
        metrics = [s.metrics if s else None for s in servers]
        try:
            runs = sweep(list(zip(("A", "B"), targets, metrics)), args)
        finally:
            for s in servers:
                if s:
                    s.stop()
        report["A"] = {"server": args.compare[0], "levels": runs["A"][0], "poisson": runs["A"][1]}
        report["B"] = {"server": args.compare[1], "levels": runs["B"][0], "poisson": runs["B"][1]}
        ratios = []
        for a, b in zip(runs["A"][0], runs["B"][0]):
            r = {"concurrency": a["concurrency"]}
            for k in ("ttfa_ms_p50", "ttfa_ms_p95", "audio_seconds_per_second", "rtf_mean"):
                r[f"{k}_B_over_A"] = (b[k] / a[k]) if a.get(k) and b.get(k) is not None else None
            ratios.append(r)
        report["ratios"] = ratios
        report["levels"] = runs["A"][0]
    else:
        if not (args.server or args.launch):
            print("gsv-bench: error: give --server HOST:PORT, --launch SPEC or --compare A B", file=sys.stderr)
            return 2
        protocols = [p for p in args.protocol.split(",") if p]
        unknown = set(protocols) - set(doors.PROTOCOLS)
        if unknown or not protocols:
            print(f"gsv-bench: error: --protocol takes {', '.join(doors.PROTOCOLS)}", file=sys.stderr)
            return 2
        launched = LaunchedServer(args.launch, args) if args.launch else None
        try:
            grpc_target = launched.target if launched else args.server
            http_base = launched.http if launched else args.http_server
            if any(p != "grpc" for p in protocols) and not http_base:
                print("gsv-bench: error: the HTTP doors need --http-server URL (or --launch)", file=sys.stderr)
                return 2
            metrics = launched.metrics if launched else args.metrics
            targets = {p: doors.Door(p, grpc_target if p == "grpc" else http_base) for p in protocols}
            report["server"] = args.launch or args.server
            if args.burst:
                report["burst"] = {p: asyncio.run(doors.burst(d, args, texts_of(args), args.burst, args.burst_baseline))
                                   for p, d in targets.items()}
                report["levels"] = []
            else:
                runs = sweep([(p, d, metrics) for p, d in targets.items()], args)
                report["protocols"] = {p: {"levels": runs[p][0], "poisson": runs[p][1]} for p in protocols}
                report["levels"], report["poisson"] = runs[protocols[0]]
                if "grpc" in protocols and len(protocols) > 1:
                    report["ratios_vs_grpc"] = doors.ratios_vs_grpc({p: runs[p][0] for p in protocols})
                    report["summary_vs_grpc"] = doors.summary_vs_grpc({p: runs[p][0] for p in protocols})
        finally:
            if launched:
                launched.stop()
    Path(args.out).write_text(json.dumps(report, indent=2))
    if args.plot and report["levels"]:
        plot(report, args.plot)
    print(json.dumps({"out": args.out, "burst": report.get("burst"), "summary_vs_grpc": report.get("summary_vs_grpc"),
                      "levels": [
        {k: lv[k] for k in ("concurrency", "ttfa_ms_p50", "ttfa_ms_p95", "ttfa_ms_p99", "audio_seconds_per_second",
                            "underruns", "errors")} for lv in report["levels"]]}))
    return 0


def plot(report: dict, path: str, extra_panels=()) -> None:
    """The three serving panels; ``extra_panels``: callables ``draw(ax)`` appended on the right
    (the demo adds its voice-quality panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "A" in report:
        series = [("A", report["A"]["levels"]), ("B", report["B"]["levels"])]
    elif "protocols" in report:
        series = [(p, v["levels"]) for p, v in report["protocols"].items()]
    else:
        series = [("server", report["levels"])]
    fig, axes = plt.subplots(1, 3 + len(extra_panels), figsize=(14 + 4.7 * len(extra_panels), 4))
    width = 0.8 / len(series)
    for i, (label, levels) in enumerate(series):
        c = [lv["concurrency"] for lv in levels]
        axes[0].plot(c, [lv["ttfa_ms_p50"] or 0 for lv in levels], "o-", label=f"{label} p50")
        axes[0].plot(c, [lv["ttfa_ms_p95"] or 0 for lv in levels], "s--", label=f"{label} p95")
        axes[1].plot(c, [lv["audio_seconds_per_second"] for lv in levels], "o-", label=label)
        axes[2].bar([x + i * width for x in range(len(c))], [lv["underruns"] for lv in levels], width=width,
                    label=label)
        axes[2].set_xticks(range(len(c)), [str(x) for x in c])
    axes[0].set(title="time to first audio", xlabel="concurrent streams", ylabel="ms")
    axes[1].set(title="throughput", xlabel="concurrent streams", ylabel="audio seconds / wall second")
    axes[2].set(title="underruns", xlabel="concurrent streams", ylabel="count")
    for ax in axes[:3]:
        ax.grid(alpha=0.3)
        ax.legend()
    for ax, draw in zip(axes[3:], extra_panels):
        draw(ax)
    fig.suptitle(f"gsv serve benchmark — {report['machine']['processor']}, {report['machine']['cpus']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
