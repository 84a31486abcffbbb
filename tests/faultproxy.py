"""A fault-injecting TCP/HTTP proxy in front of the local S3 server, for fault tests.

``FaultProxy(target_port)`` listens on an ephemeral port of 127.0.0.1 and forwards to
``127.0.0.1:target_port``. Its mode can be switched at any time, from any thread:

``pass``
    a plain TCP pump in both directions (nothing is parsed).
``slow``
    the same pump, but every chunk of bytes is delayed: by ``slow_delay`` seconds per
    ``recv`` and/or to hold each direction of each connection to ``slow_bandwidth``
    bytes per second.
``refuse``
    new connections are accepted and reset at once (RST, no response); connections
    open when the mode is entered are shut down, so boto3's kept-alive connections
    do not keep passing.
``down``
    the listening socket is closed, so connecting fails with ECONNREFUSED as with a
    server that is not running; leaving the mode listens again on the same port.
``stall``
    connections are accepted and requests read, and nothing is ever answered (a hung
    server); when the mode changes they are closed.
``status503``
    every request is read in full (``Content-Length``, ``Transfer-Encoding: chunked``,
    ``aws-chunked``, ``Expect: 100-continue``) and answered with HTTP 503 and an S3
    ``ServiceUnavailable`` error body.
``slowdown``
    the same with S3's throttling answer, 503 ``SlowDown`` (botocore backs off from
    throttling far longer than from other errors).
``deny``
    the same with HTTP 403 ``AccessDenied``, as a bucket whose policy forbids it.

``set_mode(mode, times=N)`` (and ``refuse(N)``, ``unavailable(N)``, ...) makes a fault
last for N requests (N connections for ``refuse``), after which the proxy is in
``pass`` again by itself.

Entering a mode shuts down every open connection that is handled differently (a
``pass`` connection when ``deny`` is entered, a ``stall`` one when ``pass`` is, ...),
so no connection opened under the old mode keeps behaving by it; ``pass`` and
``slow`` share connections, as do ``deny``, ``status503`` and ``slowdown``.

``connections[mode]`` counts connections accepted in each mode, ``requests[mode]``
the HTTP requests answered (``deny``, ``status503``, ``slowdown``) or swallowed (``stall``); the
pumping modes do not parse HTTP and count no requests.

Run as a program so that other processes (benchmarks, scripts) can use it::

    python tests/faultproxy.py --target-port 38333 --port 0 --control /tmp/mode

prints ``listening on http://127.0.0.1:PORT``; writing a mode name into the control
file (``echo stall > /tmp/mode``; ``echo "slow bandwidth=1e6 delay=0.01" > /tmp/mode``;
``echo "status503 times=3" > /tmp/mode``) switches the mode, the file is polled (a line
is acted on when it differs from the last one read). ``--status FILE`` gets the mode,
the last control line and the counters as JSON. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

MODES = ("pass", "slow", "refuse", "down", "stall", "status503", "slowdown", "deny")

#: How connections are handled; a mode change closes connections of another kind.
_KIND = {
    "pass": "pump",
    "slow": "pump",
    "refuse": "refuse",
    "down": "refuse",
    "stall": "stall",
    "status503": "answer",
    "slowdown": "answer",
    "deny": "answer",
}

_ANSWERS = {
    "status503": (
        503,
        "Service Unavailable",
        "ServiceUnavailable",
        "Service unavailable (fault proxy)",
    ),
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate (fault proxy)"),
    "deny": (403, "Forbidden", "AccessDenied", "Access Denied (fault proxy)"),
}

_MAX_HEAD = 1 << 20


class _Closed(Exception):
    """The peer closed the connection, or the proxy shut it down."""


class _Reader:
    """Buffered reads from a socket for parsing HTTP requests."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise _Closed
        self.buf += data

    def until(self, sep: bytes, limit: int = _MAX_HEAD) -> bytes:
        """Bytes up to and including ``sep``."""
        while (i := self.buf.find(sep)) < 0:
            if len(self.buf) > limit:
                raise _Closed
            self._fill()
        out = bytes(self.buf[: i + len(sep)])
        del self.buf[: i + len(sep)]
        return out

    def skip(self, n: int) -> None:
        while n > 0:
            if not self.buf:
                self._fill()
            k = min(n, len(self.buf))
            del self.buf[:k]
            n -= k


def _read_request(r: _Reader, on_head: Any = None) -> str:
    """Reads one whole HTTP request, body included; returns its method.

    ``on_head(headers)`` is called after the head and before the body (to answer
    ``Expect: 100-continue``).
    """
    head = r.until(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method = lines[0].split(" ", 1)[0].upper()
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            headers[key] = (headers[key] + "," if key in headers else "") + value.strip()
    if on_head is not None:
        on_head(headers)
    te = headers.get("transfer-encoding", "").lower()
    ce = headers.get("content-encoding", "").lower()
    if "chunked" in te or ("content-length" not in headers and "aws-chunked" in ce):
        # HTTP chunked framing; aws-chunked uses the same syntax (size;chunk-signature=...).
        while True:
            size_line = r.until(b"\r\n").split(b";", 1)[0].strip()
            size = int(size_line, 16)
            if size == 0:
                while r.until(b"\r\n") != b"\r\n":  # trailers (x-amz-checksum-...)
                    pass
                break
            r.skip(size)
            r.until(b"\r\n")
    elif "content-length" in headers:
        r.skip(int(headers["content-length"].split(",")[0]))
    return method


class FaultProxy:
    """A proxy to ``127.0.0.1:target_port`` whose faults can be switched at any time."""

    def __init__(
        self,
        target_port: int,
        *,
        port: int = 0,
        mode: str = "pass",
        slow_bandwidth: float | None = None,
        slow_delay: float = 0.0,
        target_host: str = "127.0.0.1",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (modes: {', '.join(MODES)})")
        self.target = (target_host, target_port)
        self.mode = "pass"
        self.slow_bandwidth = slow_bandwidth
        self.slow_delay = slow_delay
        self.connections: dict[str, int] = dict.fromkeys(MODES, 0)
        self.requests: dict[str, int] = dict.fromkeys(MODES, 0)
        self._lock = threading.Lock()
        self._budget: int | None = None  # faults left before going back to pass (times=)
        self._conns: dict[socket.socket, tuple[str, list[socket.socket]]] = {}
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self._listener: socket.socket | None = None
        self.port = port
        self._listen()
        self.url = f"http://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"faultproxy-accept-{self.port}", daemon=True
        )
        self._acceptor.start()
        if mode != "pass":
            self.set_mode(mode)

    # -- switching -------------------------------------------------------------------------

    def set_mode(self, mode: str, *, times: int | None = None, **slow: float | None) -> None:
        """Switches to ``mode``; ``bandwidth=``, ``delay=`` set the slow knobs.

        ``times=N``: the fault is for the next N requests (``stall``, ``status503``,
        ``slowdown``, ``deny``) or connections (``refuse``) only, then the proxy is back
        in ``pass`` by itself: a short outage with no timing in the test.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (modes: {', '.join(MODES)})")
        if times is not None and (mode in ("pass", "slow", "down") or times < 1):
            raise ValueError(f"times={times} does not apply to mode {mode!r}")
        if "bandwidth" in slow:
            self.slow_bandwidth = slow.pop("bandwidth")
        if "delay" in slow:
            self.slow_delay = slow.pop("delay") or 0.0
        if slow:
            raise TypeError(f"unknown slow settings {sorted(slow)}")
        with self._lock:
            if self._closed:
                raise RuntimeError("the proxy is closed")
            if mode == "down" and self._listener is not None:
                self._unlisten()
            elif mode != "down" and self._listener is None:
                self._listen()  # the same port again; raises (mode unchanged) if taken
            self.mode = mode
            self._budget = times
            kind = _KIND[mode]
            doomed = [c for c, (k, _) in self._conns.items() if k != kind]
            doomed_socks = [s for c in doomed for s in self._conns.pop(c)[1]]
        for s in doomed_socks:
            _shutdown(s)

    def allow(self) -> None:
        self.set_mode("pass")

    def refuse(self, times: int | None = None) -> None:
        self.set_mode("refuse", times=times)

    def down(self) -> None:
        self.set_mode("down")

    def stall(self, times: int | None = None) -> None:
        self.set_mode("stall", times=times)

    def unavailable(self, times: int | None = None) -> None:
        self.set_mode("status503", times=times)

    def slowdown(self, times: int | None = None) -> None:
        self.set_mode("slowdown", times=times)

    def deny(self, times: int | None = None) -> None:
        self.set_mode("deny", times=times)

    def slow(self, bandwidth: float | None = None, delay: float = 0.0) -> None:
        """Forwards at most ``bandwidth`` bytes/s per direction and connection (None: no
        limit), waiting ``delay`` seconds more for every chunk received."""
        self.set_mode("slow", bandwidth=bandwidth, delay=delay)

    @property
    def denied(self) -> int:
        """Requests answered with AccessDenied (the name the older S3Proxy had)."""
        return self.requests["deny"]

    def wait_closed(self, timeout: float = 5.0) -> None:
        """Waits until no connection is being served: every socket a mode change shut
        down has been closed by its thread, so the client's side already sees the end."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                busy = [t for t in self._threads if t.is_alive()]
            if not busy:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(busy)} proxy connections still served")
            busy[0].join(max(0.0, deadline - time.monotonic()))

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def close(self) -> None:
        """Stops listening, shuts down every connection and waits (briefly) for the threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._listener is not None:
                self._unlisten()
            socks = [s for _, group in self._conns.values() for s in group]
            threads = list(self._threads)
        for s in socks:
            _shutdown(s)
        deadline = time.monotonic() + 5
        for t in [self._acceptor, *threads]:
            t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FaultProxy({self.url} -> {self.target[0]}:{self.target[1]}, mode={self.mode})"

    # -- internals -------------------------------------------------------------------------

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._listener = sock

    def _unlisten(self) -> None:
        # close() alone leaves the socket listening while the accept thread's select()
        # holds it (the kernel completes handshakes, then resets them); shutdown() on a
        # listening socket stops it at once (Linux).
        assert self._listener is not None
        _shutdown(self._listener)
        self._listener.close()
        self._listener = None

    def _accept_loop(self) -> None:
        while not self._closed:
            listener = self._listener
            if listener is None:
                time.sleep(0.05)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], 0.1)
                if not ready:
                    continue
                conn, _ = listener.accept()
            except (OSError, ValueError):
                continue  # closed for `down` or close(); the loop condition decides
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mode = self.mode
            with self._lock:
                self.connections[mode] += 1
            if mode in ("refuse", "down"):
                _reset(conn)
                self._spent(mode)
                continue
            self._spawn(self._serve, conn, mode)

    def _spent(self, mode: str) -> None:
        """One fault of ``mode`` was served: back to pass once a ``times=`` budget is used."""
        with self._lock:
            if self._budget is None or self.mode != mode or self._closed:
                return
            self._budget -= 1
            if self._budget > 0:
                return
        with contextlib.suppress(RuntimeError, OSError):
            self.set_mode("pass")

    def _spawn(self, target: Any, *args: Any) -> threading.Thread:
        def run() -> None:
            try:
                target(*args)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        t = threading.Thread(target=run, name=f"faultproxy-{self.port}", daemon=True)
        with self._lock:
            self._threads.add(t)
        t.start()
        return t

    def _register(self, conn: socket.socket, kind: str, *others: socket.socket) -> bool:
        """Records a connection; False if it should not be served (mode changed, closed)."""
        with self._lock:
            if self._closed or _KIND[self.mode] != kind:
                return False
            self._conns[conn] = (kind, [conn, *others])
            return True

    def _serve(self, conn: socket.socket, mode: str) -> None:
        kind = _KIND[mode]
        upstream: socket.socket | None = None
        try:
            if kind == "pump":
                try:
                    upstream = socket.create_connection(self.target, timeout=10)
                except OSError:
                    _reset(conn)
                    return
                upstream.settimeout(None)
                upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if not self._register(conn, kind, upstream):
                    return
                back = self._spawn(self._pump, upstream, conn)
                self._pump(conn, upstream)
                back.join()
            elif self._register(conn, kind):
                if kind == "stall":
                    self._stall(conn)
                else:
                    self._answer(conn)
        finally:
            with self._lock:
                self._conns.pop(conn, None)
            for s in (conn, upstream):
                if s is not None:
                    _shutdown(s)
                    s.close()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        sent_at = time.monotonic()  # when the bytes sent so far are due (bandwidth limit)
        try:
            while True:
                slow = self.mode == "slow"
                bw = self.slow_bandwidth if slow else None
                size = 1 << 16 if not bw else max(1, min(1 << 16, int(bw / 20)))
                data = src.recv(size)
                if not data:
                    break
                if self.mode == "slow":
                    now = time.monotonic()
                    wait = self.slow_delay
                    if bw:
                        sent_at = max(sent_at, now) + len(data) / bw
                        wait = max(wait, sent_at - now)
                    if wait > 0:
                        time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _shutdown(s)

    def _stall(self, conn: socket.socket) -> None:
        r = _Reader(conn)
        try:
            while True:
                # Reads (and drops) whole requests: they are counted; nothing is answered.
                _read_request(r)
                with self._lock:
                    self.requests["stall"] += 1
                self._spent("stall")
        except (_Closed, OSError, ValueError):
            return

    def _answer(self, conn: socket.socket) -> None:
        r = _Reader(conn)

        def on_head(headers: dict[str, str]) -> None:
            if headers.get("expect", "").lower() == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

        try:
            while True:
                method = _read_request(r, on_head)
                mode = self.mode
                if mode not in _ANSWERS:  # mode changed under us; set_mode shuts us down
                    return
                status, reason, code, message = _ANSWERS[mode]
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n'
                    f"<Error><Code>{code}</Code><Message>{message}</Message>"
                    "<RequestId>faultproxy</RequestId></Error>"
                ).encode()
                head = (
                    f"HTTP/1.1 {status} {reason}\r\n"
                    "Content-Type: application/xml\r\n"
                    f"Content-Length: {len(body)}\r\n"
                    "x-amz-request-id: faultproxy\r\n"
                    "\r\n"
                ).encode()
                with self._lock:  # counted before the client can see the answer
                    self.requests[mode] += 1
                conn.sendall(head if method == "HEAD" else head + body)
                self._spent(mode)
        except (_Closed, OSError, ValueError):
            return


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _reset(sock: socket.socket) -> None:
    """Closes with an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- command line -----------------------------------------------------------------------------


def _parse_control(text: str) -> tuple[str, dict[str, Any]]:
    """``"slow bandwidth=1e6 delay=0.01"`` -> ("slow", {...}); ValueError if malformed."""
    words = text.split()
    if not words:
        raise ValueError("empty")
    mode, settings = words[0], dict[str, Any]()
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (modes: {', '.join(MODES)})")
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or key not in ("bandwidth", "delay", "times"):
            raise ValueError(
                f"bad setting {word!r} (bandwidth=BYTES_PER_S, delay=SECONDS, times=N)"
            )
        if key == "times":
            settings[key] = int(value)
        else:
            settings[key] = None if value.lower() == "none" else float(value)
    return mode, settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="A fault-injecting proxy in front of an S3 server on 127.0.0.1.",
        epilog=f"modes: {', '.join(MODES)}",
    )
    ap.add_argument("--target-port", type=int, required=True, help="port of the real server")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (0: any free one)")
    ap.add_argument(
        "--control",
        type=Path,
        help="file polled for the mode: a mode name, for slow also bandwidth=B/s delay=S",
    )
    ap.add_argument("--mode", default="pass", choices=MODES, help="mode at start")
    ap.add_argument("--slow-bandwidth", type=float, default=None, help="bytes/s in slow mode")
    ap.add_argument("--slow-delay", type=float, default=0.0, help="seconds per chunk in slow mode")
    ap.add_argument("--poll", type=float, default=0.1, help="seconds between control file reads")
    ap.add_argument(
        "--status",
        type=Path,
        help="file rewritten (atomically) with the mode, the last control line and the counters, as JSON",
    )
    args = ap.parse_args(argv)

    proxy = FaultProxy(
        args.target_port,
        port=args.port,
        mode=args.mode,
        slow_bandwidth=args.slow_bandwidth,
        slow_delay=args.slow_delay,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"listening on {proxy.url}", flush=True)
    last_text: str | None = None
    last_status = ""
    try:
        while not stop.is_set():
            if args.control is not None:
                try:
                    text = args.control.read_text().strip()
                except OSError:
                    text = None
                if text and text != last_text:
                    last_text = text
                    try:
                        mode, settings = _parse_control(text)
                        proxy.set_mode(mode, **settings)
                        print(f"mode {text}", file=sys.stderr, flush=True)
                    except (ValueError, TypeError, OSError) as e:
                        print(f"control file: {e}; mode stays {proxy.mode}", file=sys.stderr)
            if args.status is not None:
                status = json.dumps(
                    {
                        "mode": proxy.mode,
                        "control": last_text,
                        "connections": proxy.connections,
                        "requests": proxy.requests,
                    }
                )
                if status != last_status:
                    tmp = args.status.with_name(args.status.name + ".tmp")
                    tmp.write_text(status + "\n")
                    os.replace(tmp, args.status)
                    last_status = status
            stop.wait(args.poll)
    finally:
        proxy.close()
        print(
            f"closed; connections {proxy.connections}, requests {proxy.requests}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
