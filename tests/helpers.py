"""Helpers for integration tests: make file trees, produce their chunks, run the CLI."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from faultproxy import FaultProxy
from s3transfer_stream import _core
from s3transfer_stream.kafka import file_partition

CHUNK = 524288


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def encoded_chunks(root: Path, rel: str, chunk_size: int = CHUNK) -> list[tuple[str, Any]]:
    """(key, value) of every chunk of ``root/rel``, in order."""
    path = root / rel
    subdir = Path(rel).parent.as_posix()
    subdir = "" if subdir == "." else subdir
    ch = _core.FileChunker(str(path), chunk_size)
    values = ch.messages(1, ch.n_chunks, subdir, path.name)
    return [
        (_core.message_key(subdir, path.name, i + 1, ch.n_chunks), v) for i, v in enumerate(values)
    ]


def producer(bootstrap: str) -> Producer:
    return Producer(
        {"bootstrap.servers": bootstrap, "message.max.bytes": "67108864", "linger.ms": "20"}
    )


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[str, Any, int]]) -> int:
    """Produces (key, value, partition) triples and waits until all are acknowledged."""
    p = producer(bootstrap)
    errors: list[str] = []
    n = 0
    for key, value, partition in messages:
        while True:
            try:
                p.produce(
                    topic,
                    key=key,
                    value=value,
                    partition=partition,
                    on_delivery=lambda err, msg: errors.append(str(err)) if err else None,
                )
                break
            except BufferError:
                p.poll(0.1)
        n += 1
        p.poll(0)
    assert p.flush(60) == 0, "messages left unsent"
    assert not errors, errors
    return n


def produce_tree(
    bootstrap: str, topic: str, root: Path, rels: Iterable[str], partitions: int
) -> int:
    """Produces files as our producer does: all chunks of a file to one partition, in order."""

    def gen() -> Iterable[tuple[str, Any, int]]:
        for rel in rels:
            part = file_partition(rel, partitions)
            for key, value in encoded_chunks(root, rel):
                yield key, value, part

    return produce(bootstrap, topic, gen())


def rand_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


#: Every ProcessorRun started, so a failing test leaves no processor behind.
RUNNING: list[ProcessorRun] = []


class ProcessorRun:
    """The S3TransferStreamProcessor CLI in a subprocess, driven through stdin."""

    def __init__(
        self,
        bucket: str,
        topic: str,
        group: str,
        output_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        tag: str = "",
    ) -> None:
        self.stderr_path = output_dir.parent / f"processor-{group}{'-' + tag if tag else ''}.stderr"
        self._err = open(self.stderr_path, "w")
        args = [
            sys.executable,
            "-m",
            "s3transfer_stream.cli.processor",
            bucket,
            "--topic_name",
            topic,
            "--consumer_group_id",
            group,
            "--output_dir",
            str(output_dir),
            "--update_seconds",
            "2",
            *extra,
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            text=True,
            env=os.environ.copy() if env is None else env,
        )
        RUNNING.append(self)

    def command(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"processor exited early ({self.proc.returncode}):\n{self.stderr()}"
                )
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}:\n{self.stderr()[-5000:]}")

    def quit(self, timeout: float = 120) -> int:
        self.command("quit")
        return self.wait(timeout)

    def terminate(self, timeout: float = 120) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 120) -> int:
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._err.close()
        return rc


def list_objects(client: Any, bucket: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj["Size"]
    return out


def read_object(client: Any, bucket: str, key: str) -> bytes:
    body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


class S3Proxy(FaultProxy):
    """The fault proxy (``tests/faultproxy.py``) under the name older tests use.

    ``deny()`` answers every request with an S3 ``AccessDenied`` (HTTP 403), as a bucket
    whose policy forbids writing would, including on connections already open;
    botocore does not retry it. ``allow()`` passes again; ``denied`` counts the answers.
    """


def committed_offsets(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    """The group's committed offset of each partition of ``topic`` that has one."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient
    from s3transfer_stream.kafka import partition_count

    admin = AdminClient({"bootstrap.servers": bootstrap})
    n = partition_count(admin, topic, bootstrap=bootstrap)
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(n)])
    result = admin.list_consumer_group_offsets([request])[group].result(timeout=30)
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.offset >= 0}


def services_script(name: str, action: str, *, check: bool = True) -> int:
    """``services/<name>.sh <action>`` (``start`` waits until the service answers)."""
    script = Path(__file__).resolve().parents[1] / "services" / f"{name}.sh"
    done = subprocess.run(
        ["bash", str(script), action], check=check, capture_output=not check, timeout=180
    )
    return done.returncode


def kafka_service(action: str) -> None:
    """Stops or starts the shared local broker (``services/kafka.sh stop|start``)."""
    services_script("kafka", action)


def kafka_running() -> bool:
    return services_script("kafka", "status", check=False) == 0


def log_ends(bootstrap: str, topic: str) -> dict[int, int]:
    """The high watermark (log end) of every partition of ``topic``."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"ends-{os.urandom(8).hex()}",
            "enable.auto.commit": False,
        }
    )
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in sorted(parts)
        }
    finally:
        c.close()


def journal_entries(logs_dir: Path, topic: str, group: str) -> list[Any]:
    """The transfer journal's entries (``JournalEntry``) of ``topic``/``group`` under
    ``logs_dir`` (the processor's ``<output_dir>/LOGS``), oldest first; [] if none.
    Read without opening the journal (no rename, no append handle)."""
    from s3transfer_stream.journal import JournalEntry
    from s3transfer_stream.registry import journal_name

    path = logs_dir / journal_name(topic, group)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [JournalEntry.from_json(line) for line in lines if line.strip()]


def journal_outcomes(logs_dir: Path, topic: str, group: str) -> list[tuple[str, str]]:
    """(rel_path, outcome) of every journal entry, sorted: ``transferred`` or how the
    file was given up (``failed``, ``mismatched_hash``, ``abandoned``)."""
    return sorted((e.rel_path, e.outcome) for e in journal_entries(logs_dir, topic, group))


def multipart_parts(client: Any, bucket: str, key: str) -> int:
    """How many parts the object was uploaded in (from its ``<md5>-<n>`` ETag); 0 for
    an object written by a single PUT."""
    etag: str = client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    _, dash, n = etag.rpartition("-")
    return int(n) if dash else 0


def filled_log_ends(bootstrap: str, topic: str) -> dict[int, int]:
    """:func:`log_ends` of the partitions holding messages: what
    :func:`committed_offsets` returns once a group has committed everything."""
    return {p: end for p, end in log_ends(bootstrap, topic).items() if end > 0}


def committed_metadata(bootstrap: str, topic: str, group: str) -> dict[int, str]:
    """The metadata of the group's committed offset of each partition of ``topic`` that
    has one (``s3ts1:<topic id>:<runs>`` lists offsets done above the commit)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient
    from s3transfer_stream.kafka import partition_count

    admin = AdminClient({"bootstrap.servers": bootstrap})
    n = partition_count(admin, topic, bootstrap=bootstrap)
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(n)])
    result = admin.list_consumer_group_offsets([request])[group].result(timeout=30)
    return {tp.partition: tp.metadata or "" for tp in result.topic_partitions if tp.offset >= 0}


def done_above_commit(bootstrap: str, topic: str, group: str) -> dict[int, list[tuple[int, int]]]:
    """The offset runs ``[lo, hi)`` each partition's commit metadata records as done
    above the committed offset (decoded with the topic id the metadata names)."""
    from s3transfer_stream.offsets import METADATA_PREFIX, OffsetRuns

    offsets = committed_offsets(bootstrap, topic, group)
    out: dict[int, list[tuple[int, int]]] = {}
    for p, text in committed_metadata(bootstrap, topic, group).items():
        topic_id = text[len(METADATA_PREFIX) :].split(":", 1)[0]
        out[p] = OffsetRuns.decode(text, offsets[p], topic_id).runs()
    return out
