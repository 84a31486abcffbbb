"""PutObject without the per-call machinery of a boto3 client.

A boto3 ``put_object`` spends about 2.5 ms of Python per call on this project's
2-core test machine (parameter validation, serialisation, a dozen event hooks,
response parsing), more than the rest of a small file's path through the
processor. The same request built from botocore's own parts costs about a third
of that: botocore's SigV4 signer (``S3SigV4Auth``), botocore's HTTP session
(``URLLib3Session``: connection pool, TLS verification, proxies, its error
classes), and, for an error answer, botocore's REST-XML parser with the
service's own PutObject model, so callers see exactly the ``ClientError`` a
client would raise. Only the request is ours: path-style URL, the headers
boto3 would send for the arguments the processor uses, an unsigned payload
(the CRC64NVME header protects the bytes; see :func:`s3.make_client`).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, ConnectionClosedError, HTTPClientError, SSLError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.httpsession import URLLib3Session
from botocore.parsers import create_parser
from botocore.utils import get_environ_proxies

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
        # botocore takes a CA file for verify and (connect, read) for timeout;
        # its type stubs know only bool and a number.
        self._http = URLLib3Session(
            verify=verify,  # type: ignore[arg-type]
            proxies=get_environ_proxies(self.endpoint),
            timeout=(10, 60),  # type: ignore[arg-type]  # as s3.make_client
            max_pool_connections=max_connections,
        )
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
        url = f"{self.endpoint}/{quote(bucket, safe='')}/{quote(key, safe='/~')}"
        attempt = 1
        stale_retried = False
        while True:
            try:
                return self._send(url, body, headers)
            except ConnectionClosedError:
                # A kept-alive connection the server closed while it sat in the pool
                # (after an error answer, or idle) fails before any answer; the next
                # try opens a new one. Once per PUT, so it costs no attempt.
                if not stale_retried:
                    stale_retried = False
                    continue
                if attempt >= ATTEMPTS:
                    raise
            except Exception as err:
                if attempt >= ATTEMPTS or not _retryable(err):
                    raise
            # botocore's standard mode: full jitter, doubling from 1 s.
            time.sleep(random.random() * 2 ** (attempt - 1))
            attempt += 1

    def _send(self, url: str, body: memoryview, headers: Mapping[str, str]) -> dict[str, Any]:
        request = AWSRequest("PUT", url, data=body, headers=dict(headers))
        request.headers["Content-Length"] = str(len(body))
        request.context.update(_SIGNING_CONTEXT)
        self._signer.add_auth(request)
        response = self._http.send(request.prepare())
        status = response.status_code
        answer = {k.lower(): v for k, v in response.headers.items()}
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
            {"status_code": status, "headers": answer, "body": response.content},
            self._output,
        )
        raise ClientError(parsed, "PutObject")


def _retryable(err: BaseException) -> bool:
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return code in _RETRY_CODES or status >= 500 or status == 429
    # botocore's HTTP session raises its own connection and timeout errors; a
    # certificate refused stays refused.
    return isinstance(err, (HTTPClientError, BotoConnectionError)) and not isinstance(err, SSLError)
