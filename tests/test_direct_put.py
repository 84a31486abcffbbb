"""The processor's PUT path (s3transfer_stream.direct_put) against the real S3 server:
for every argument the processor uses it must store what boto3's ``put_object``
stores and fail the way ``put_object`` fails, since the rest of the processor (its
retries, conditional writes, validation) reads boto3's answers and errors."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from faultproxy import FaultProxy
from s3transfer_stream import _core, direct_put
from s3transfer_stream.config import S3Settings
from s3transfer_stream.direct_put import DirectPut
from s3transfer_stream.s3 import CONFIRMED, ObjectStore, b64_crc64, is_transient, make_client


def settings(services: dict[str, str], url: str | None = None, secret: str = "") -> S3Settings:
    return S3Settings(
        access_key_id=services["ACCESS_KEY_ID"],
        secret_key_id=secret or services["SECRET_KEY_ID"],
        endpoint_url=url or services["ENDPOINT_URL"],
        region=services["REGION"],
    )


def direct_for(s: S3Settings) -> tuple[Any, DirectPut]:
    client = make_client(s)
    return client, DirectPut(client, s, max_connections=4)


@pytest.fixture
def bucket(new_bucket: Any) -> str:
    return str(new_bucket())


@pytest.fixture
def proxy(services: dict[str, str]) -> Iterator[FaultProxy]:
    p = FaultProxy(int(services["S3TS_S3_PORT"]))
    yield p
    p.close()


def error_of(call: Any) -> ClientError:
    with pytest.raises(ClientError) as info:
        call()
    return info.value


def code_and_status(err: ClientError) -> tuple[str, int]:
    return err.response["Error"]["Code"], err.response["ResponseMetadata"]["HTTPStatusCode"]


KEYS = ["plain/file.bin", "a b/ü+%&=?#;.txt", "deep/er/~tilde/x*y(1)[2]!'.dat", "x" * 200]


@pytest.mark.parametrize("key", KEYS)
def test_stores_what_put_object_stores(
    services: dict[str, str], s3_client: Any, bucket: str, key: str
) -> None:
    data = os.urandom(300_001)
    crc = b64_crc64(_core.crc64nvme(data))
    _, direct = direct_for(settings(services))
    ours = direct.put(
        bucket,
        "d/" + key,
        memoryview(data),
        {"x-amz-checksum-crc64nvme": crc, "x-amz-meta-s3ts-position": "t/1/2"},
    )
    theirs = s3_client.put_object(
        Bucket=bucket,
        Key="b/" + key,
        Body=data,
        ChecksumCRC64NVME=crc,
        Metadata={"s3ts-position": "t/1/2"},
    )
    assert ours["ETag"] == theirs["ETag"]
    assert ours["ChecksumCRC64NVME"] == theirs["ChecksumCRC64NVME"] == crc
    got = s3_client.get_object(Bucket=bucket, Key="d/" + key, ChecksumMode="ENABLED")
    ref = s3_client.get_object(Bucket=bucket, Key="b/" + key, ChecksumMode="ENABLED")
    assert got["Body"].read() == data
    for field in ("Metadata", "ContentType", "ContentLength", "ChecksumCRC64NVME"):
        assert got.get(field) == ref.get(field), field


def test_empty_body(services: dict[str, str], s3_client: Any, bucket: str) -> None:
    _, direct = direct_for(settings(services))
    crc = b64_crc64(_core.crc64nvme(b""))
    direct.put(bucket, "empty", memoryview(b""), {"x-amz-checksum-crc64nvme": crc})
    head = s3_client.head_object(Bucket=bucket, Key="empty")
    assert head["ContentLength"] == 0


def test_errors_are_the_clients_errors(
    services: dict[str, str], s3_client: Any, bucket: str
) -> None:
    data = os.urandom(70_000)
    crc = b64_crc64(_core.crc64nvme(data))
    _, direct = direct_for(settings(services))
    direct.put(bucket, "k", memoryview(data), {"x-amz-checksum-crc64nvme": crc})

    # The key exists: If-None-Match refuses, with botocore's parse of the answer.
    ours = error_of(lambda: direct.put(bucket, "k", memoryview(data), {"If-None-Match": "*"}))
    theirs = error_of(
        lambda: s3_client.put_object(Bucket=bucket, Key="k", Body=data, IfNoneMatch="*")
    )
    assert code_and_status(ours) == code_and_status(theirs) == ("PreconditionFailed", 412)
    assert ours.operation_name == "PutObject"
    assert str(ours) == str(theirs)

    # A checksum that does not match the bytes: refused, nothing stored.
    wrong = b64_crc64(_core.crc64nvme(data + b"!"))
    ours = error_of(
        lambda: direct.put(bucket, "bad", memoryview(data), {"x-amz-checksum-crc64nvme": wrong})
    )
    theirs = error_of(
        lambda: s3_client.put_object(Bucket=bucket, Key="bad", Body=data, ChecksumCRC64NVME=wrong)
    )
    assert code_and_status(ours) == code_and_status(theirs)
    assert "bad" not in [
        o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
    ]

    # A key the server will not take: refused for good, as boto3's error says.
    long_key = "k" * 2000
    ours = error_of(lambda: direct.put(bucket, long_key, memoryview(data), {}))
    theirs = error_of(lambda: s3_client.put_object(Bucket=bucket, Key=long_key, Body=data))
    assert code_and_status(ours) == code_and_status(theirs)
    assert not is_transient(ours)

    # No such bucket: the processor waits for an operator (is_transient).
    missing = f"nb-{uuid.uuid4().hex[:10]}"
    ours = error_of(lambda: direct.put(missing, "k", memoryview(data), {}))
    assert code_and_status(ours) == ("NoSuchBucket", 404)
    assert is_transient(ours)


def test_wrong_secret_is_refused_and_never_shown(services: dict[str, str], bucket: str) -> None:
    secret = "not-the-secret-" + uuid.uuid4().hex
    client, direct = direct_for(settings(services, secret=secret))
    ours = error_of(lambda: direct.put(bucket, "k", memoryview(b"abc"), {}))
    theirs = error_of(lambda: client.put_object(Bucket=bucket, Key="k", Body=b"abc"))
    assert code_and_status(ours) == code_and_status(theirs)
    assert ours.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert secret not in str(ours) and secret not in repr(ours.response)


def test_unreachable_server_raises_botocores_connection_error(
    services: dict[str, str], bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(direct_put.time, "sleep", sleeps.append)
    p = FaultProxy(int(services["S3TS_S3_PORT"]))
    url = p.url
    p.close()  # nothing listens on the port now
    _, direct = direct_for(settings(services, url))
    with pytest.raises(EndpointConnectionError) as info:
        direct.put(bucket, "k", memoryview(b"abc"), {})
    assert is_transient(info.value)
    assert len(sleeps) == direct_put.ATTEMPTS - 1  # retried as botocore's standard mode


@dataclass
class Proxied:
    """A DirectPut through the fault proxy, its back-off sleeps recorded instead of
    slept and its sends (the proxy's mode at each) counted; ``fail_send(n)`` may give
    an exception for the n-th send to raise instead of sending."""

    direct: DirectPut
    sleeps: list[float] = dataclasses.field(default_factory=list)
    sends: list[str] = dataclasses.field(default_factory=list)
    fail_send: Callable[[int], BaseException | None] = lambda n: None


@pytest.fixture
def proxied(
    proxy: FaultProxy, services: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Proxied:
    p = Proxied(direct_for(settings(services, proxy.url))[1])
    monkeypatch.setattr(direct_put.time, "sleep", p.sleeps.append)
    real_send = p.direct._send

    def send(path: str, body: memoryview, headers: Any) -> dict[str, Any]:
        p.sends.append(proxy.mode)
        if len(p.sends) > 4 * direct_put.ATTEMPTS:
            pytest.fail(f"{len(p.sends)} sends for one PUT")
        err = p.fail_send(len(p.sends))
        if err is not None:
            raise err
        return real_send(path, body, headers)

    monkeypatch.setattr(p.direct, "_send", send)
    return p


def test_retries_a_503_then_stores(
    proxied: Proxied, proxy: FaultProxy, s3_client: Any, bucket: str
) -> None:
    proxy.unavailable(times=direct_put.ATTEMPTS - 1)
    data = os.urandom(5000)
    proxied.direct.put(bucket, "k", memoryview(data), {})
    assert s3_client.get_object(Bucket=bucket, Key="k")["Body"].read() == data
    proxy.unavailable(times=direct_put.ATTEMPTS)
    err = error_of(lambda: proxied.direct.put(bucket, "k2", memoryview(data), {}))
    assert code_and_status(err)[1] == 503 and is_transient(err)


def test_a_kept_alive_connection_closed_by_the_server_costs_no_attempt(
    proxied: Proxied, proxy: FaultProxy, s3_client: Any, bucket: str
) -> None:
    """Seen in CI: the proxy shut its 503 connection when it went back to passing, the
    pool handed that connection to the third attempt, and the PUT failed with
    ConnectionClosedError although the server was up. The closing is timed here: the
    first send after the 503s fails as that one did, then the real server answers. That
    send waits until the proxy has closed its 503 connection, so the pool sees it closed
    and does not hand it out again (otherwise the real send could race the proxy's close
    and meet the same error a second time, as it once did in CI)."""
    url = proxied.direct.endpoint

    def fail_send(n: int) -> BaseException | None:
        if n != direct_put.ATTEMPTS:
            return None
        proxy.wait_closed()
        return ConnectionClosedError(endpoint_url=url)

    proxied.fail_send = fail_send
    proxy.unavailable(times=direct_put.ATTEMPTS - 1)
    data = os.urandom(5000)
    proxied.direct.put(bucket, "k", memoryview(data), {})
    assert s3_client.get_object(Bucket=bucket, Key="k")["Body"].read() == data
    assert (
        len(proxied.sends) == direct_put.ATTEMPTS + 1
        and proxy.requests["status503"] == direct_put.ATTEMPTS - 1
    )


def test_a_server_that_keeps_closing_connections_fails_after_the_attempts(
    proxied: Proxied, proxy: FaultProxy, bucket: str
) -> None:
    """The free retry for a closed kept-alive connection is one per PUT: a server that
    closes every connection costs the usual attempts and then the error, not a loop."""
    url = proxied.direct.endpoint
    proxied.fail_send = lambda n: ConnectionClosedError(endpoint_url=url)
    with pytest.raises(ConnectionClosedError):
        proxied.direct.put(bucket, "k", memoryview(os.urandom(5000)), {})
    assert len(proxied.sends) == direct_put.ATTEMPTS + 1
    assert len(proxied.sleeps) == direct_put.ATTEMPTS - 1
    # The same from a real socket: the proxy resets each connection, which the client
    # sees while connecting (EndpointConnectionError) or after (ConnectionClosedError).
    proxied.fail_send = lambda n: None
    proxied.sends.clear()
    proxied.sleeps.clear()
    proxy.refuse()
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        proxied.direct.put(bucket, "k", memoryview(os.urandom(5000)), {})
    assert direct_put.ATTEMPTS <= len(proxied.sends) <= direct_put.ATTEMPTS + 1
    assert len(proxied.sleeps) == direct_put.ATTEMPTS - 1
    assert proxy.connections["refuse"] == len(proxied.sends)


def test_an_http_proxy_from_the_environment_is_used(
    proxy: FaultProxy,
    services: dict[str, str],
    s3_client: Any,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``HTTP_PROXY`` set the PUT goes through the proxy, as boto3's would (the
    fault proxy pumps the absolute-form request on to the server, which accepts it)."""
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    _, direct = direct_for(settings(services))
    data = os.urandom(5000)
    direct.put(bucket, "via/proxy", memoryview(data), {})
    assert s3_client.get_object(Bucket=bucket, Key="via/proxy")["Body"].read() == data
    assert proxy.connections["pass"] >= 1
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    before = proxy.connections["pass"]
    _, direct = direct_for(settings(services))
    direct.put(bucket, "not/via/proxy", memoryview(data), {})
    assert s3_client.get_object(Bucket=bucket, Key="not/via/proxy")["Body"].read() == data
    assert proxy.connections["pass"] == before


def test_object_store_put_through_the_direct_path(
    services: dict[str, str], s3_client: Any, bucket: str
) -> None:
    client, direct = direct_for(settings(services))
    store = ObjectStore(client, bucket, direct=direct)
    data = os.urandom(1 << 20)
    crc = _core.crc64nvme(data)
    sent = store.put("o/x.bin", data, crc64nvme=crc, position="tid/0/7", condition=("none", "*"))
    assert sent[CONFIRMED] == sent["ChecksumCRC64NVME"] == b64_crc64(crc)
    assert store.validate_object("o/x.bin", len(data), sent, hashlib.sha512(data).digest()).ok
    assert store.stored_position("o/x.bin") is not None
    assert store.stored_position("o/x.bin")[1] == "tid/0/7"  # type: ignore[index]
    etag = s3_client.head_object(Bucket=bucket, Key="o/x.bin")["ETag"]
    with pytest.raises(ClientError) as info:  # the condition holds no more
        store.put("o/x.bin", data, crc64nvme=crc, condition=("match", '"0000"'))
    assert code_and_status(info.value)[1] == 412
    store.put("o/x.bin", data[:10], crc64nvme=_core.crc64nvme(data[:10]), condition=("match", etag))
    assert s3_client.get_object(Bucket=bucket, Key="o/x.bin")["Body"].read() == data[:10]
