"""CPU per single PUT: boto3's ``put_object`` against ``direct_put.DirectPut`` (the
processor's PUT path), same bytes, same headers (our CRC64NVME and the position
metadata), one thread, against the services' S3 server, rounds alternating.

Reports the user+system CPU seconds of this process per PUT (``getrusage``), and the
wall time per PUT, medians (min-max) over ``--repeat`` rounds.

Run:  .venv/bin/python benches/put_path.py [--puts 200] [--size_kib 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Callable

from _common import delete_bucket, fmt_spread, load_service_env, s3_client, s3_settings, spread


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--puts", type=int, default=200, help="PUTs per round and path")
    ap.add_argument("--size_kib", type=int, default=256, help="object size")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (each runs both paths)")
    args = ap.parse_args(argv)

    load_service_env()
    from s3transfer_stream import _core
    from s3transfer_stream.direct_put import DirectPut
    from s3transfer_stream.s3 import _body, b64_crc64

    client = s3_client()
    direct = DirectPut(client, s3_settings(), max_connections=4)
    bucket = f"bench-put-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    data = os.urandom(args.size_kib * 1024)
    crc = b64_crc64(_core.crc64nvme(data))
    position = "bench/0/1"

    def boto3_put(i: int) -> None:
        client.put_object(
            Bucket=bucket,
            Key=f"boto3/{i}",
            Body=_body(data),
            ChecksumCRC64NVME=crc,
            Metadata={"s3ts-position": position},
        )

    def direct_put(i: int) -> None:
        direct.put(
            bucket,
            f"direct/{i}",
            memoryview(data),
            {"x-amz-checksum-crc64nvme": crc, "x-amz-meta-s3ts-position": position},
        )

    paths: dict[str, Callable[[int], None]] = {
        "boto3 put_object": boto3_put,
        "DirectPut": direct_put,
    }
    cpu: dict[str, list[float]] = {k: [] for k in paths}
    wall: dict[str, list[float]] = {k: [] for k in paths}
    try:
        for put in paths.values():  # warm: connections, botocore's loaders
            put(-1)
        for _ in range(args.repeat):
            for name, put in paths.items():
                c0, t0 = _cpu(), time.perf_counter()
                for i in range(args.puts):
                    put(i)
                cpu[name].append((_cpu() - c0) / args.puts * 1e3)
                wall[name].append((time.perf_counter() - t0) / args.puts * 1e3)
    finally:
        delete_bucket(client, bucket)
    print(f"{args.puts} PUTs of {args.size_kib} KiB per round, {args.repeat} rounds, one thread")
    for name in paths:
        print(
            f"  {name:17s} CPU ms/PUT {fmt_spread(spread(cpu[name]), 2)}   wall ms/PUT {fmt_spread(spread(wall[name]), 2)}"
        )
    ratio = statistics.median(cpu["DirectPut"]) / statistics.median(cpu["boto3 put_object"])
    print(f"  DirectPut / boto3 CPU per PUT: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
