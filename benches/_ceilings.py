"""The two ceilings of ``benches/e2e.py``, each run as a process of its own so that the
harness measures its CPU time and peak RSS exactly as it measures a processor's
(not a benchmark to run by hand).

``kafka``: (a) the Kafka ceiling. ONE plain confluent-kafka consumer (default settings,
no consumer group: the partitions are assigned) reads the whole topic from the start to
the end offsets taken before, in batches of 64 messages, and does nothing with them but
count their bytes (never asking for more messages than are left, so the last
batch does not wait out the poll timeout).

``s3``: (b) the S3 ceiling. The data set's files are read into memory first and their
CRC64NVMEs computed (none of it timed); then they are uploaded the way our processor
uploads them, with its part size and concurrency: a file of at most one part is one PUT
from the pool of ``--put_workers`` threads (``ProcessorOptions.finish_workers``), a
bigger one a multipart upload (started and completed from that pool) whose parts go
through a pool of ``--part_workers`` threads (``--max_parts_in_flight``); every request
goes through our ``ObjectStore`` with our client settings and the processor's PUT path
(``direct_put.DirectPut``, botocore's signer and HTTP session without the client's
per-call work; a snapshot of a package older than it uses boto3's ``put_object``) and
carries the same CRC64NVME checksums, as the processor's do. No validation afterwards:
only the uploads.

Both write a JSON result to ``--out``: the seconds of the timed part, this process's
CPU seconds in it (``getrusage``), and the CPU seconds of the broker and the S3 server
meanwhile.

Run by e2e.py:  python benches/_ceilings.py kafka|s3 ... --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import CpuMeter, delete_bucket, load_service_env, s3_client, s3_settings, warm_bucket


def _cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def kafka(args: argparse.Namespace) -> dict[str, Any]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": os.environ["LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS"],
            "group.id": f"bench-ceiling-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        md = c.list_topics(args.topic, timeout=10)
        parts = sorted(md.topics[args.topic].partitions)
        ends = {
            p: c.get_watermark_offsets(TopicPartition(args.topic, p), timeout=10)[1] for p in parts
        }
        meter = CpuMeter()
        cpu0 = _cpu_self()
        t0 = time.monotonic()
        c.assign([TopicPartition(args.topic, p, 0) for p in parts])
        pos = dict.fromkeys(parts, 0)
        n = nbytes = errors = 0
        status = "ok"
        while any(pos[p] < ends[p] for p in parts):
            if time.monotonic() - t0 > args.timeout:
                status = f"timeout after {args.timeout:.0f} s"
                break
            # consume() returns once it has num_messages or after the timeout: never ask
            # for more than are left, or the last batch waits out the whole timeout.
            left = sum(ends[p] - pos[p] for p in parts)
            for m in c.consume(num_messages=max(1, min(64, left)), timeout=1.0):
                if m.error():
                    errors += 1
                    continue
                n += 1
                nbytes += len(m.value())
                pos[m.partition()] = m.offset() + 1
        dt = time.monotonic() - t0
        cpu = _cpu_self() - cpu0
        services = meter.read()
    finally:
        c.close()
    return {
        "status": status,
        "messages": n,
        "message_bytes": nbytes,
        "consume_errors": errors,
        "seconds": round(dt, 3),
        "cpu_s": round(cpu, 2),
        "services": services,
    }


def s3(args: argparse.Namespace) -> dict[str, Any]:
    from s3transfer_stream import _core
    from s3transfer_stream.s3 import ObjectStore

    try:  # the processor's PUT path since it has one (see the module docstring)
        from s3transfer_stream.direct_put import DirectPut
    except ImportError:  # a snapshot of an older package
        DirectPut = None

    files: dict[str, int] = json.loads(Path(args.files).read_text())
    root = Path(args.data)
    part = args.part_size
    data: dict[str, bytes] = {}
    crc: dict[str, int] = {}
    part_crcs: dict[str, list[int]] = {}
    for rel in files:
        b = (root / rel).read_bytes()
        data[rel] = b
        crc[rel] = _core.crc64nvme(b)
        if len(b) > part:
            part_crcs[rel] = [_core.crc64nvme(b[i : i + part]) for i in range(0, len(b), part)]

    client = s3_client(max_connections=args.part_workers + args.put_workers)
    bucket = f"bench-ceiling-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    warm_bucket(client, bucket)
    connections = args.part_workers + args.put_workers
    direct = (
        None if DirectPut is None else DirectPut(client, s3_settings(), max_connections=connections)
    )
    store = ObjectStore(client, bucket, direct=direct) if direct else ObjectStore(client, bucket)
    part_pool = ThreadPoolExecutor(args.part_workers, thread_name_prefix="s3-part")
    finish_pool = ThreadPoolExecutor(args.put_workers, thread_name_prefix="s3-finish")

    def single(rel: str) -> None:
        store.put(f"ceiling/{rel}", data[rel], crc64nvme=crc[rel])

    def multipart(rel: str) -> None:
        key = f"ceiling/{rel}"
        upload_id = store.start_multipart(key)
        view = memoryview(data[rel])
        futures = [
            part_pool.submit(
                store.upload_part, key, upload_id, k + 1, view[i : i + part], part_crcs[rel][k]
            )
            for k, i in enumerate(range(0, len(view), part))
        ]
        store.complete_multipart(key, upload_id, [f.result() for f in futures], crc[rel])

    try:
        meter = CpuMeter()
        cpu0 = _cpu_self()
        t0 = time.monotonic()
        futures = [
            finish_pool.submit(multipart if rel in part_crcs else single, rel) for rel in files
        ]
        for f in futures:
            f.result()
        dt = time.monotonic() - t0
        cpu = _cpu_self() - cpu0
        services = meter.read()
    finally:
        part_pool.shutdown(cancel_futures=True)
        finish_pool.shutdown(cancel_futures=True)
        delete_bucket(client, bucket)
    return {
        "status": "ok",
        "single_puts": len(files) - len(part_crcs),
        "multipart_uploads": len(part_crcs),
        "parts": sum(len(v) for v in part_crcs.values()),
        "part_size": part,
        "put_workers": args.put_workers,
        "part_workers": args.part_workers,
        "seconds": round(dt, 3),
        "cpu_s": round(cpu, 2),
        "services": services,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="which", required=True)
    k = sub.add_parser("kafka")
    k.add_argument("--topic", required=True)
    k.add_argument("--timeout", type=float, default=600.0)
    s = sub.add_parser("s3")
    s.add_argument("--data", required=True, help="the data set's root directory")
    s.add_argument("--files", required=True, help="JSON file {relative path: size}")
    s.add_argument("--part_size", type=int, required=True, help="bytes")
    s.add_argument("--put_workers", type=int, required=True)
    s.add_argument("--part_workers", type=int, required=True)
    for p in (k, s):
        p.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    load_service_env()
    result = kafka(args) if args.which == "kafka" else s3(args)
    args.out.write_text(json.dumps(result))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
