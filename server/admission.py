"""Authentication and admission, shared by every door.

:class:`Admission` is the single owner of the server's admission state (requests in flight,
starting/draining flags).  It is used only from the event loop, which serialises every change, so
it needs no lock; engine threads never touch it.

A request holds a :class:`Ticket` from admission to its end (``with admission.admit(): ...``), so
the count cannot leak on any exit path.  A bidirectional stream that has not sent text yet holds
no ticket: waiting for input costs no admission slot (see ``TtsService.BidiSynthesize``).
"""
from __future__ import annotations

import hmac
import time

from server.errors import Code, RequestError

MAX_TOKEN_CHARS = 4096  # longer bearer tokens are refused unread
DRAIN_RETRY_MARGIN_MS = 100


class Authenticator:
    """Bearer tokens -> owner names; no tokens = auth off (everyone is the owner "")."""

    def __init__(self, tokens: dict[str, str]):
        self._tokens = dict(tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def owner(self, authorization: str | None) -> str:
        """The owner of an ``authorization`` header value ("Bearer <token>")."""
        if not self._tokens:
            return ""
        auth = authorization or ""
        if len(auth) > MAX_TOKEN_CHARS + 7 or not auth[:7].lower() == "bearer ":
            raise RequestError(Code.UNAUTHENTICATED, "missing or invalid bearer token")
        token = auth[7:].strip()
        for known, owner in self._tokens.items():  # constant-time comparison of every token
            if token and hmac.compare_digest(token.encode(), known.encode()):
                return owner
        raise RequestError(Code.UNAUTHENTICATED, "missing or invalid bearer token")


class Ticket:
    def __init__(self, admission: "Admission"):
        self._admission, self._held = admission, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission._release()

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Admission:
    """Bounded admission: at most ``max_live + max_queue`` synthesis requests in flight."""

    def __init__(self, max_live: int, max_queue: int, retry_after_ms: int, metrics):
        self.capacity = max_live + max_queue
        self.retry_after_ms = retry_after_ms
        self.metrics = metrics
        self.in_flight = 0
        self.ready = False  # set once the backends are warm
        self.draining = False
        self.port_closes_at: float | None = None  # (monotonic) draining: when the gRPC port stops accepting

    def check_open(self) -> None:
        """Refuse work while starting or draining (UNAVAILABLE: retry elsewhere or later)."""
        if self.draining:
            self.metrics.rejections.labels("draining").inc()
            raise RequestError(Code.UNAVAILABLE, "server is draining", self._drain_retry_ms())
        if not self.ready:
            raise RequestError(Code.UNAVAILABLE, "server is starting", self.retry_after_ms)

    def _drain_retry_ms(self) -> int | None:
        """Retry once this server's port has closed: a load balancer then sends the retry elsewhere
        (retrying at once would land here again — the fewest calls in progress attract new ones)."""
        if self.port_closes_at is None:
            return None
        return int(1000 * max(0.0, self.port_closes_at - time.monotonic())) + DRAIN_RETRY_MARGIN_MS

    def admit(self) -> Ticket:
        self.check_open()
        if self.in_flight >= self.capacity:
            self.metrics.rejections.labels("queue_full").inc()
            raise RequestError(Code.RESOURCE_EXHAUSTED,
                               f"server busy ({self.in_flight} requests in flight); retry after "
                               f"{self.retry_after_ms} ms", self.retry_after_ms)
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        return Ticket(self)

    def _release(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)
