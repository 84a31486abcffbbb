"""PutObject without the per-call machinery of a boto3 client.

A boto3 ``put_object`` spends about 4 ms of CPU per call on this project's 2-core
test machine (parameter validation, serialisation, a dozen event hooks, response
parsing), more than the rest of a small file's path through the processor. The
same request built from botocore's and urllib3's own parts costs about a third of
that: botocore's SigV4 signer (``S3SigV4Auth``), a urllib3 connection pool for the
endpoint, made and used as botocore's HTTP session (``URLLib3Session``) makes and
uses its pools, with its errors mapped to the botocore exceptions that session
raises, and, for an error answer, botocore's REST-XML parser with the service's
own PutObject model, so callers see exactly the ``ClientError`` a client would
raise. Only the request is ours: path-style URL, the headers boto3 would send for
the arguments the processor uses, an unsigned payload (the CRC64NVME header
protects the bytes; see :func:`s3.make_client`).

The pool is used directly rather than through ``URLLib3Session.send``, which
resolves proxies, looks up the pool by URL and wraps the answer on every call:
0.4-0.5 ms of CPU per PUT here (``benches/put_path.py``). When a proxy applies to
the endpoint (``HTTP_PROXY``/``HTTPS_PROXY`` without a matching ``NO_PROXY``),
the session is used as it is, since it knows how to talk through one.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.httpsession import URLLib3Session, create_urllib3_context, get_cert_path
from botocore.parsers import create_parser
from botocore.utils import get_environ_proxies
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, Timeout
from urllib3.exceptions import ConnectTimeoutError as URLLib3ConnectTimeoutError
from urllib3.exceptions import NewConnectionError, ProtocolError
from urllib3.exceptions import ReadTimeoutError as URLLib3ReadTimeoutError
from urllib3.exceptions import SSLError as URLLib3SSLError
from urllib3.util import parse_url

from .config import S3Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Attempts per PUT for answers that may heal by themselves, as botocore's
#: "standard" retry mode makes (s3.make_client); the processor retries past these.
ATTEMPTS = 3
#: What botocore's standard mode treats as retryable besides 5xx and connection errors.
_RETRY_CODES = frozenset(
    {"Throttling", "ThrottlingException", "SlowDown", "RequestTimeout", "RequestLimitExceeded"}
)
#: Tells botocore's signer not to hash the body (its setting in s3.make_client).
_SIGNING_CONTEXT = {"client_config": Config(s3={"payload_signing_enabled": False})}
#: (connect, read) seconds, as s3.make_client.
_TIMEOUT = (10, 60)


class DirectPut:
    """PUTs of whole objects to one endpoint, signed like the client ``client``'s."""

    def __init__(self, client: S3Client, settings: S3Settings, *, max_connections: int) -> None:
        self.endpoint = client.meta.endpoint_url.rstrip("/")
        self._signer = S3SigV4Auth(
            Credentials(settings.access_key_id, settings.secret_key_id),
            "s3",
            client.meta.region_name,
        )
        verify: str | bool = settings.ca_bundle or os.environ.get("AWS_CA_BUNDLE") or True
        self._pool: HTTPConnectionPool | None = None
        self._http: URLLib3Session | None = None
        proxies = get_environ_proxies(self.endpoint)
        if proxies:
            # botocore takes a CA file for verify and (connect, read) for timeout;
            # its type stubs know only bool and a number.
            self._http = URLLib3Session(
                verify=verify,  # type: ignore[arg-type]
                proxies=proxies,
                timeout=_TIMEOUT,  # type: ignore[arg-type]
                max_pool_connections=max_connections,
            )
        else:
            self._pool = _pool_for(self.endpoint, verify, max_connections)
        self._base_path = (parse_url(self.endpoint).path or "").rstrip("/")
        shape = client.meta.service_model.operation_model("PutObject").output_shape
        assert shape is not None  # PutObject has an output in every S3 model
        self._output = shape
        self._parser = create_parser("rest-xml")

    def put(
        self, bucket: str, key: str, body: memoryview, headers: Mapping[str, str]
    ) -> dict[str, Any]:
        """Stores ``body`` as ``bucket/key``; returns what ``put_object`` would
        (``ETag``, ``ChecksumCRC64NVME`` when the server reports one) or raises
        the ``ClientError``/botocore exception that ``put_object`` would."""
        path = f"/{quote(bucket, safe='')}/{quote(key, safe='/~')}"
        attempt = 1
        stale_retried = False
        while True:
            try:
                return self._send(path, body, headers)
            except ConnectionClosedError:
                # A kept-alive connection the server closed while it sat in the pool
                # (after an error answer, or idle) fails before any answer; the next
                # try opens a new one. Once per PUT, so it costs no attempt.
                if not stale_retried:
                    stale_retried = True
                    continue
                if attempt >= ATTEMPTS:
                    raise
            except Exception as err:
                if attempt >= ATTEMPTS or not _retryable(err):
                    raise
            # botocore's standard mode: full jitter, doubling from 1 s.
            time.sleep(random.random() * 2 ** (attempt - 1))
            attempt += 1

    def _send(self, path: str, body: memoryview, headers: Mapping[str, str]) -> dict[str, Any]:
        url = self.endpoint + path
        request = AWSRequest("PUT", url, data=body, headers=dict(headers))
        request.headers["Content-Length"] = str(len(body))
        request.context.update(_SIGNING_CONTEXT)
        self._signer.add_auth(request)
        raw: Mapping[str, str]
        if self._pool is None:
            assert self._http is not None
            response = self._http.send(request.prepare())
            status, raw, content = response.status_code, response.headers, response.content
        else:
            status, raw, content = self._urlopen(url, self._base_path + path, request)
        answer = {k.lower(): v for k, v in raw.items()}
        if 200 <= status < 300:
            out: dict[str, Any] = {
                "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": answer}
            }
            if "etag" in answer:
                out["ETag"] = answer["etag"]
            if "x-amz-checksum-crc64nvme" in answer:
                out["ChecksumCRC64NVME"] = answer["x-amz-checksum-crc64nvme"]
            return out
        parsed = self._parser.parse(
            {"status_code": status, "headers": answer, "body": content},
            self._output,
        )
        raise ClientError(parsed, "PutObject")

    def _urlopen(
        self, url: str, target: str, request: AWSRequest
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One request through the pool; urllib3's errors become the botocore
        exceptions ``URLLib3Session.send`` raises for them, in its order."""
        assert self._pool is not None
        try:
            response = self._pool.urlopen(
                "PUT",
                target,
                body=request.data,
                headers=dict(request.headers.items()),
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                enforce_content_length=False,
            )
            return response.status, response.headers, response.data
        except URLLib3SSLError as e:
            raise SSLError(endpoint_url=url, error=e) from e
        except (NewConnectionError, socket.gaierror) as e:
            raise EndpointConnectionError(endpoint_url=url, error=e) from e
        except URLLib3ConnectTimeoutError as e:
            raise ConnectTimeoutError(endpoint_url=url, error=e) from e
        except URLLib3ReadTimeoutError as e:
            raise ReadTimeoutError(endpoint_url=url, error=e) from e
        except ProtocolError as e:
            raise ConnectionClosedError(error=e, request=request, endpoint_url=url) from e
        except Exception as e:
            raise HTTPClientError(error=e) from e


def _pool_for(endpoint: str, verify: str | bool, max_connections: int) -> HTTPConnectionPool:
    """The pool botocore's HTTP session would make for ``endpoint``: its timeouts,
    its TLS context, the certificate checked against ``verify`` (a CA file, or
    botocore's default bundle)."""
    url = parse_url(endpoint)
    host = url.host or ""
    options: dict[str, Any] = {
        "timeout": Timeout(connect=_TIMEOUT[0], read=_TIMEOUT[1]),
        "maxsize": max_connections,
    }
    if url.scheme == "https":
        return HTTPSConnectionPool(
            host,
            url.port or 443,
            ssl_context=create_urllib3_context(),
            cert_reqs="CERT_REQUIRED",
            ca_certs=get_cert_path(verify),  # type: ignore[arg-type]  # a CA file or True
            **options,
        )
    return HTTPConnectionPool(host, url.port or 80, **options)


def _retryable(err: BaseException) -> bool:
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return code in _RETRY_CODES or status >= 500 or status == 429
    # botocore's HTTP session raises its own connection and timeout errors; a
    # certificate refused stays refused.
    return isinstance(err, (HTTPClientError, BotoConnectionError)) and not isinstance(err, SSLError)
