"""The HTTP endpoint of ``--metrics_port``: ``/metrics``, ``/healthz`` and ``/ready``.

One small threaded HTTP server per program run, bound to ``--metrics_host``
(default 127.0.0.1). ``/metrics`` is the program's own Prometheus registry in
the text format the scraper asks for (``prometheus_client`` writes it);
``/healthz`` and ``/ready`` answer 200 or 503 with one line per check, so
``curl`` shows why. What the checks are is up to the program (see
:mod:`s3transfer_stream.metrics`); docs/operations.md lists them.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .logs import get_logger

__all__ = ["BrokerProbe", "Check", "HealthServer", "render_checks"]


@dataclass(frozen=True)
class Check:
    """One line of ``/healthz`` or ``/ready``."""

    name: str
    ok: bool
    detail: str = ""


Checks = Callable[[], Sequence[Check]]


def render_checks(checks: Sequence[Check]) -> tuple[int, str]:
    """``(HTTP status, body)``: 200 when every check passed, else 503."""
    ok = all(c.ok for c in checks)
    lines = ["ok" if ok else "failing"]
    lines += [
        f"{c.name}: {'ok' if c.ok else 'FAILING'}{' (' + c.detail + ')' if c.detail else ''}"
        for c in checks
    ]
    return (200 if ok else 503), "\n".join(lines) + "\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily) -> None:
        self.address_family = family
        super().__init__(address, _Handler, bind_and_activate=True)
        self.registry: CollectorRegistry | None = None
        self.health: Checks = lambda: [Check("program", True, "starting")]
        self.ready: Checks = lambda: [Check("program", False, "starting")]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "s3transfer-stream"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/metrics" and self.server.registry is not None:
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, encoder(self.server.registry), content_type, body)
            elif path in ("/healthz", "/ready"):
                checks = self.server.health if path == "/healthz" else self.server.ready
                status, text = render_checks(checks())
                self._send(status, text.encode(), "text/plain; charset=utf-8", body)
            else:
                self._send(
                    404,
                    b"not found: try /metrics, /healthz or /ready\n",
                    "text/plain; charset=utf-8",
                    body,
                )
        except Exception as err:  # a broken collector must not kill the server thread
            get_logger().debug(f"Answering {path} failed: {err}", exc_info=True)
            self._send(
                500, f"error: {type(err).__name__}\n".encode(), "text/plain; charset=utf-8", body
            )

    def _send(self, status: int, data: bytes, content_type: str, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would flood the program's log


class HealthServer:
    """Binds at construction (so a port in use is a start-up error), serves after
    :meth:`start`. Port 0 picks a free port: see :attr:`port`."""

    def __init__(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = _Server((host, port), family)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, registry: CollectorRegistry, *, health: Checks, ready: Checks) -> None:
        self._server.registry = registry
        self._server.health = health
        self._server.ready = ready
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics-http"
        )
        self._thread.daemon = True
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()


class BrokerProbe:
    """Whether the broker answers a metadata request for the topic, asked at most
    every ``ttl`` seconds (scrapes and probes in between get the last answer)."""

    def __init__(
        self,
        settings: Mapping[str, str],
        topic: str,
        *,
        ttl: float = 5.0,
        timeout: float = 2.0,
        admin_factory: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self._settings = dict(settings)
        self.topic = topic
        self.ttl = ttl
        self.timeout = timeout
        self._factory = admin_factory
        self._admin: Any = None
        self._lock = threading.Lock()
        self._checked = -1e18
        self._answer = (False, "not asked yet")

    def _client(self) -> Any:
        if self._admin is None:
            quiet = logging.getLogger("s3transfer_stream.broker_probe")
            quiet.propagate = False
            if not quiet.handlers:
                quiet.addHandler(logging.NullHandler())
            settings: dict[str, Any] = {
                **self._settings,
                "logger": quiet,  # the consumers already report broker trouble
                "error_cb": lambda _err: None,
            }
            if self._factory is not None:
                self._admin = self._factory(settings)
            else:
                from confluent_kafka.admin import AdminClient

                self._admin = AdminClient(settings)
        return self._admin

    def check(self) -> tuple[bool, str]:
        with self._lock:
            if time.monotonic() - self._checked < self.ttl:
                return self._answer
            try:
                md = self._client().list_topics(self.topic, timeout=self.timeout)
                t = md.topics.get(self.topic)
                if t is None or t.error is not None:
                    why = "missing" if t is None else str(t.error)
                    self._answer = (False, f"topic {self.topic}: {why}")
                else:
                    self._answer = (True, f"{len(md.brokers)} broker(s) answered")
            except Exception as err:
                self._answer = (False, f"no answer within {self.timeout:g} s: {str(err)[:200]}")
            self._checked = time.monotonic()
            return self._answer
