"""Request IDs, access logs, the body size limit and Prometheus metrics, in one ASGI layer.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware) so it adds microseconds, not a
task per request, to every call.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("finlora.serve.access")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """The service's own registry, so several apps in one process never collide."""

    def __init__(self, routes: set[str]) -> None:
        self.routes = routes
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "finlora_http_requests",
            "HTTP requests by route and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "finlora_http_errors",
            "HTTP responses with status >= 400, by route and status code",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "finlora_http_request_duration_seconds",
            "Time from request start to response end",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "finlora_inference_batch_texts",
            "Texts per model call (requests arriving together are batched)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.queue_texts = Gauge(
            "finlora_queue_texts",
            "Texts waiting for inference (accepted, not yet in a running batch)",
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "finlora_queue_wait_seconds",
            "Time a request waited in the queue before its batch started",
            buckets=LATENCY_BUCKETS + (2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.rejected = Counter(
            "finlora_rejected_requests",
            "Requests answered 503 without inference, by reason "
            "(queue_full, deadline, shutting_down, explain_busy)",
            ["reason"],
            registry=self.registry,
        )
        for reason in ("queue_full", "deadline", "shutting_down", "explain_busy"):
            self.rejected.labels(reason)
        self.predicted = Counter(
            "finlora_predictions", "Texts classified, by label", ["label"], registry=self.registry
        )
        self.ready = Gauge(
            "finlora_model_ready", "1 once the model is loaded", registry=self.registry
        )

    def route(self, path: str) -> str:
        return path if path in self.routes else "other"


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every log record (for a `%(request_id)s` format field)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    """Request ID (from `X-Request-ID` or new), body size limit, access log line, metrics.

    `route_body_bytes` raises the body limit of single routes (a whole document).
    """

    def __init__(
        self,
        app,
        metrics: Metrics,
        max_body_bytes: int,
        route_body_bytes: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.route_body_bytes = route_body_bytes or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        start = time.perf_counter()
        status = 500
        started = False
        received = 0
        limit = self.route_body_bytes.get(scope["path"], self.max_body_bytes)

        async def receive_limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def send_with_id(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge
            await self.app(scope, receive_limited, send_with_id)
        except BodyTooLarge:
            if not started:
                await send_error(
                    send_with_id,
                    413,
                    f"request body larger than {limit} bytes; send fewer or shorter texts",
                )
        finally:
            elapsed = time.perf_counter() - start
            route = self.metrics.route(scope["path"])
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            if status >= 400:
                self.metrics.errors.labels(route, str(status)).inc()
            log.info("%s %s %d %.2fms", scope["method"], scope["path"], status, 1000 * elapsed)
            REQUEST_ID.reset(token)


async def send_error(
    send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()
) -> None:
    """The service's one-line JSON error from plain ASGI code; closes the connection, as the
    request body may be left unread."""
    body = json.dumps({"detail": detail, "request_id": REQUEST_ID.get()}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
