"""S3 side: the client, uploads of sealed buffers, and validation against the bucket.

Bytes reach boto3 as :class:`BufferReader` objects: a seekable file-like view
over a Rust-owned buffer, so nothing is copied on the way to the socket and
botocore can rewind it for a retry. Checksums are computed in Rust over bytes
whose SHA-512 was already verified, and sent with every PUT and part, so the
server itself refuses anything that changed on the way; afterwards the checksum
the server reports for the stored object is compared with ours.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Literal, cast, get_args
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from . import _core
from .config import S3Settings
from .direct_put import DirectPut
from .errors import TransferError
from .logs import get_logger

if TYPE_CHECKING:  # boto3-stubs[s3], a dev dependency: types only
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

#: Anything with the buffer protocol (``bytes``, ``memoryview``, ``_core.Buffer``).
BufferLike = Any

#: Validation modes: compare server-reported checksums, or re-read the whole object.
Validate = Literal["checksum", "full"]
VALIDATE_CHOICES: tuple[Validate, ...] = get_args(Validate)


def b64_crc64(value: int) -> str:
    return base64.b64encode(value.to_bytes(8, "big")).decode("ascii")


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class BufferReader(io.RawIOBase):
    """A read-only, seekable stream over a buffer; ``read`` returns zero-copy views."""

    def __init__(self, data: BufferLike) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, min(len(self._view), base + offset))
        return self._pos

    def read(self, size: int | None = -1) -> memoryview:
        end = (
            len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        )
        out = self._view[self._pos : end]
        self._pos = end
        return out

    def readinto(self, b: Any) -> int:
        chunk = self.read(len(b))
        n = len(chunk)
        b[:n] = chunk
        return n


def make_client(settings: S3Settings, *, max_connections: int = 16) -> S3Client:
    """A boto3 S3 client for the configured endpoint.

    Path-style addressing (S3-compatible servers on a host name or IP rarely do
    virtual hosts). botocore's own default checksums are off because we send our
    own, computed in Rust; payload signing is off because that would hash every
    body again in Python (the checksum header protects the bytes instead).
    Standard retry mode backs off on throttling and 5xx answers. An https
    endpoint's certificate is checked against ``settings.ca_bundle`` if given.
    """
    config = Config(
        region_name=settings.region,
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # Few attempts here: the processor retries what can heal itself, for as
        # long as it takes, with its own back-off (processor/uploads.py).
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=max_connections,
        connect_timeout=10,
        # A hung server holds a call this long before it is retried (uploads.py).
        read_timeout=60,
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_key_id,
        endpoint_url=settings.endpoint_url,
        # None: botocore's default (honours $AWS_CA_BUNDLE); never verify=False.
        verify=settings.ca_bundle or None,
        config=config,
    )


#: Characters a metadata value keeps as they are; others are percent-encoded, as
#: HTTP headers carry ASCII only (a Kafka group id may be any string).
_METADATA_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def upload_metadata(group: str, member: str) -> dict[str, str]:
    """User metadata marking an upload with its consumer group and member (if given)."""
    out = {}
    if group:
        out["s3ts-group"] = quote(group, safe=_METADATA_SAFE)
    if member:
        out["s3ts-member"] = quote(member, safe=_METADATA_SAFE)
    return out


def describe_client_error(err: Exception) -> str:
    """A one-line reason for a failed S3 call, with no credentials in it."""
    if isinstance(err, ClientError):
        e = err.response.get("Error", {})
        code = e.get("Code", "?")
        msg = e.get("Message", "")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        return f"{code} (HTTP {status}){': ' + msg if msg else ''}"
    if isinstance(err, BotoCoreError):
        return f"{type(err).__name__}: {err}"
    return f"{type(err).__name__}: {err}"


#: Error codes that say the server is there but cannot serve now, or that the
#: request should simply be sent again.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "BadDigest",
        "IncompleteBody",
        "OperationAborted",
        # Credentials or bucket refused for every key: a configuration problem
        # the operator fixes. Committing past every file meanwhile would lose them.
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "NoSuchBucket",
    }
)


def is_transient(err: BaseException) -> bool:
    """True for failures that can heal without anything changing in the data:
    the server unreachable or slow, 5xx answers, throttling, refused credentials.
    False for what retrying cannot fix (access denied on a key, a key too long,
    an entity too large, a malformed request)."""
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in TRANSIENT_CODES or int(status) >= 500 or int(status) == 429
    if isinstance(err, ParamValidationError):
        return False
    # Connection refused or reset, timeouts, a read cut short: botocore's own errors.
    return isinstance(err, (BotoCoreError, ConnectionError, TimeoutError, OSError))


def error_code(err: BaseException) -> str:
    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return type(err).__name__


def check_bucket(client: S3Client, bucket: str) -> None:
    """Fails early, with the bucket and endpoint named, if the bucket is not usable."""
    try:
        client.head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as err:
        endpoint = client.meta.endpoint_url
        reason = describe_client_error(err)
        if isinstance(err, ClientError):
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 403:  # HEAD has no error body: say what it means
                reason = (
                    "access denied (HTTP 403): the server refused the access key id and "
                    "secret key of [s3], or this identity may not use the bucket"
                )
        raise TransferError(f"cannot use bucket {bucket!r} at {endpoint}: {reason}") from None


@dataclass
class Validation:
    """How a stored object was checked; ``text`` is what the console line says."""

    ok: bool
    method: str
    text: str


class ObjectStore:
    """Uploads and validates objects in one bucket. Thread-safe.

    ``group`` and ``member`` (optional) mark every multipart upload this store
    starts with user metadata ``s3ts-group`` / ``s3ts-member``. S3 does not show
    user metadata in ListMultipartUploads, so the marking cannot tell whose an
    open upload is (:mod:`s3transfer_stream.stale_uploads` keeps that record);
    it is carried to the completed object, where ``head-object`` shows a person
    which consumer group and member wrote it.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        *,
        validate: Validate = "checksum",
        group: str = "",
        member: str = "",
        direct: DirectPut | None = None,
    ) -> None:
        if validate not in VALIDATE_CHOICES:
            raise ValueError(f"validate must be one of {VALIDATE_CHOICES}, got {validate!r}")
        self.client = client
        self.bucket = bucket
        self.validate = validate
        self.upload_metadata = upload_metadata(group, member)
        self.direct = direct
        self._lock = threading.Lock()
        # What this server turned out to support; learnt from its answers.
        self.checksum_put = True
        self.reports_checksums = True
        self._log = get_logger()

    # -- single PUT ---------------------------------------------------------

    def put(
        self,
        key: str,
        data: BufferLike,
        *,
        crc64nvme: int,
        position: str = "",
        condition: Condition | None = None,
    ) -> dict[str, str]:
        """One PUT carrying our CRC64NVME, so the server refuses bytes that changed
        on the way. A server that does not take the checksum gets a plain PUT
        (said once in the log); validation then re-reads the object instead.
        ``position`` (where the file's first chunk sits in the log) is stored as
        metadata; ``condition`` makes the write conditional (``PreconditionFailed``)."""
        extra = _write_extra(position, condition)
        if self.checksum_put:
            value = b64_crc64(crc64nvme)
            try:
                r = self._put_object(key, data, {**extra, "ChecksumCRC64NVME": value})
                return _sent(value, r)
            except ClientError as err:
                if not _unsupported_checksum(err):
                    raise
                with self._lock:
                    if self.checksum_put:
                        self.checksum_put = False
                        self._log.warning(
                            "The S3 server does not accept CRC64NVME checksums "
                            f"({describe_client_error(err)}); uploading without them"
                        )
        self._put_object(key, data, extra)
        return {}

    def _put_object(self, key: str, data: BufferLike, args: dict[str, Any]) -> Mapping[str, Any]:
        if self.direct is not None:
            return self.direct.put(self.bucket, key, memoryview(data).cast("B"), _put_headers(args))
        return self.client.put_object(Bucket=self.bucket, Key=key, Body=_body(data), **args)

    def stored_position(self, key: str) -> tuple[str, str] | None:
        """``(ETag, position metadata)`` of the object now stored at ``key``, or None."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if error_code(err) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return str(head.get("ETag", "")), str(head.get("Metadata", {}).get(POSITION_KEY, ""))

    # -- multipart -------------------------------------------------------------

    def start_multipart(self, key: str, *, position: str = "") -> str:
        extra: dict[str, Any] = {}
        if self.upload_metadata or position:
            extra["Metadata"] = {
                **self.upload_metadata,
                **({POSITION_KEY: position} if position else {}),
            }
        r = self.client.create_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            ChecksumAlgorithm="CRC64NVME",
            ChecksumType="FULL_OBJECT",
            **extra,
        )
        return str(r["UploadId"])

    def upload_part(
        self, key: str, upload_id: str, number: int, data: BufferLike, crc64nvme: int
    ) -> CompletedPartTypeDef:
        r = self.client.upload_part(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=_body(data),
            ChecksumCRC64NVME=b64_crc64(crc64nvme),
        )
        return {"PartNumber": number, "ETag": r["ETag"], "ChecksumCRC64NVME": b64_crc64(crc64nvme)}

    def complete_multipart(
        self,
        key: str,
        upload_id: str,
        parts: list[CompletedPartTypeDef],
        crc64nvme: int,
        *,
        condition: Condition | None = None,
    ) -> dict[str, str]:
        value = b64_crc64(crc64nvme)
        r = self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": sorted(parts, key=lambda p: p.get("PartNumber", 0))},
            ChecksumCRC64NVME=value,
            ChecksumType="FULL_OBJECT",
            **_write_extra("", condition),
        )
        return _sent(value, r)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Raises what S3 answered: the caller keeps the upload recorded as open
        unless the abort went through."""
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    # -- validation ------------------------------------------------------------

    def validate_object(
        self, key: str, size: int, sent: dict[str, str], sha512: bytes
    ) -> Validation:
        """Compares what the bucket holds with what we sent and the producer hashed.

        In ``checksum`` mode the checksum the server computed while storing the
        object comes back in the PUT/CompleteMultipartUpload answer; when it does,
        no extra request is needed. Otherwise the object's checksum is read with HEAD."""
        confirmed = sent.get(CONFIRMED)
        if self.validate == "checksum" and confirmed:
            ours = sent.get("ChecksumCRC64NVME")
            if confirmed == ours:
                return Validation(
                    True,
                    "crc64nvme",
                    "CRC64NVME of the SHA-512-verified bytes confirmed by the server",
                )
            return Validation(
                False, "crc64nvme", f"server stored CRC64NVME {confirmed}, expected {ours}"
            )
        sent = {k: v for k, v in sent.items() if k != CONFIRMED}
        if self.validate == "checksum" and self.reports_checksums:
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            stored_size = int(head.get("ContentLength", -1))
            if stored_size != size:
                return Validation(
                    False, "size", f"stored object has {stored_size} bytes, expected {size}"
                )
            for name, value in sent.items():
                got = head.get(name)
                if got is None:
                    continue
                algo = name.removeprefix("Checksum")
                if got == value:
                    return Validation(
                        True,
                        algo.lower(),
                        f"{algo} of the SHA-512-verified bytes confirmed by the server",
                    )
                return Validation(
                    False, algo.lower(), f"server reports {algo} {got}, expected {value}"
                )
            with self._lock:
                if self.reports_checksums:
                    self.reports_checksums = False
                    self._log.warning(
                        "The S3 server does not report checksums of stored objects; "
                        "validating by re-reading each object and comparing its SHA-512 instead"
                    )
        return self._validate_full(key, size, sha512)

    def _validate_full(self, key: str, size: int, sha512: bytes) -> Validation:
        obj = self.client.get_object(Bucket=self.bucket, Key=key)
        hasher = _core.Sha512()
        n = 0
        body = obj["Body"]
        try:
            for piece in body.iter_chunks(chunk_size=4 << 20):
                hasher.update(piece)
                n += len(piece)
        finally:
            body.close()
        if n != size:
            return Validation(False, "sha512-reread", f"re-read {n} bytes, expected {size}")
        if hasher.digest() != sha512:
            return Validation(
                False, "sha512-reread", "SHA-512 of the stored object differs from the producer's"
            )
        return Validation(True, "sha512-reread", "re-read object matches the producer's SHA-512")


#: User metadata holding where a stored file's first chunk sat in the log
#: (``<topic id>/<partition>/<offset>``), to tell newer versions of a key from older.
POSITION_KEY = "s3ts-position"

#: A conditional write: ``("match", etag)`` or ``("none", "*")`` (the key must not exist).
Condition = tuple[str, str]


def _write_extra(position: str, condition: Condition | None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if position:
        extra["Metadata"] = {POSITION_KEY: position}
    if condition is not None:
        kind, value = condition
        extra["IfMatch" if kind == "match" else "IfNoneMatch"] = value
    return extra


def _put_headers(args: Mapping[str, Any]) -> dict[str, str]:
    """The headers boto3 sends for these ``put_object`` arguments (of those
    :meth:`ObjectStore.put` uses)."""
    headers: dict[str, str] = {}
    for name, value in args.items():
        if name == "Metadata":
            headers.update({f"x-amz-meta-{k}": v for k, v in value.items()})
        else:
            headers[_PUT_HEADERS[name]] = value
    return headers


_PUT_HEADERS = {
    "ChecksumCRC64NVME": "x-amz-checksum-crc64nvme",
    "IfMatch": "If-Match",
    "IfNoneMatch": "If-None-Match",
}


def newer_position(stored: str, ours: str) -> bool:
    """True when ``stored`` names a later message of the same partition of the same
    topic incarnation than ``ours``: the object in the bucket is a newer version."""
    try:
        s_topic, s_part, s_off = stored.rsplit("/", 2)
        o_topic, o_part, o_off = ours.rsplit("/", 2)
        return s_topic == o_topic and s_part == o_part and int(s_off) > int(o_off)
    except ValueError:
        return False


#: Key in what :meth:`ObjectStore.put`/``complete_multipart`` return: the checksum
#: the server reported for what it stored.
CONFIRMED = "confirmed"


def _body(data: BufferLike) -> IO[bytes]:
    # A BufferReader is a binary stream; typeshed's io classes are not typing.IO.
    return cast("IO[bytes]", BufferReader(data))


def _sent(value: str, response: Mapping[str, Any]) -> dict[str, str]:
    out = {"ChecksumCRC64NVME": value}
    got = response.get("ChecksumCRC64NVME")
    if got:
        out[CONFIRMED] = str(got)
    return out


def _unsupported_checksum(err: ClientError) -> bool:
    code = str(err.response.get("Error", {}).get("Code", ""))
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"NotImplemented", "InvalidArgument"} or status == 501
