"""Reading a topic back, for the producer tests (the broker and topic fixtures
are the session fixtures of ``tests/conftest.py``)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

BOOTSTRAP_ENV = "LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS"


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
