"""End-to-end throughput, side by side: OpenMSIStream 1.8.8's S3TransferStreamProcessor and ours.

One run of this script:

1. makes a data set (default 16 files x 32 MiB of random bytes + 200 small files of
   1-64 KiB, in subdirectories; ``--scale`` multiplies both file counts);
2. produces it ONCE, with our producer (``producer.send_file``, file-affine partitions,
   512 KiB chunks), to a fresh topic with 3 partitions; then, for scale, reads the whole
   topic with one plain consumer and PUTs every file with boto3 from 8 threads
   (``--no_baselines`` skips this);
3. runs each processor on that topic, one after the other, each with its own fresh
   consumer group, its own fresh bucket and ``--n_threads 2``; the order alternates over
   ``--repeat`` runs. Each time it measures the wall time from process start until every
   expected object is listed in the bucket with the right size (``list_objects_v2`` polled
   every 0.25 s), the process's peak RSS (the kernel's ``VmHWM`` and psutil
   samples, every 50 ms, children included) and its CPU time (user+sys, at completion and
   over the whole life including shutdown);
4. verifies a sample of the objects byte for byte against the source files;
5. prints a table and the ratios and writes the results to
   ``benches/results/e2e-<date>.json``.

With ``--also_tuned`` our processor runs a third time per round with the consumer settings
that ``rss_big_file.py --sweep`` found best (see BENCHMARKS.md); it is not part of the
ours-vs-theirs ratios.

Run:  .venv/bin/python benches/e2e.py [--scale 0.25] [--repeat 2] [--only ours|theirs] [--also_tuned]
The local services must be running (``bash services/all.sh start``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import (
    BENCHES,
    OMS_CONFIG,
    RESULTS,
    MiB,
    delete_bucket,
    fmt_table,
    load_now,
    load_service_env,
    log,
    machine_info,
    now_iso,
    oms_env,
    oms_python,
    package_versions,
    processor_exe,
    read_object,
    run_until_objects,
    s3_client,
    snapshot_package,
    today,
    wait_for_low_load,
    write_json,
)

PROGRAMS = ("ours", "theirs")
#: ``--also_tuned``: our processor once more, with the settings that rss_big_file.py's sweep
#: found best ("proposal A"); run through benches/_ours_tuned.py for the batch size.
TUNED = "ours-tuned"
TUNED_ARGS = ["--max_parts_in_flight", "4"]
TUNED_CONSUMER = {"fetch.queue.backoff.ms": "10", "queued.max.messages.kbytes": "16384"}
TUNED_ENV = {"BENCH_BATCH_SIZE": "16"}
ALL_PROGRAMS = (*PROGRAMS, TUNED)
WORK_PREFIX = "s3ts-bench-e2e-"


def make_dataset(root: Path, args: argparse.Namespace) -> dict[str, int]:
    """Writes the files; returns ``{relative posix path: size}``."""
    rng = random.Random(args.seed)
    files: dict[str, int] = {}
    n_big = max(0, round(args.big_files * args.scale))
    n_small = max(0, round(args.small_files * args.scale))
    big = args.big_mib * MiB
    for i in range(n_big):
        rel = f"big/run_{i // 8:02d}/frame_{i:03d}.dat"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            left = big
            while left:
                n = min(left, 8 * MiB)
                f.write(os.urandom(n))
                left -= n
        files[rel] = big
    for i in range(n_small):
        rel = f"small/sample_{i % 10}/meta_{i:04d}.bin"
        size = rng.randint(args.small_min_kib * 1024, args.small_max_kib * 1024)
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
        files[rel] = size
    return files


def produce(root: Path, files: dict[str, int], topic: str, args: argparse.Namespace) -> float:
    """Produces every file once with our producer; returns the seconds it took."""
    from s3transfer_stream.config import load_config
    from s3transfer_stream.kafka import make_producer
    from s3transfer_stream.producer import send_file

    cfg = load_config("local", require=("producer",))
    producer = make_producer(cfg.producer)
    t0 = time.monotonic()
    results = []
    for rel in files:
        results.append(
            send_file(
                producer,
                topic,
                root / rel,
                root=root,
                n_partitions=args.partitions,
                n_threads=2,
                wait=False,
            )
        )
    while any(r.n_outstanding for r in results):
        producer.flush(1.0)
    seconds = time.monotonic() - t0
    bad = [r for r in results if not r.complete]
    if bad:
        raise SystemExit(f"{len(bad)} file(s) were not fully delivered, e.g. {bad[0].errors}")
    return seconds


def processor_argv(
    program: str, bucket: str, topic: str, group: str, out: Path, cfg: Path, n_threads: int
) -> list[str]:
    if program == TUNED:
        exe = [sys.executable, str(BENCHES / "_ours_tuned.py")]
        cfg = cfg.with_name("tuned.config")
        if not cfg.exists():
            cfg.write_text(OMS_CONFIG + "".join(f"{k} = {v}\n" for k, v in TUNED_CONSUMER.items()))
    else:
        exe = [str(processor_exe(program))]
    return [
        *exe,
        bucket,
        "--config",
        str(cfg),
        "--topic_name",
        topic,
        "--consumer_group_id",
        group,
        "--n_threads",
        str(n_threads),
        "--output_dir",
        str(out),
        *(TUNED_ARGS if program == TUNED else []),
    ]


def run_one(
    program: str,
    run: int,
    topic: str,
    files: dict[str, int],
    root: Path,
    work: Path,
    cfg: Path,
    client: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    bucket = f"bench-{program}-{tag}"
    group = f"bench-{program}-{tag}"
    out = work / f"{program}-run{run}"
    out.mkdir()
    client.create_bucket(Bucket=bucket)
    expected = {f"{topic}/{rel}": size for rel, size in files.items()}
    log(f"run {run}: {program} -> bucket {bucket} (load {load_now()})")
    try:
        r = run_until_objects(
            program,
            processor_argv(program, bucket, topic, group, out, cfg, args.n_threads),
            env=oms_env()
            if program == "theirs"
            else {**os.environ, **(TUNED_ENV if program == TUNED else {})},
            cwd=work,
            log_path=work / f"{program}-run{run}.log",
            client=client,
            bucket=bucket,
            prefix=f"{topic}/",
            expected=expected,
            timeout=args.timeout,
            stop_timeout=args.stop_timeout,
        )
        r = {"run": run, "bucket": bucket, "group": group, **r}
        if r["status"] != "ok":
            log(f"run {run}: {program}: {r['status']} ({r['objects_ok']}/{len(expected)} objects)")
        else:
            log(
                f"run {run}: {program}: {len(expected)} objects in {r['seconds_to_all_objects']:.1f} s "
                f"({r['throughput_MBps']:.1f} MB/s), peak RSS {r['peak_rss_MiB']:.0f} MiB, "
                f"exited {r['process_seconds_total'] - r['seconds_to_all_objects']:.1f} s later"
            )
        r["verify"] = (
            verify_sample(client, bucket, topic, root, files, args) if r["objects_ok"] else {}
        )
    finally:
        if not args.keep_buckets:
            delete_bucket(client, bucket)
    return r


def verify_sample(
    client: Any,
    bucket: str,
    topic: str,
    root: Path,
    files: dict[str, int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    rng = random.Random(args.seed + 1)
    rels = sorted(files)
    if not args.verify_all:
        big = [r for r in rels if r.startswith("big/")]
        small = [r for r in rels if not r.startswith("big/")]
        rels = rng.sample(big, min(args.verify_big, len(big))) + rng.sample(
            small, min(args.verify_small, len(small))
        )
    bad = []
    for rel in rels:
        try:
            same = read_object(client, bucket, f"{topic}/{rel}") == (root / rel).read_bytes()
        except Exception as err:
            bad.append(f"{rel}: {type(err).__name__}: {err}")
            continue
        if not same:
            bad.append(f"{rel}: content differs")
    return {"checked": len(rels), "identical": len(rels) - len(bad), "problems": bad[:10]}


def baseline_kafka(topic: str, total_messages_hint: int | None = None) -> dict[str, Any]:
    """Reads the whole topic with one plain confluent-kafka consumer (no processing): the
    rate at which this broker hands out these messages to one client on this machine."""
    from confluent_kafka import Consumer, TopicPartition

    bootstrap = os.environ["LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS"]
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        md = c.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        t0 = time.monotonic()
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        pos = dict.fromkeys(parts, 0)
        n = nbytes = 0
        while any(pos[p] < ends[p] for p in parts) and time.monotonic() - t0 < 120:
            for m in c.consume(num_messages=64, timeout=1.0):
                if m.error():
                    continue
                n += 1
                nbytes += len(m.value())
                pos[m.partition()] = m.offset() + 1
        dt = time.monotonic() - t0
    finally:
        c.close()
    return {
        "messages": n,
        "bytes": nbytes,
        "seconds": round(dt, 2),
        "MBps": round(nbytes / 1e6 / dt, 1),
    }


def baseline_s3(client: Any, root: Path, files: dict[str, int], threads: int = 8) -> dict[str, Any]:
    """PUTs every file of the data set (one put_object each, ``threads`` at a time) with
    boto3 from this process: what the S3 server takes on this machine, no Kafka involved."""
    from concurrent.futures import ThreadPoolExecutor

    bucket = f"bench-raw-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    try:
        t0 = time.monotonic()

        def put(rel: str) -> None:
            client.put_object(Bucket=bucket, Key=rel, Body=(root / rel).read_bytes())

        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(put, files))
        dt = time.monotonic() - t0
    finally:
        delete_bucket(client, bucket)
    total = sum(files.values())
    return {"threads": threads, "seconds": round(dt, 2), "MBps": round(total / 1e6 / dt, 1)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for program in ALL_PROGRAMS:
        ok = [r for r in runs if r["program"] == program and r["status"] == "ok"]
        if not ok:
            continue

        def med(key: str, ok: list[dict[str, Any]] = ok) -> float:
            return round(statistics.median(r[key] for r in ok), 2)

        summary[program] = {
            "runs_ok": len(ok),
            "runs": len([r for r in runs if r["program"] == program]),
            "seconds_to_all_objects": med("seconds_to_all_objects"),
            "throughput_MBps": med("throughput_MBps"),
            "files_per_s": med("files_per_s"),
            "peak_rss_MiB": round(max(r["peak_rss_MiB"] for r in ok), 1),
            "cpu_s_at_done": med("cpu_s_at_done"),
            "cpu_s_total": med("cpu_s_total"),
            "throughput_MBps_all_runs": [r["throughput_MBps"] for r in ok],
        }
    if "ours" in summary and "theirs" in summary:
        o, t = summary["ours"], summary["theirs"]
        summary["ratios"] = {
            "throughput_x (ours / theirs)": round(o["throughput_MBps"] / t["throughput_MBps"], 2),
            "peak_rss_div (theirs / ours)": round(t["peak_rss_MiB"] / o["peak_rss_MiB"], 2),
            "cpu_at_done_div (theirs / ours)": round(t["cpu_s_at_done"] / o["cpu_s_at_done"], 2),
        }
        if TUNED in summary:
            u = summary[TUNED]
            summary["ratios"]["throughput_x (ours-tuned / theirs)"] = round(
                u["throughput_MBps"] / t["throughput_MBps"], 2
            )
            summary["ratios"]["peak_rss_div (theirs / ours-tuned)"] = round(
                t["peak_rss_MiB"] / u["peak_rss_MiB"], 2
            )
    return summary


def print_report(
    runs: list[dict[str, Any]],
    summary: dict[str, Any],
    total: int,
    n_files: int,
    baselines: dict[str, Any],
) -> None:
    print(f"\nData set: {n_files} files, {total / 1e6:.1f} MB ({total / MiB:.1f} MiB)")
    for name, b in baselines.items():
        print(f"baseline {name}: {b['MBps']} MB/s ({b['seconds']} s)")
    print()
    headers = [
        "run",
        "program",
        "status",
        "s to 'Listening'",
        "s to all objects",
        "MB/s",
        "files/s",
        "peak RSS MiB",
        "CPU s (at done)",
        "CPU s (total)",
        "machine CPU busy %",
        "Kafka / S3 server CPU s",
        "verified",
        "log err/warn",
    ]
    rows = []
    for r in runs:
        v = r["verify"]
        rows.append(
            [
                r["run"],
                r["program"],
                r["status"],
                r["seconds_to_listening_line"] or "-",
                r["seconds_to_all_objects"] or "-",
                r["throughput_MBps"] or "-",
                r["files_per_s"] or "-",
                r["peak_rss_MiB"],
                r["cpu_s_at_done"] if r["cpu_s_at_done"] is not None else "-",
                r["cpu_s_total"],
                r["until_done"].get("machine_cpu_busy_pct", "-"),
                f"{r['until_done'].get('kafka_cpu_s', '-')} / {r['until_done'].get('s3_cpu_s', '-')}",
                f"{v.get('identical', 0)}/{v.get('checked', 0)}",
                f"{r['log']['error']}/{r['log']['warning']}",
            ]
        )
    print(fmt_table(headers, rows))
    for r in runs:
        if r["log"]["examples"] or r["log_tail"]:
            print(f"\nrun {r['run']} {r['program']}: log lines with error/warning:")
            for line in r["log"]["examples"]:
                print(f"    {line}")
        if r["log_tail"]:
            print("  last lines of its output:")
            for line in r["log_tail"]:
                print(f"    {line[:300]}")
    if summary:
        print()
        headers = [
            "program",
            "median s",
            "median MB/s",
            "median files/s",
            "max peak RSS MiB",
            "median CPU s (at done)",
        ]
        rows = [
            [
                p,
                s["seconds_to_all_objects"],
                s["throughput_MBps"],
                s["files_per_s"],
                s["peak_rss_MiB"],
                s["cpu_s_at_done"],
            ]
            for p, s in summary.items()
            if p in ALL_PROGRAMS
        ]
        print(fmt_table(headers, rows))
    if "ratios" in summary:
        print()
        for k, v in summary["ratios"].items():
            print(f"{k}: {v}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--scale", type=float, default=1.0, help="multiplies both file counts (default 1.0)"
    )
    ap.add_argument("--big_files", type=int, default=16)
    ap.add_argument("--big_mib", type=int, default=32)
    ap.add_argument("--small_files", type=int, default=200)
    ap.add_argument("--small_min_kib", type=int, default=1)
    ap.add_argument("--small_max_kib", type=int, default=64)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--n_threads", type=int, default=2, help="--n_threads of both processors")
    ap.add_argument(
        "--repeat", type=int, default=2, help="runs of each processor (order alternates)"
    )
    ap.add_argument("--only", choices=PROGRAMS, default=None)
    ap.add_argument(
        "--also_tuned",
        action="store_true",
        help=f"also run {TUNED}: ours with {TUNED_CONSUMER}, {' '.join(TUNED_ARGS)} and "
        "16 messages per consume call (not in the ratios of ours vs theirs)",
    )
    ap.add_argument(
        "--timeout", type=float, default=300.0, help="per run, until all objects are listed"
    )
    ap.add_argument("--stop_timeout", type=float, default=60.0, help="after 'quit' until SIGTERM")
    ap.add_argument(
        "--verify_big", type=int, default=3, help="big objects compared byte for byte per run"
    )
    ap.add_argument("--verify_small", type=int, default=10, help="small objects compared per run")
    ap.add_argument("--verify_all", action="store_true", help="compare every object")
    ap.add_argument("--seed", type=int, default=20261127)
    ap.add_argument(
        "--max_load",
        type=float,
        default=1.0,
        help="wait for the 1-min load average to drop below this",
    )
    ap.add_argument(
        "--max_load_wait", type=float, default=180.0, help="... for at most this many seconds"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON path (default benches/results/e2e-<date>.json)"
    )
    ap.add_argument("--no_save", action="store_true")
    ap.add_argument(
        "--no_snapshot",
        action="store_true",
        help="run the work tree's package directly instead of a copy taken at the start",
    )
    ap.add_argument("--keep_buckets", action="store_true")
    ap.add_argument(
        "--no_baselines",
        action="store_true",
        help="skip the raw Kafka read and raw S3 PUT rates of the same data set",
    )
    args = ap.parse_args(argv)

    load_service_env()
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    snapshot = snapshot_package(work) if not args.no_snapshot else {}
    from s3transfer_stream.kafka import create_topic, delete_topic

    bootstrap = os.environ["LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS"]
    programs = [args.only] if args.only else list(PROGRAMS)
    if args.also_tuned and args.only != "theirs":
        programs.append(TUNED)
    if "theirs" in programs:
        oms_python()
    root = work / "data"
    topic = f"bench-e2e-{uuid.uuid4().hex[:8]}"
    client = s3_client()
    started = now_iso()
    runs: list[dict[str, Any]] = []
    topic_made = False
    try:
        cfg = work / "bench.config"
        cfg.write_text(OMS_CONFIG)
        log(f"making the data set in {root}")
        files = make_dataset(root, args)
        total = sum(files.values())
        log(
            f"{len(files)} files, {total / MiB:.1f} MiB; topic {topic} ({args.partitions} partitions)"
        )
        create_topic(bootstrap, topic, args.partitions)
        topic_made = True
        produce_s = produce(root, files, topic, args)
        log(f"produced in {produce_s:.1f} s ({total / 1e6 / produce_s:.1f} MB/s)")
        load_start = wait_for_low_load(args.max_load, args.max_load_wait)
        baselines: dict[str, Any] = {}
        if not args.no_baselines:
            baselines["kafka_one_plain_consumer"] = baseline_kafka(topic)
            baselines["s3_put_8_threads"] = baseline_s3(client, root, files)
            log(f"baselines: {baselines}")
        for run in range(args.repeat):
            order = programs if run % 2 == 0 else programs[::-1]
            for program in order:
                runs.append(run_one(program, run, topic, files, root, work, cfg, client, args))
        summary = summarize(runs)
        print_report(runs, summary, total, len(files), baselines)
        result = {
            "benchmark": "e2e",
            "started": started,
            "finished": now_iso(),
            "command": "python "
            + " ".join(["benches/e2e.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine_info(),
            "versions": package_versions(),
            "measured_package": snapshot,
            "load_at_start": load_start,
            "dataset": {
                "files": len(files),
                "bytes": total,
                "big_files": sum(1 for r in files if r.startswith("big/")),
                "big_file_bytes": args.big_mib * MiB,
                "small_files": sum(1 for r in files if not r.startswith("big/")),
                "chunk_size": 524288,
                "partitions": args.partitions,
                "producer": "s3transfer_stream.producer.send_file (file-affine partitions)",
                "produce_seconds": round(produce_s, 2),
            },
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "baselines": baselines,
            "runs": runs,
            "summary": summary,
        }
        if not args.no_save:
            suffix = f"-only-{args.only}" if args.only else ""
            write_json(args.out or RESULTS / f"e2e-{today()}{suffix}.json", result)
    finally:
        if topic_made:
            try:
                delete_topic(bootstrap, topic)
            except Exception as err:
                log(f"could not delete topic {topic}: {err}")
        shutil.rmtree(work, ignore_errors=True)
    return 0 if runs and all(r["status"] == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
