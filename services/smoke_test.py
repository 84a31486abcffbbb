#!/usr/bin/env python3
"""End-to-end smoke test of the running local services (needs confluent-kafka and boto3).

    . services/env.sh && bash services/all.sh start
    python services/smoke_test.py

Kafka: creates a topic with 3 partitions (AdminClient), produces one 1 MiB message (above the
broker's default 1 MB limit, so the raised message.max.bytes is exercised), consumes it back,
deletes the topic. S3: creates a bucket with boto3 (path-style, region us-east-1), puts and gets
an object, deletes both. Exit 0 when all of that worked.
"""

import os
import sys
import time
import uuid

import boto3
from botocore.config import Config
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def kafka_smoke():
    bootstrap = os.environ.get("LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS") or "127.0.0.1:" + os.environ.get(
        "S3TS_KAFKA_PORT", "39092")
    topic = "s3ts-smoke-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)
    md = admin.list_topics(topic, timeout=10).topics[topic]
    assert md.error is None and len(md.partitions) == 3, md
    payload = os.urandom(1024 * 1024)
    delivered = []
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 64 * 1024 * 1024,
                         "enable.idempotence": True})
    producer.produce(topic, key=b"k", value=payload, partition=2,
                     on_delivery=lambda err, msg: delivered.append((err, msg.partition() if msg else None)))
    assert producer.flush(30) == 0 and delivered and delivered[0][0] is None, delivered
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic + "-group",
                         "auto.offset.reset": "earliest", "fetch.max.bytes": 64 * 1024 * 1024,
                         "max.partition.fetch.bytes": 64 * 1024 * 1024, "enable.auto.commit": False})
    consumer.subscribe([topic])
    deadline = time.time() + 60
    msg = None
    while time.time() < deadline:
        m = consumer.poll(1.0)
        if m is None:
            continue
        assert m.error() is None, m.error()
        msg = m
        break
    assert msg is not None, "no message consumed within 60 s"
    assert msg.value() == payload and msg.partition() == 2
    consumer.commit(msg, asynchronous=False)
    consumer.close()
    admin.delete_topics([topic])[topic].result(30)
    print(f"kafka ok: {bootstrap} topic {topic} (3 partitions): 1 MiB message produced to and consumed "
          f"from partition {msg.partition()} offset {msg.offset()}, offset committed, topic deleted")


def s3_smoke():
    s3 = boto3.client(
        "s3", endpoint_url=os.environ.get("ENDPOINT_URL", "http://127.0.0.1:38333"),
        region_name=os.environ.get("REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("ACCESS_KEY_ID", "s3ts-local"),
        aws_secret_access_key=os.environ.get("SECRET_KEY_ID", "s3ts-local-secret"),
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"))
    bucket = "s3ts-smoke-" + uuid.uuid4().hex[:8]
    s3.create_bucket(Bucket=bucket)
    body = os.urandom(100_000)
    s3.put_object(Bucket=bucket, Key="dir/file.bin", Body=body)
    assert s3.get_object(Bucket=bucket, Key="dir/file.bin")["Body"].read() == body
    s3.delete_object(Bucket=bucket, Key="dir/file.bin")
    s3.delete_bucket(Bucket=bucket)
    print(f"s3 ok: {s3.meta.endpoint_url} bucket {bucket} created (path-style), object put/get/deleted, bucket deleted")


if __name__ == "__main__":
    kafka_smoke()
    s3_smoke()
    sys.exit(0)
