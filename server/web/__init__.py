"""The HTTP and WebSocket doors of ``gsv-serve`` (``--http-port``): a Starlette app on uvicorn,
running on the server's own event loop beside gRPC, over the same engine and the same shared
request path (:mod:`server.frontdoor`).

Routes (every API route needs the bearer token when ``--tokens`` is given):

* ``GET|POST /tts`` (and ``POST /``) — upstream GPT-SoVITS ``api_v2.py`` (:mod:`server.web.upstream`),
  ``GET /speakers`` for SillyTavern, and upstream's ``/set_gpt_weights``, ``/set_sovits_weights``,
  ``/set_refer_audio`` and ``/control``, refused with what to do instead;
* ``POST /v1/audio/speech``, ``GET /v1/models``, ``GET /v1/audio/voices`` — OpenAI
  (:mod:`server.web.openai`);
* ``/v1/ws/synthesize`` — the WebSocket session (:mod:`server.web.websocket`);
* ``GET /healthz`` — 200 when serving, 503 while starting or draining (no auth: for load balancers);
* ``GET /`` — the browser playground (static files without auth: they hold no data; the page asks
  for the token), unless ``--no-playground``.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from server.errors import Code, RequestError
from server.frontdoor import FrontDoor
from server.web.common import OPENAI, UPSTREAM, error_response, install_log_filter
from server.web.openai import OpenAIDoor
from server.web.upstream import UpstreamDoor
from server.web.websocket import MAX_MESSAGE_BYTES, WebSocketDoor

log = logging.getLogger(__name__)

PLAYGROUND = Path(__file__).parent / "playground"
CONTROL_PATHS = ("/set_gpt_weights", "/set_sovits_weights", "/set_refer_audio", "/control")
_STATUS_CODE = {404: Code.NOT_FOUND, 405: Code.INVALID_ARGUMENT}


def build_app(state) -> Starlette:
    door = FrontDoor(state)
    upstream, openai, ws = UpstreamDoor(state, door), OpenAIDoor(state, door), WebSocketDoor(state, door)

    async def healthz(request):
        a = state.admission
        status = "draining" if a.draining else ("serving" if a.ready else "starting")
        return JSONResponse({"status": status}, status_code=200 if status == "serving" else 503)

    async def not_routed(request, exc: HTTPException):
        """Unknown paths and methods, in the shape of the door the path belongs to."""
        style = OPENAI if request.url.path.startswith("/v1/") else UPSTREAM
        code = _STATUS_CODE.get(exc.status_code, Code.INVALID_ARGUMENT)
        response = error_response(style, RequestError(code, f"{request.method} {request.url.path}: {exc.detail}"))
        response.status_code = exc.status_code
        response.headers.update(exc.headers or {})  # (405: Allow)
        return response

    routes = [Route("/tts", upstream.tts, methods=["GET", "POST"]),
              Route("/", upstream.tts, methods=["POST"]),  # SillyTavern's GPT-SoVITS provider posts to /
              Route("/speakers", upstream.speakers, methods=["GET"]),
              *(Route(p, upstream.control, methods=["GET", "POST"]) for p in CONTROL_PATHS),
              Route("/v1/audio/speech", openai.speech, methods=["POST"]),
              Route("/v1/models", openai.models, methods=["GET"]),
              Route("/v1/models/{model:path}", openai.models, methods=["GET"]),
              Route("/v1/audio/voices", openai.voices, methods=["GET"]),
              WebSocketRoute("/v1/ws/synthesize", ws.synthesize),
              Route("/healthz", healthz, methods=["GET"])]
    if state.config.playground:
        routes += [Route("/", lambda request: FileResponse(PLAYGROUND / "index.html"), methods=["GET"]),
                   Mount("/playground", StaticFiles(directory=PLAYGROUND), name="playground")]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_routed})


def _bind(host: str, port: int) -> socket.socket:
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio disables Nagle's algorithm (TCP_NODELAY) only on sockets that
    # say they are TCP, and without it every response waited ~40 ms for the client's delayed ACK
    # between its header and body writes
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and host == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too, like gRPC's [::]
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} (HTTP): {e.strerror or e}") from None
    return sock


class HttpServer:
    """uvicorn on the running event loop: :meth:`start` binds and serves, :meth:`stop` closes the
    listener, lets open responses finish for ``grace`` seconds and cancels the rest."""

    def __init__(self, state):
        import uvicorn

        cfg = state.config
        self.config = uvicorn.Config(
            build_app(state), lifespan="off", log_config=None, access_log=False, ws="websockets-sansio",
            ws_max_size=MAX_MESSAGE_BYTES, server_header=False,
            ssl_certfile=str(cfg.tls_cert) if cfg.tls_cert else None,
            ssl_keyfile=str(cfg.tls_key) if cfg.tls_key else None)
        self.server = uvicorn.Server(self.config)
        self.host, self.port = cfg.http_bind_host, cfg.http_port
        self._sock: socket.socket | None = None
        self._ticks: asyncio.Future | None = None

    async def start(self) -> int:
        install_log_filter()
        self.config.load()
        self.server.lifespan = self.config.lifespan_class(self.config)
        self._sock = _bind(self.host, self.port)
        await self.server.startup(sockets=[self._sock])
        self._ticks = asyncio.ensure_future(self.server.main_loop())  # Date header, exit flag
        port = self._sock.getsockname()[1]
        log.info("HTTP/WebSocket on port %d", port)
        return port

    async def stop(self, grace: float = 2.0) -> None:
        if self._ticks is None:
            return
        self.config.timeout_graceful_shutdown = grace
        self.server.should_exit = True
        await self._ticks
        await self.server.shutdown(sockets=[self._sock])
