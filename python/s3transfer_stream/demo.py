"""The main job on the embedded default, end to end on this machine.

Makes a sample directory tree, sends it through the local Kafka broker with the
producer, runs S3TransferStreamProcessor until every file is in the local S3
bucket, then lists what landed and how each object was validated. The local
services come from ``services/`` (``./run demo`` starts them first).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from pathlib import Path

from .config import load_config
from .direct_put import DirectPut
from .errors import S3TransferStreamError
from .kafka import create_topic, make_producer
from .logs import setup_logging
from .processor import ProcessorOptions, S3TransferStreamProcessor
from .producer import send_file
from .s3 import ObjectStore, make_client

MiB = 1 << 20


def make_sample_tree(root: Path, big_mib: int) -> dict[str, int]:
    """A small lab-like tree: text, CSV, binaries, nested folders, one large file."""
    rng = random.Random(20261127)
    files: dict[str, bytes] = {
        "README.txt": b"Sample data produced by the s3transfer-stream demo.\n",
        "run_001/settings.json": b'{"temperature_K": 293.15, "exposure_ms": 12}\n',
        "run_001/spectrum.csv": "".join(f"{i};{rng.random():.6f}\n" for i in range(20000)).encode(),
        "run_001/images/frame_0001.raw": rng.randbytes(3 * MiB + 123),
        "run_001/images/frame_0002.raw": rng.randbytes(3 * MiB + 456),
        "run_002/notes/résumé_échantillon.txt": b"Notes with a non-ASCII name.\n",
        "run_002/empty_marker.flag": b"",
        "run_002/volume.bin": rng.randbytes(big_mib * MiB + 789),
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {rel: len(data) for rel, data in files.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="s3transfer-stream-demo",
        description="Send a sample tree through the local Kafka broker into the local S3 bucket and "
        "show what landed. Needs the services from services/ running (./run demo starts them).",
    )
    parser.add_argument(
        "--bucket", default="s3transfer-demo", help="bucket to fill (created if missing)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo_output"),
        help="where the sample tree, logs and registry go",
    )
    parser.add_argument(
        "--big_mib", type=int, default=48, help="size of the large sample file in MiB"
    )
    args = parser.parse_args(argv)

    workdir: Path = args.workdir.resolve()
    log = setup_logging("S3TransferStreamProcessor", workdir / "LOGS")
    try:
        config = load_config("local", require=("broker", "producer", "consumer", "s3"))
    except S3TransferStreamError as err:
        print(
            f"demo: {err}\n(start the services and load their settings: ./run demo)",
            file=sys.stderr,
        )
        return 2
    assert config.s3 is not None
    run_id = time.strftime("%Y%m%d-%H%M%S")
    topic = f"demo-{run_id}"
    sample = workdir / f"sample-{run_id}"
    sizes = make_sample_tree(sample, args.big_mib)
    log.info(f"Sample tree: {len(sizes)} files, {sum(sizes.values())} bytes in {sample}")

    bootstrap = config.broker["bootstrap.servers"]
    create_topic(bootstrap, topic, 3)
    client = make_client(config.s3)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if args.bucket not in existing:
        client.create_bucket(Bucket=args.bucket)

    producer = make_producer(config.producer)
    started = time.monotonic()
    for rel in sizes:
        result = send_file(producer, topic, sample / rel, root=sample, n_partitions=3)
        if not result.complete:
            log.error(f"Could not send {rel}: {result.errors}")
            return 1
    log.info(f"Produced {len(sizes)} files to topic {topic} in {time.monotonic() - started:.1f} s")

    options = ProcessorOptions(
        bucket=args.bucket, topic=topic, group_id=f"demo-{uuid.uuid4().hex[:8]}", output_dir=workdir
    )
    processor = S3TransferStreamProcessor(
        config,
        options,
        ObjectStore(client, args.bucket, direct=DirectPut(client, config.s3, max_connections=16)),
    )
    processor.start()
    deadline = time.monotonic() + 600
    try:
        while processor.stats.files_transferred + processor.stats.files_failed < len(sizes):
            if time.monotonic() > deadline or processor.stop.is_set():
                log.error("The processor did not finish in time")
                return 1
            time.sleep(0.2)
    finally:
        processor.shutdown()
    elapsed = time.monotonic() - started

    results = {r.rel_path: r for r in processor.stats.results}
    listing = {
        obj["Key"]: obj["Size"]
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=args.bucket, Prefix=f"{topic}/"
        )
        for obj in page.get("Contents", [])
    }
    print(f"\nObjects in s3://{args.bucket}/{topic}/ (endpoint {config.s3.endpoint_url}):")
    width = max(len(k) for k in listing) if listing else 10
    ok = True
    for rel, size in sorted(sizes.items()):
        key = f"{topic}/{rel}"
        stored = listing.get(key)
        r = results.get(rel)
        how = r.validation if r else "NOT TRANSFERRED"
        mode = (f"{r.parts} parts" if r.parts else "single PUT") if r else ""
        ok &= stored == size and r is not None
        print(
            f"  {key:<{width}}  {stored if stored is not None else '-':>10} bytes  {mode:<10}  {how}"
        )
    total = sum(sizes.values())
    print(
        f"\n{len(listing)} objects, {total} bytes, produced and transferred in {elapsed:.1f} s. "
        f"Registry and log: {workdir / 'LOGS'}"
    )
    print(
        "All files landed with identical sizes and were validated."
        if ok
        else "SOME FILES ARE MISSING."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
