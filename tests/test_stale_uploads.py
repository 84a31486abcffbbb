"""Stale multipart uploads: the own-upload record, and the sweep against the real S3 server.

Issue 7, finding 9: the old start-up clean-up aborted every open upload of a key
(a live one of another member too), read one listing page only, and never
cleaned uploads of a member that does not restart.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from s3transfer_stream import _core
from s3transfer_stream.s3 import ObjectStore, b64_crc64
from s3transfer_stream.stale_uploads import (
    OpenUploads,
    RecordBusy,
    abort_stale_uploads,
)

LOG = logging.getLogger("s3transfer_stream")
PART = 5 * 1024 * 1024  # S3's smallest part that is not the last


# -- the record (no services) -------------------------------------------------------


def _t(s: int) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=s)


def test_record_lists_uploads_started_and_not_ended_by_earlier_runs(tmp_path: Path) -> None:
    path = tmp_path / "LOGS" / "open_uploads_t_g.0.jsonl"
    with OpenUploads(path) as rec:
        rec.started("t/a.dat", "id-a", _t(1), bucket="b")
        rec.started("t/b.dat", "id-b", _t(2), bucket="b")
        rec.ended("id-a")
        assert rec.left_open() == []  # nothing of an earlier run
        assert {u.upload_id for u in rec.open_now()} == {"id-b"}
    with OpenUploads(path) as rec:
        [up] = rec.left_open()
        assert (up.key, up.upload_id, up.initiated, up.bucket) == ("t/b.dat", "id-b", _t(2), "b")
        rec.ended("id-b")
        assert rec.left_open() == []
    with OpenUploads(path) as rec:
        assert rec.left_open() == []


def test_record_survives_a_torn_last_line_and_is_compacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rec.0.jsonl"
    with OpenUploads(path) as rec:
        rec.started("t/a.dat", "id-a", _t(1))
        rec.started("t/b.dat", "id-b", _t(2))
        rec.ended("id-b")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"ev":"ended","id":"id-')  # a crash mid-append
    with caplog.at_level(logging.WARNING, logger="s3transfer_stream"):
        rec = OpenUploads(path)
    assert "unreadable last line" in caplog.text
    assert [u.upload_id for u in rec.left_open()] == ["id-a"]
    # Compacted at load: one started line, no torn tail that a new line could glue onto.
    assert path.read_text(encoding="utf-8").count("\n") == 1
    rec.started("t/c.dat", "id-c", _t(3))
    rec.close()
    with OpenUploads(path) as rec:
        assert [u.upload_id for u in rec.left_open()] == ["id-a", "id-c"]


def test_record_is_compacted_while_running(tmp_path: Path) -> None:
    path = tmp_path / "rec.0.jsonl"
    with OpenUploads(path) as rec:
        rec.started("t/keep.dat", "keep", _t(0))
        for i in range(3000):
            rec.started(f"t/{i}.dat", f"id-{i}", _t(i))
            rec.ended(f"id-{i}")
        assert path.read_text(encoding="utf-8").count("\n") < 1100
    with OpenUploads(path) as rec:
        assert [u.upload_id for u in rec.left_open()] == ["keep"]


def test_a_record_in_use_is_never_read_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "rec.0.jsonl"
    live = OpenUploads(path)
    live.started("t/a.dat", "live-id")
    with pytest.raises(RecordBusy):
        OpenUploads(path)
    # claim() skips it and takes the next slot, without adopting the live one's uploads.
    with OpenUploads.claim(tmp_path, "rec") as other:
        assert other.path.name == "rec.1.jsonl"
        assert other.left_open() == []
    live.close()


def test_claim_adopts_records_of_processes_that_died(tmp_path: Path) -> None:
    live = OpenUploads(tmp_path / "rec.0.jsonl")
    live.started("t/live.dat", "live-id")
    dead1 = OpenUploads(tmp_path / "rec.1.jsonl")
    dead1.started("t/d1.dat", "dead-1", _t(1), bucket="b")
    dead2 = OpenUploads(tmp_path / "rec.2.jsonl")
    dead2.started("t/d2.dat", "dead-2", _t(2), bucket="b")
    dead2.started("t/d2-done.dat", "dead-2-done", _t(3))
    dead2.ended("dead-2-done")
    dead1.close()  # the kernel releases the lock of a killed process in the same way
    dead2.close()
    rec = OpenUploads.claim(tmp_path, "rec")
    assert rec.path.name == "rec.1.jsonl"
    assert [u.upload_id for u in rec.left_open()] == ["dead-1", "dead-2"]
    assert not (tmp_path / "rec.2.jsonl").exists()
    rec.close()
    # The adoption is durable: the next taker of slot 1 still has both.
    with OpenUploads.claim(tmp_path, "rec") as again:
        assert [u.upload_id for u in again.left_open()] == ["dead-1", "dead-2"]
    assert [u.upload_id for u in live.open_now()] == ["live-id"]
    live.close()


class _FakeS3:
    """Answers like an S3 server whose times are naive datetimes (UTC implied)."""

    def __init__(self, uploads: list[dict[str, Any]]) -> None:
        self.uploads = uploads
        self.aborted: list[str] = []

    def list_multipart_uploads(self, **kw: Any) -> dict[str, Any]:
        return {"Uploads": self.uploads, "IsTruncated": False}

    def list_parts(self, **kw: Any) -> dict[str, Any]:
        return {"Parts": [], "IsTruncated": False}

    def abort_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str) -> None:
        self.aborted.append(UploadId)


def test_naive_and_aware_initiated_times() -> None:
    now = datetime.now(UTC)
    old, new = now - timedelta(hours=3), now - timedelta(minutes=10)
    fake = _FakeS3(
        [
            {"Key": "t/a", "UploadId": "old-naive", "Initiated": old.replace(tzinfo=None)},
            {"Key": "t/b", "UploadId": "new-naive", "Initiated": new.replace(tzinfo=None)},
            {"Key": "t/c", "UploadId": "old-aware", "Initiated": old.astimezone()},
            {"Key": "t/d", "UploadId": "new-aware", "Initiated": new.astimezone()},
            {"Key": "t/e", "UploadId": "no-time"},
        ]
    )
    got = abort_stale_uploads(fake, "b", "t/", own_left_open=(), older_than_seconds=3600, log=LOG)
    assert sorted(fake.aborted) == ["old-aware", "old-naive"]
    assert sorted(a.upload_id for a in got) == ["old-aware", "old-naive"]


# -- against the real S3 server ------------------------------------------------------------


def _start(client: Any, bucket: str, key: str) -> str:
    return str(client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])


def _open_ids(client: Any, bucket: str) -> set[str]:
    ids = set()
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        ids |= {u["UploadId"] for u in page.get("Uploads", [])}
    return ids


def _aborted(client: Any, bucket: str, key: str, upload_id: str) -> bool:
    """True if S3 no longer knows the upload (aborted: a part is refused)."""
    try:
        client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x")
    except ClientError as err:
        return bool(err.response["Error"]["Code"] == "NoSuchUpload")
    return False


def _part(client: Any, bucket: str, key: str, upload_id: str, data: bytes) -> dict[str, Any]:
    r = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=data)
    return {"PartNumber": 1, "ETag": r["ETag"]}


@pytest.mark.integration
def test_only_our_own_left_open_uploads_are_aborted(
    s3_client: Any,
    new_bucket: Callable[[], str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bucket = new_bucket()
    c = s3_client
    # An earlier run of ours started three uploads and was killed before ending them;
    # one of them it had completed (the crash came before the "ended" line).
    with OpenUploads.claim(tmp_path, "open_uploads_t_g") as earlier:
        ours = [_start(c, bucket, "t/x.dat"), _start(c, bucket, "t/sub/y.dat")]
        for key, uid in zip(["t/x.dat", "t/sub/y.dat"], ours, strict=True):
            earlier.started(key, uid, bucket=bucket)
        done = _start(c, bucket, "t/done.dat")
        earlier.started("t/done.dat", done, bucket=bucket)
        c.complete_multipart_upload(
            Bucket=bucket,
            Key="t/done.dat",
            UploadId=done,
            MultipartUpload={"Parts": [_part(c, bucket, "t/done.dat", done, b"done")]},
        )
    # Another member is uploading the same key right now, and one more file.
    live_same_key = _start(c, bucket, "t/x.dat")
    live_parts = [_part(c, bucket, "t/x.dat", live_same_key, b"live")]
    live_other = _start(c, bucket, "t/z.dat")
    # Another topic's upload, under a name that merely starts like ours.
    other_topic = _start(c, bucket, "t2/x.dat")

    rec = OpenUploads.claim(tmp_path, "open_uploads_t_g")
    assert {u.upload_id for u in rec.left_open()} == {*ours, done}
    with caplog.at_level(logging.INFO, logger="s3transfer_stream"):
        got = rec.sweep(c, bucket, "t/", older_than_seconds=3600)
    assert got.complete
    assert sorted(got) == sorted(
        [(k, u, got[0].why) for k, u in zip(["t/x.dat", "t/sub/y.dat"], ours, strict=True)]
    )
    assert _open_ids(c, bucket) == {live_same_key, live_other, other_topic}
    for key, uid in zip(["t/x.dat", "t/sub/y.dat"], ours, strict=True):
        assert f"Aborted the multipart upload {uid} of {bucket}/{key}: left open" in caplog.text
        assert _aborted(c, bucket, key, uid), uid
    assert caplog.text.count("Aborted the multipart upload") == 2
    # The completed one was not touched: its object is there.
    assert c.get_object(Bucket=bucket, Key="t/done.dat")["Body"].read() == b"done"
    # Settled, including the completed one: nothing is left for the next run.
    assert rec.left_open() == []
    rec.close()
    with OpenUploads.claim(tmp_path, "open_uploads_t_g") as rec:
        assert rec.left_open() == []
    # The other member's upload is intact and completes.
    c.complete_multipart_upload(
        Bucket=bucket,
        Key="t/x.dat",
        UploadId=live_same_key,
        MultipartUpload={"Parts": live_parts},
    )
    assert c.get_object(Bucket=bucket, Key="t/x.dat")["Body"].read() == b"live"


def test_record_keeps_unanswered_starts_until_settled(tmp_path: Path) -> None:
    path = tmp_path / "open_uploads_t_g.0.jsonl"
    with OpenUploads(path) as rec:
        answered = rec.starting("t/a.dat", bucket="b")
        rec.started("t/a.dat", "id-a", bucket="b", token=answered)
        rec.starting("t/b.dat", bucket="b")  # killed before the answer was recorded
        assert rec.left_unrecorded() == []  # nothing of an earlier run
    with OpenUploads(path) as rec:
        [intent] = rec.left_unrecorded()
        assert (intent.key, intent.bucket) == ("t/b.dat", "b")
        assert [u.upload_id for u in rec.left_open()] == ["id-a"]
        text = path.read_text()  # rewritten at load: the open upload and the intent only
        assert text.count('"ev":"starting"') == 1 and text.count('"ev":"started"') == 1
    # A process that died with the intent: the next one adopts it.
    with OpenUploads.claim(tmp_path, "open_uploads_t_g") as rec:
        assert [i.token for i in rec.left_unrecorded()] == [intent.token]


@pytest.mark.integration
def test_uploads_of_a_start_that_was_never_recorded_are_aborted(
    s3_client: Any, new_bucket: Callable[[], str], tmp_path: Path
) -> None:
    """Issue 8's CI, crash matrix: a run killed between CreateMultipartUpload's
    answer and its record line left an upload nobody ever aborted."""
    bucket = new_bucket()
    c = s3_client
    # Someone's upload of the key from well before the start (its window is long gone).
    with OpenUploads.claim(tmp_path, "open_uploads_t_g") as earlier:
        earlier.starting("t/x.dat", bucket=bucket)
        orphan = _start(c, bucket, "t/x.dat")  # the answer that was never recorded
    # Another member's live uploads: one of the same key with a part, one of another key.
    live_same_key = _start(c, bucket, "t/x.dat")
    live_parts = [_part(c, bucket, "t/x.dat", live_same_key, b"live")]
    other_key = _start(c, bucket, "t/y.dat")
    rec = OpenUploads.claim(tmp_path, "open_uploads_t_g")
    got = rec.sweep(c, bucket, "t/", older_than_seconds=3600)
    assert [(a.key, a.upload_id) for a in got] == [("t/x.dat", orphan)]
    assert "died before recording it" in got[0].why
    assert _aborted(c, bucket, "t/x.dat", orphan)
    assert _open_ids(c, bucket) == {live_same_key, other_key}
    assert rec.left_unrecorded() == []
    rec.close()
    with OpenUploads.claim(tmp_path, "open_uploads_t_g") as rec:
        assert rec.left_unrecorded() == []  # settled for good
    c.complete_multipart_upload(
        Bucket=bucket, Key="t/x.dat", UploadId=live_same_key, MultipartUpload={"Parts": live_parts}
    )


@pytest.mark.integration
def test_an_unrecorded_start_spares_uploads_outside_its_time_bound(
    s3_client: Any, new_bucket: Callable[[], str], tmp_path: Path
) -> None:
    bucket = new_bucket()
    c = s3_client
    before = _start(c, bucket, "t/x.dat")  # initiated before the intent (by someone else)
    path = tmp_path / "open_uploads_t_g.0.jsonl"
    at = datetime.now(UTC) + timedelta(seconds=30)  # as if the start came later
    path.write_text(
        f'{{"ev":"starting","key":"t/x.dat","at":"{at.isoformat()}","bucket":"{bucket}",'
        '"tok":"ab"}\n'
    )
    with OpenUploads.claim(tmp_path, "open_uploads_t_g") as rec:
        assert rec.sweep(c, bucket, "t/", older_than_seconds=3600) == []
    assert _open_ids(c, bucket) == {before}
    c.abort_multipart_upload(Bucket=bucket, Key="t/x.dat", UploadId=before)


@pytest.mark.integration
def test_old_idle_uploads_of_members_that_are_gone_are_aborted(
    s3_client: Any, new_bucket: Callable[[], str], caplog: pytest.LogCaptureFixture
) -> None:
    bucket = new_bucket()
    c = s3_client
    old_idle = [_start(c, bucket, "t/old1.dat"), _start(c, bucket, "t/old2.dat")]
    old_busy = _start(c, bucket, "t/busy.dat")  # old, but parts keep arriving
    other_topic = _start(c, bucket, "u/old.dat")
    time.sleep(3.2)
    busy_parts = [_part(c, bucket, "t/busy.dat", old_busy, b"busy")]
    recent = _start(c, bucket, "t/recent.dat")
    with caplog.at_level(logging.INFO, logger="s3transfer_stream"):
        got = abort_stale_uploads(
            c, bucket, "t/", own_left_open=(), older_than_seconds=2.0, log=LOG
        )
    assert got.complete
    assert sorted(a.upload_id for a in got) == sorted(old_idle)
    for a in got:
        assert "its member is gone" in a.why
        assert f"Aborted the multipart upload {a.upload_id} of {bucket}/{a.key}" in caplog.text
        assert _aborted(c, bucket, a.key, a.upload_id), a
    assert _open_ids(c, bucket) == {old_busy, recent, other_topic}
    c.complete_multipart_upload(
        Bucket=bucket, Key="t/busy.dat", UploadId=old_busy, MultipartUpload={"Parts": busy_parts}
    )
    # Without an age threshold, nothing of anyone else is touched.
    assert (
        abort_stale_uploads(c, bucket, "t/", own_left_open=(), older_than_seconds=None, log=LOG)
        == []
    )
    assert _open_ids(c, bucket) == {recent, other_topic}


class _Counting:
    def __init__(self, client: Any) -> None:
        self._client = client
        self.list_calls = 0

    def list_multipart_uploads(self, **kw: Any) -> Any:
        self.list_calls += 1
        return self._client.list_multipart_uploads(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.mark.integration
def test_the_whole_listing_is_read_page_by_page(
    s3_client: Any, new_bucket: Callable[[], str]
) -> None:
    bucket = new_bucket()
    c = s3_client
    # Several uploads per key, so pages also end between uploads of one key; keys
    # that only survive the listing url-encoded (space as "+", "%", a control character).
    odd = "t/a b+c%20\u00fc\x01.dat"
    keys = ["t/a.dat", "t/a.dat", odd, odd, "t/c.dat", "t/c.dat", "t/d.dat"]
    ids = [_start(c, bucket, k) for k in keys]
    own = set(ids[1:6])
    counting = _Counting(c)
    got = abort_stale_uploads(
        counting, bucket, "t/", own_left_open=own, older_than_seconds=None, log=LOG, page_size=2
    )
    assert got.complete
    assert counting.list_calls >= 4
    assert {a.upload_id for a in got} == own
    assert got.seen == set(ids)
    assert _open_ids(c, bucket) == {ids[0], ids[6]}
    assert sorted(a.key for a in got) == sorted(keys[1:6])


@pytest.mark.integration
def test_a_listing_error_is_a_warning_naming_the_bucket(
    s3_client: Any, services: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="s3transfer_stream"):
        got = abort_stale_uploads(
            s3_client,
            "no-such-bucket-s3ts",
            "t/",
            own_left_open={"x"},
            older_than_seconds=60,
            log=LOG,
        )
    assert got == [] and not got.complete
    assert got.seen == set() and got.failed == set()
    assert "'no-such-bucket-s3ts'" in caplog.text
    assert services["SECRET_KEY_ID"] not in caplog.text


@pytest.mark.integration
def test_server_initiated_times_are_utc_and_sane(
    s3_client: Any, new_bucket: Callable[[], str]
) -> None:
    bucket = new_bucket()
    before = datetime.now(UTC)
    uid = _start(s3_client, bucket, "t/when.dat")
    after = datetime.now(UTC)
    [up] = s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert up["UploadId"] == uid
    initiated = up["Initiated"]
    assert initiated.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=2) <= initiated <= after + timedelta(seconds=2)


@pytest.mark.integration
def test_marked_uploads_carry_group_and_member_to_the_object_not_the_listing(
    s3_client: Any, new_bucket: Callable[[], str]
) -> None:
    bucket = new_bucket()
    store = ObjectStore(s3_client, bucket, group="lab-s3 ü", member="host-1:4242")
    key = "t/marked.dat"
    uid = store.start_multipart(key)
    [up] = s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    # What a listing can tell about an upload: no user metadata.
    assert set(up) <= {
        "Key",
        "UploadId",
        "Initiated",
        "Initiator",
        "Owner",
        "StorageClass",
        "ChecksumAlgorithm",
        "ChecksumType",
    }
    data = b"m" * PART + b"tail"
    crc = _core.crc64nvme(data)
    parts = [store.upload_part(key, uid, 1, data, crc)]
    store.complete_multipart(key, uid, parts, crc)
    head = s3_client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["Metadata"] == {"s3ts-group": "lab-s3 %C3%BC", "s3ts-member": "host-1:4242"}
    assert head.get("ChecksumCRC64NVME") == b64_crc64(crc)
    # Unmarked stores send no metadata at all.
    plain = ObjectStore(s3_client, bucket)
    uid = plain.start_multipart("t/plain.dat")
    plain.abort_multipart("t/plain.dat", uid)


@pytest.mark.integration
def test_bucket_lifecycle_rule_backstop_is_accepted(
    s3_client: Any, new_bucket: Callable[[], str]
) -> None:
    bucket = new_bucket()
    rule = {
        "ID": "abort-incomplete-multipart-uploads",
        "Status": "Enabled",
        "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2},
    }
    s3_client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [rule]}
    )
    [got] = s3_client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert got["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 2}
    assert got["Status"] == "Enabled"
    s3_client.delete_bucket_lifecycle(Bucket=bucket)


def test_a_killed_process_releases_its_record(tmp_path: Path) -> None:
    """kill -9 of the owner: the kernel drops its lock, and the next claim adopts it."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from s3transfer_stream.stale_uploads import OpenUploads\n"
        "rec = OpenUploads.claim(Path(sys.argv[1]), 'rec')\n"
        "rec.started('t/k.dat', 'killed-id', bucket='b')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    live = OpenUploads(tmp_path / "rec.0.jsonl")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    with OpenUploads.claim(tmp_path, "rec") as rec:
        assert rec.path.name == "rec.1.jsonl"
        assert [u.upload_id for u in rec.left_open()] == ["killed-id"]
    live.close()
