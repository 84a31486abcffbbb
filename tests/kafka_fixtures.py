"""Kafka fixtures and helpers for the producer tests (no conftest needed).

``kafka_bootstrap`` is the broker from ``$LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS``;
tests that use it are skipped, with the reason, when that variable is unset or the
broker does not answer. ``new_topic(partitions)`` creates a fresh uniquely named
topic and deletes it after the test. Same names and signatures as the session
fixtures of ``tests/conftest.py``, so either set can serve these tests.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from s3transfer_stream.kafka import create_topic, delete_topic

BOOTSTRAP_ENV = "LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if not bootstrap:
        pytest.skip(f"${BOOTSTRAP_ENV} is not set (source services/env.sh and start the broker)")
    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5)
    except KafkaException as exc:
        pytest.skip(f"the Kafka broker at {bootstrap} does not answer: {exc}")
    return bootstrap


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        create_topic(kafka_bootstrap, name, partitions)
        made.append(name)
        return name

    yield make
    if made:
        try:
            delete_topic(kafka_bootstrap, made)
        except Exception:  # cleanup only
            pass


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: str
    value: bytes


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Record]:
    """Every message now in ``topic``, read up to each partition's high watermark."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 67108864,
            "max.partition.fetch.bytes": 67108864,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        ends: dict[int, int] = {}
        for p in partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > 0:
                ends[p] = high
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        records: list[Record] = []
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(records)} messages of {topic}, not all of them")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            p, offset = msg.partition(), msg.offset()
            key = msg.key()
            records.append(
                Record(
                    p, offset, key.decode("utf-8") if key is not None else "", msg.value() or b""
                )
            )
            if offset + 1 >= ends[p]:
                done.add(p)
        return records
    finally:
        consumer.close()
