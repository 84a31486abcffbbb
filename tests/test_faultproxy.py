"""The fault proxy against the real local S3 server: every mode, switching, keep-alive, CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from faultproxy import FaultProxy
from helpers import S3Proxy
from s3transfer_stream.config import S3Settings
from s3transfer_stream.s3 import BufferReader, make_client

HERE = Path(__file__).resolve().parent


@pytest.fixture
def proxy(services: dict[str, str]) -> Iterator[FaultProxy]:
    p = FaultProxy(int(services["S3TS_S3_PORT"]))
    yield p
    p.close()


@pytest.fixture
def bucket(s3_client: Any) -> Iterator[str]:
    name = f"fp-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    yield name
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3_client.delete_object(Bucket=name, Key=obj["Key"])
    s3_client.delete_bucket(Bucket=name)


def settings(services: dict[str, str], url: str) -> S3Settings:
    return S3Settings(
        access_key_id=services["ACCESS_KEY_ID"],
        secret_key_id=services["SECRET_KEY_ID"],
        endpoint_url=url,
        region=services["REGION"],
    )


def quick_client(services: dict[str, str], url: str, read_timeout: float = 5) -> Any:
    """Like make_client, but without retries and with short timeouts."""
    return boto3.session.Session().client(
        "s3",
        aws_access_key_id=services["ACCESS_KEY_ID"],
        aws_secret_access_key=services["SECRET_KEY_ID"],
        endpoint_url=url,
        config=Config(
            region_name=services["REGION"],
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=2,
            read_timeout=read_timeout,
        ),
    )


def put(client: Any, bucket: str, key: str, data: bytes) -> None:
    # A file-like body, as the processor sends (botocore adds Expect: 100-continue).
    client.put_object(Bucket=bucket, Key=key, Body=BufferReader(data))


def get(client: Any, bucket: str, key: str) -> bytes:
    body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def timed(fn: Callable[[], Any]) -> tuple[float, BaseException | None]:
    t = time.monotonic()
    try:
        fn()
    except Exception as e:
        return time.monotonic() - t, e
    return time.monotonic() - t, None


def test_pass_round_trip_with_the_project_client(
    proxy: FaultProxy, services: dict[str, str], bucket: str, s3_client: Any
) -> None:
    client = make_client(settings(services, proxy.url))
    data = os.urandom(3 * 2**20 + 17)
    put(client, bucket, "a/b.bin", data)
    assert get(client, bucket, "a/b.bin") == data
    assert get(s3_client, bucket, "a/b.bin") == data  # really in the server behind it
    assert proxy.connections["pass"] >= 1
    assert proxy.url == f"http://127.0.0.1:{proxy.port}"


def test_refuse_resets_new_and_kept_alive_connections_until_allowed(
    proxy: FaultProxy, services: dict[str, str], bucket: str
) -> None:
    client = quick_client(services, proxy.url)
    put(client, bucket, "k", b"before")  # leaves a kept-alive connection in the pool
    assert proxy.open_connections == 1
    proxy.refuse()
    for _ in range(2):
        took, err = timed(lambda: put(client, bucket, "k", b"during"))
        assert isinstance(err, EndpointConnectionError | ConnectionClosedError), repr(err)
        assert took < 2
    assert proxy.connections["refuse"] >= 2
    proxy.allow()
    put(client, bucket, "k", b"after")
    assert get(client, bucket, "k") == b"after"


def test_down_refuses_to_connect_and_listens_again_on_the_same_port(
    proxy: FaultProxy, services: dict[str, str], bucket: str
) -> None:
    client = quick_client(services, proxy.url)
    put(client, bucket, "k", b"before")
    port = proxy.port
    proxy.down()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    took, err = timed(lambda: put(client, bucket, "k", b"during"))
    assert isinstance(err, EndpointConnectionError), repr(err)
    assert took < 2
    proxy.allow()
    assert proxy.port == port
    put(client, bucket, "k", b"after")
    assert get(client, bucket, "k") == b"after"


def test_stall_times_out_and_allow_closes_the_stalled_connections(
    proxy: FaultProxy, services: dict[str, str], bucket: str
) -> None:
    client = quick_client(services, proxy.url, read_timeout=2)
    put(client, bucket, "k", b"before")
    proxy.stall()
    took, err = timed(lambda: put(client, bucket, "k", b"during"))
    assert isinstance(err, ReadTimeoutError), repr(err)
    # botocore waits 1 s for "100 Continue", sends the body anyway, then times out reading.
    assert 2 <= took < 5
    assert proxy.requests["stall"] == 1  # the whole request, body included, was read
    took, err = timed(lambda: get(client, bucket, "k"))
    assert isinstance(err, ReadTimeoutError) and took < 4, repr(err)
    # botocore closes a connection that timed out, so hold one open by hand: the proxy must
    # keep it (swallowing its request) until stall is left, then close it.
    held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    held.sendall(f"GET /{bucket}/k HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    deadline = time.monotonic() + 5
    while proxy.requests["stall"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.requests["stall"] == 3
    assert proxy.open_connections >= 1
    proxy.allow()
    assert proxy.open_connections == 0  # stalled connections are closed on leaving stall
    assert held.recv(1) == b""  # closed, with nothing answered
    held.close()
    put(client, bucket, "k", b"after")
    assert get(client, bucket, "k") == b"after"


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("status503", 503, "ServiceUnavailable"),
        ("slowdown", 503, "SlowDown"),
        ("deny", 403, "AccessDenied"),
    ],
)
def test_error_answers_on_kept_alive_connections(
    proxy: FaultProxy, services: dict[str, str], bucket: str, mode: str, status: int, code: str
) -> None:
    client = quick_client(services, proxy.url)
    put(client, bucket, "k", b"before")
    proxy.set_mode(mode)
    for call in (
        lambda: put(client, bucket, "k", b"during" * 1000),
        lambda: get(client, bucket, "k"),
        lambda: client.head_object(Bucket=bucket, Key="k"),  # an answer without a body
        lambda: client.list_objects_v2(Bucket=bucket),
    ):
        took, err = timed(call)
        assert isinstance(err, ClientError), repr(err)
        assert err.response["ResponseMetadata"]["HTTPStatusCode"] == status
        assert took < 2
    assert err.response["Error"]["Code"] == code  # HEAD answers carry no code; LIST does
    assert proxy.requests[mode] == 4
    # The pass connection kept alive before was shut down when the mode was entered (a
    # pump cannot start answering mid-stream): all four went on one new connection.
    assert proxy.connections[mode] == 1
    proxy.allow()
    put(client, bucket, "k", b"after")
    assert get(client, bucket, "k") == b"after"


@pytest.mark.parametrize("mode", ["status503", "refuse", "stall"])
def test_a_short_fault_ends_by_itself_and_clients_retry_through_it(
    proxy: FaultProxy, services: dict[str, str], bucket: str, mode: str
) -> None:
    """times=2: two failed attempts, then the proxy passes again by itself."""
    client = quick_client(services, proxy.url, read_timeout=1)
    retrying = boto3.session.Session().client(
        "s3",
        aws_access_key_id=services["ACCESS_KEY_ID"],
        aws_secret_access_key=services["SECRET_KEY_ID"],
        endpoint_url=proxy.url,
        config=client.meta.config.merge(Config(retries={"mode": "standard", "max_attempts": 2})),
    )
    put(retrying, bucket, "k", b"before")  # a kept-alive connection enters the fault
    proxy.set_mode(mode, times=2)
    put(retrying, bucket, "k", b"after")  # attempts 1 and 2 fail, the third gets through
    assert proxy.mode == "pass"
    counter = proxy.connections if mode == "refuse" else proxy.requests
    assert counter[mode] == 2
    assert get(client, bucket, "k") == b"after"


def test_project_client_rides_out_a_short_outage(
    proxy: FaultProxy, services: dict[str, str], bucket: str
) -> None:
    """make_client's own retries carry one call through a 503 and a reset."""
    client = make_client(settings(services, proxy.url))
    put(client, bucket, "k", b"before")
    proxy.unavailable(times=1)
    put(client, bucket, "k", b"after 503")
    proxy.refuse(times=1)
    put(client, bucket, "k", b"after reset")
    assert proxy.mode == "pass"
    assert (proxy.requests["status503"], proxy.connections["refuse"]) == (1, 1)
    assert get(client, bucket, "k") == b"after reset"
    with pytest.raises(ValueError, match="does not apply"):
        proxy.set_mode("slow", times=1)


def test_slow_limits_bandwidth_and_switches_on_open_connections(
    proxy: FaultProxy, services: dict[str, str], bucket: str
) -> None:
    client = quick_client(services, proxy.url)
    data = os.urandom(400_000)
    put(client, bucket, "k", data)
    took, _ = timed(lambda: get(client, bucket, "k"))
    assert took < 0.5
    proxy.slow(bandwidth=400_000)  # the same kept-alive connection slows down
    took, err = timed(lambda: get(client, bucket, "k"))
    assert err is None and 0.8 < took < 3, (took, err)
    assert proxy.connections["slow"] == 0
    proxy.slow(delay=0.3)
    took, err = timed(lambda: client.head_object(Bucket=bucket, Key="k"))
    assert err is None and 0.5 < took < 2, (took, err)
    proxy.allow()
    took, _ = timed(lambda: get(client, bucket, "k"))
    assert took < 0.5


def raw_request(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    out = b""
    while b"\r\n\r\n" not in out:
        out += sock.recv(65536)
    head, _, body = out.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    if not head.startswith(b"HTTP/1.1 100") and b"HEAD" not in request.split(b" ")[0]:
        while len(body) < length:
            body += sock.recv(65536)
    return out


def test_answers_read_chunked_and_expect_bodies_in_step() -> None:
    """Several requests on one connection: the proxy must read each body exactly."""
    with FaultProxy(1, mode="status503") as proxy:  # no server needed for answers
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        chunked = (
            b"PUT /b/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Encoding: aws-chunked\r\nX-Amz-Trailer: x-amz-checksum-crc32\r\n\r\n"
            b"5;chunk-signature=abc\r\nhello\r\n3\r\n\r\n\r\n\r\n"
            b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
        )
        assert raw_request(sock, chunked).startswith(b"HTTP/1.1 503 Service Unavailable")
        sized = b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
        answer = raw_request(sock, sized)
        assert b"<Code>ServiceUnavailable</Code>" in answer
        sock.sendall(b"PUT /b/k HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n")
        sock.sendall(b"Content-Length: 4\r\n\r\n")
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert raw_request(sock, b"abcd").startswith(b"HTTP/1.1 503")
        head = raw_request(sock, b"HEAD /b/k HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.endswith(b"\r\n\r\n") and b"<Error>" not in head
        proxy.deny()  # same kind of connection: it stays and answers by the new mode
        assert b"<Code>AccessDenied</Code>" in raw_request(sock, b"GET / HTTP/1.1\r\n\r\n")
        assert proxy.requests == {**proxy.requests, "status503": 4, "deny": 1}
        sock.close()


def test_close_ends_every_thread_and_connection(
    proxy: FaultProxy, services: dict[str, str], bucket: str
) -> None:
    client = quick_client(services, proxy.url, read_timeout=10)
    put(client, bucket, "k", b"x")
    proxy.stall()
    stalled = threading.Thread(target=timed, args=(lambda: get(client, bucket, "k"),))
    stalled.start()
    deadline = time.monotonic() + 5
    while proxy.requests["stall"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    took, _ = timed(proxy.close)
    assert took < 2
    stalled.join(5)
    assert not stalled.is_alive()
    assert proxy.open_connections == 0
    mine = [t for t in threading.enumerate() if t.name.endswith(f"-{proxy.port}")]
    assert [t for t in mine if t.name.startswith("faultproxy")] == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()


def test_s3proxy_of_helpers_is_the_fault_proxy(services: dict[str, str], bucket: str) -> None:
    proxy = S3Proxy(int(services["S3TS_S3_PORT"]))
    try:
        assert isinstance(proxy, FaultProxy)
        client = quick_client(services, proxy.url)
        put(client, bucket, "k", b"x")
        proxy.deny()
        with pytest.raises(ClientError, match="AccessDenied"):
            put(client, bucket, "k", b"y")
        assert proxy.denied == 1
        proxy.allow()
        put(client, bucket, "k", b"z")
        assert get(client, bucket, "k") == b"z"
    finally:
        proxy.close()


def proxy_mode(status: Path) -> str:
    deadline = time.monotonic() + 5
    while True:
        mode: str = json.loads(status.read_text())["mode"]
        if mode == "pass" or time.monotonic() > deadline:
            return mode
        time.sleep(0.05)


def test_cli_switches_modes_through_the_control_file(
    tmp_path: Path, services: dict[str, str], bucket: str
) -> None:
    control = tmp_path / "mode"
    status = tmp_path / "status.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "faultproxy.py"),
            "--target-port",
            services["S3TS_S3_PORT"],
            "--control",
            str(control),
            "--status",
            str(status),
            "--poll",
            "0.05",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        client = quick_client(services, url)
        put(client, bucket, "k", b"x")

        def switch(text: str, mode: str) -> None:
            control.write_text(text + "\n")
            deadline = time.monotonic() + 5
            while True:
                state = json.loads(status.read_text()) if status.exists() else {}
                if state.get("control") == text:
                    break
                assert time.monotonic() < deadline, f"the proxy did not read {text!r}"
                time.sleep(0.05)
            assert state["mode"] == mode

        switch("status503", "status503")
        with pytest.raises(ClientError, match="ServiceUnavailable"):
            put(client, bucket, "k", b"y")
        switch("deny times=1", "deny")
        with pytest.raises(ClientError, match="AccessDenied"):
            put(client, bucket, "k", b"y")
        assert proxy_mode(status) == "pass"  # one denial, then back to pass by itself
        switch("no-such-mode", "pass")  # a bad line is reported and ignored
        switch("slow bandwidth=1e6 delay=0", "slow")
        put(client, bucket, "k", b"z")
        switch("pass", "pass")
        assert get(client, bucket, "k") == b"z"
        assert json.loads(status.read_text())["requests"]["status503"] == 1
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "unknown mode 'no-such-mode'" in err
