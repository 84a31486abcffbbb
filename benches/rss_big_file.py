"""Peak RSS of the processors while transferring ONE big file (default 1 GiB).

1. writes a file of random bytes in /tmp (in 64 MiB pieces);
2. sends it with our ``UploadDataFile`` (512 KiB chunks) to a fresh topic with ONE partition,
   measuring that program's peak RSS too;
3. runs our ``S3TransferStreamProcessor`` (fresh group, fresh bucket, ``--n_threads 2``) until
   the object is listed with the right size, measuring its peak RSS (``VmHWM`` and psutil
   RSS samples every 50 ms) and CPU time; with ``--sweep`` it does so for
   several settings, to show where the memory goes;
4. runs OpenMSIStream's processor the same way, with a timeout (it holds the whole file in
   memory, concatenates it with quadratic ``bytes +=`` and re-reads the whole object to
   validate it), and reports what happened;
5. verifies the stored object(s) byte for byte and writes
   ``benches/results/rss_big_file-<date>.json``.

Run:  .venv/bin/python benches/rss_big_file.py [--size_mib 1024] [--sweep] [--skip_theirs]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from _common import (
    BENCHES,
    OMS_CONFIG,
    RESULTS,
    VENV_BIN,
    MeasuredProcess,
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
    processor_args,
    processor_exe,
    run_until_objects,
    s3_client,
    scan_log,
    snapshot_package,
    today,
    wait_for_low_load,
    write_json,
)

TARGET_MIB = 300
WORK_PREFIX = "s3ts-bench-rss-"
SIZE_BUCKETS = ("<1MiB", "1-9MiB", "9-33MiB", "33-64MiB", ">=64MiB")

#: (name, extra processor args, extra [consumer] settings, extra environment). BENCH_*
#: variables run our processor through benches/_ours_tuned.py (knobs without a CLI flag).
SWEEP: list[tuple[str, list[str], dict[str, str], dict[str, str]]] = [
    ("default", [], {}, {}),
    ("fetch.queue.backoff.ms=10", [], {"fetch.queue.backoff.ms": "10"}, {}),
    ("batch_size 16", [], {}, {"BENCH_BATCH_SIZE": "16"}),
    ("queued.max.messages.kbytes=8192", [], {"queued.max.messages.kbytes": "8192"}, {}),
    ("--max_parts_in_flight 4", ["--max_parts_in_flight", "4"], {}, {}),
    ("MALLOC_ARENA_MAX=2", [], {}, {"MALLOC_ARENA_MAX": "2"}),
    ("mallopt(M_MMAP_THRESHOLD, 256 KiB)", [], {}, {"BENCH_MMAP_THRESHOLD": str(256 << 10)}),
    ("mallopt(M_MMAP_THRESHOLD, 4 MiB)", [], {}, {"BENCH_MMAP_THRESHOLD": str(4 << 20)}),
    (
        "proposal A: backoff 10 ms + queued 16 MiB + batch_size 16 + 4 parts in flight",
        ["--max_parts_in_flight", "4"],
        {"fetch.queue.backoff.ms": "10", "queued.max.messages.kbytes": "16384"},
        {"BENCH_BATCH_SIZE": "16"},
    ),
    (
        "proposal B: A + mallopt(M_MMAP_THRESHOLD, 256 KiB)",
        ["--max_parts_in_flight", "4"],
        {"fetch.queue.backoff.ms": "10", "queued.max.messages.kbytes": "16384"},
        {"BENCH_BATCH_SIZE": "16", "BENCH_MMAP_THRESHOLD": str(256 << 10)},
    ),
]


def write_random_file(path: Path, size: int) -> str:
    """Writes ``size`` random bytes in 64 MiB pieces; returns the SHA-256 hex digest."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            piece = os.urandom(min(left, 64 * MiB))
            h.update(piece)
            f.write(piece)
            left -= len(piece)
    return h.hexdigest()


def object_sha256(client: Any, bucket: str, key: str) -> tuple[int, str]:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    h = hashlib.sha256()
    n = 0
    try:
        for piece in body.iter_chunks(chunk_size=8 * MiB):
            h.update(piece)
            n += len(piece)
    finally:
        body.close()
    return n, h.hexdigest()


def run_variant(
    program: str,
    name: str,
    extra_args: list[str],
    consumer: dict[str, str],
    extra_env: dict[str, str],
    *,
    topic: str,
    key: str,
    size: int,
    digest: str,
    work: Path,
    client: Any,
    timeout: float,
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    bucket = f"bench-rss-{program}-{tag}"
    group = f"bench-rss-{program}-{tag}"
    out = work / f"out-{program}-{tag}"
    out.mkdir()
    cfg = work / f"{program}-{tag}.config"
    cfg.write_text(OMS_CONFIG + "".join(f"{k} = {v}\n" for k, v in consumer.items()))
    if any(k.startswith("BENCH_") for k in extra_env):
        exe = [sys.executable, str(BENCHES / "_ours_tuned.py")]
    else:
        exe = [str(processor_exe(program))]
    argv = [*exe, *processor_args(bucket, cfg, topic, group, out, 2), *extra_args]
    env = dict(os.environ) if program == "ours" else oms_env()
    env.update(extra_env)
    client.create_bucket(Bucket=bucket)
    log(f"{program} [{name}] -> bucket {bucket} (load {load_now()})")
    try:
        r = run_until_objects(
            program,
            argv,
            env=env,
            cwd=work,
            log_path=work / f"{program}-{tag}.log",
            client=client,
            bucket=bucket,
            prefix=f"{topic}/",
            expected={key: size},
            timeout=timeout,
            stop_timeout=120.0,
            smaps=True,
        )
        if r["objects_ok"]:
            n, got = object_sha256(client, bucket, key)
            r["verify"] = {"bytes": n, "identical": n == size and got == digest}
        else:
            r["verify"] = {}
    finally:
        delete_bucket(client, bucket)
    r = {"variant": name, "consumer_settings": consumer, "env": extra_env, **r}
    log(
        f"{program} [{name}]: {r['status']}, peak RSS {r['peak_rss_MiB']:.0f} MiB, "
        f"{r['seconds_to_all_objects'] or '-'} s, identical={r['verify'].get('identical')}"
    )
    return r


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in runs:
        key = f"{r['program']}: {r['variant']}"
        out.setdefault(key, {"program": r["program"], "all": []})["all"].append(r)
    for v in out.values():
        runs_v = v.pop("all")
        ok = [r for r in runs_v if r["status"] == "ok"]
        peaks = sorted(r["peak_rss_MiB"] for r in runs_v)
        v["runs"] = len(runs_v)
        v["runs_ok"] = len(ok)
        v["peak_rss_MiB_all"] = [r["peak_rss_MiB"] for r in runs_v]
        v["peak_rss_MiB_min_median_max"] = [peaks[0], statistics.median(peaks), peaks[-1]]
        v["median_MBps"] = (
            round(statistics.median(r["throughput_MBps"] for r in ok), 1) if ok else None
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size_mib", type=int, default=1024)
    ap.add_argument(
        "--sweep", action="store_true", help="also run our processor with other settings"
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="with --sweep: run only the variants whose name contains this (repeatable)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every variant of ours this many times (the peak varies from run to run)",
    )
    ap.add_argument("--skip_theirs", action="store_true")
    ap.add_argument("--timeout_ours", type=float, default=300.0)
    ap.add_argument("--timeout_theirs", type=float, default=600.0)
    ap.add_argument("--max_load", type=float, default=1.0)
    ap.add_argument("--max_load_wait", type=float, default=180.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no_save", action="store_true")
    ap.add_argument(
        "--no_snapshot",
        action="store_true",
        help="run the work tree's package directly instead of a copy taken at the start",
    )
    args = ap.parse_args(argv)

    load_service_env()
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    snapshot = snapshot_package(work) if not args.no_snapshot else {}
    from s3transfer_stream.kafka import create_topic, delete_topic

    bootstrap = os.environ["LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS"]
    if not args.skip_theirs:
        oms_python()
    topic = f"bench-rss-{uuid.uuid4().hex[:8]}"
    size = args.size_mib * MiB
    client = s3_client()
    started = now_iso()
    topic_made = False
    runs: list[dict[str, Any]] = []
    try:
        path = work / f"big_{args.size_mib}MiB.dat"
        log(f"writing {path} ({args.size_mib} MiB of random bytes)")
        digest = write_random_file(path, size)
        create_topic(bootstrap, topic, 1)
        topic_made = True
        log(f"sending it with our UploadDataFile to {topic} (1 partition)")
        up = MeasuredProcess(
            [
                str(VENV_BIN / "UploadDataFile"),
                str(path),
                "--topic_name",
                topic,
                "--chunk_size",
                "524288",
            ],
            env=os.environ,
            cwd=work,
            log_path=work / "upload.log",
        )
        up_res = up.wait(timeout=600)
        upload = {
            "returncode": up_res.returncode,
            "seconds": round(up_res.wall_total, 2),
            "throughput_MBps": round(size / 1e6 / up_res.wall_total, 1),
            "peak_rss_MiB": round(up_res.peak_rss / MiB, 1),
            "cpu_s_total": round(up_res.cpu_total, 2),
            "log": scan_log(work / "upload.log"),
        }
        log(f"UploadDataFile: {upload}")
        if up_res.returncode != 0:
            print((work / "upload.log").read_text(), file=sys.stderr)
            raise SystemExit("UploadDataFile failed")
        load_start = wait_for_low_load(args.max_load, args.max_load_wait)
        key = f"{topic}/{path.name}"
        common = {
            "topic": topic,
            "key": key,
            "size": size,
            "digest": digest,
            "work": work,
            "client": client,
        }
        variants = SWEEP if args.sweep else SWEEP[:1]
        if args.variant:
            variants = [v for v in variants if any(w in v[0] for w in args.variant)]
        variants = variants * args.repeat
        for name, extra, consumer, env in variants:
            runs.append(
                run_variant("ours", name, extra, consumer, env, timeout=args.timeout_ours, **common)
            )
        if not args.skip_theirs:
            runs.append(
                run_variant("theirs", "default", [], {}, {}, timeout=args.timeout_theirs, **common)
            )
        headers = [
            "program",
            "settings",
            "status",
            "s to object",
            "MB/s",
            "peak RSS MiB",
            "RSS at 'Listening' MiB",
            "CPU s (at done)",
            "identical",
        ]
        rows = [
            [
                r["program"],
                r["variant"],
                r["status"],
                r["seconds_to_all_objects"] or "-",
                r["throughput_MBps"] or "-",
                r["peak_rss_MiB"],
                r["rss_at_listening_line_MiB"] or "-",
                r["cpu_s_at_done"] if r["cpu_s_at_done"] is not None else "-",
                r["verify"].get("identical", "-"),
            ]
            for r in runs
        ]
        print(f"\nOne file of {args.size_mib} MiB, 1 partition, 512 KiB chunks")
        print(
            f"UploadDataFile (ours): {upload['seconds']} s, peak RSS {upload['peak_rss_MiB']} MiB\n"
        )
        print(fmt_table(headers, rows))
        print(
            "\nWhere the resident memory sat at the last sampled peak (/proc/<pid>/smaps, MiB):\n"
        )
        rows = []
        for r in runs:
            sm = r["smaps_at_peak_MiB"]
            if not sm:
                continue
            by = sm["anon_by_mapping_size"]
            rows.append(
                [
                    r["program"],
                    r["variant"],
                    sm["rss"],
                    sm["t"],
                    sm["file"],
                    sm["heap"],
                    sm["anon"],
                    " / ".join(f"{v:g}" for v in by.values()),
                    sm["threads"],
                ]
            )
        print(
            fmt_table(
                [
                    "program",
                    "settings",
                    "RSS",
                    "at s",
                    "file-backed",
                    "[heap]",
                    "anon",
                    "anon by mapping size " + " / ".join(SIZE_BUCKETS),
                    "threads",
                ],
                rows,
            )
        )
        for r in runs:
            if r["log"]["examples"] or r["log_tail"]:
                print(f"\n{r['program']} [{r['variant']}]: log lines with error/warning:")
                for line in r["log"]["examples"]:
                    print(f"    {line}")
                for line in r["log_tail"]:
                    print(f"    | {line[:300]}")
        summary = summarize(runs)
        print("\nPer settings (all runs of this invocation):\n")
        print(
            fmt_table(
                [
                    "program",
                    "settings",
                    "runs ok",
                    "peak RSS MiB min / median / max",
                    "median MB/s",
                ],
                [
                    [
                        v["program"],
                        name.split(": ", 1)[1],
                        f"{v['runs_ok']}/{v['runs']}",
                        " / ".join(str(x) for x in v["peak_rss_MiB_min_median_max"]),
                        v["median_MBps"],
                    ]
                    for name, v in summary.items()
                ],
            )
        )
        default = summary.get("ours: default")
        if default:
            worst = default["peak_rss_MiB_min_median_max"][2]
            verdict = "below" if worst < TARGET_MIB else "ABOVE"
            print(
                f"\nours (default settings): highest peak RSS {worst} MiB, {verdict} the "
                f"{TARGET_MIB} MiB target"
            )
        result = {
            "benchmark": "rss_big_file",
            "started": started,
            "finished": now_iso(),
            "command": "python "
            + " ".join(["benches/rss_big_file.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine_info(),
            "versions": package_versions(),
            "measured_package": snapshot,
            "load_at_start": load_start,
            "file_bytes": size,
            "chunk_size": 524288,
            "partitions": 1,
            "target_peak_rss_MiB": TARGET_MIB,
            "upload": upload,
            "summary": summary,
            "runs": runs,
        }
        if not args.no_save:
            write_json(args.out or RESULTS / f"rss_big_file-{today()}.json", result)
    finally:
        if topic_made:
            try:
                delete_topic(bootstrap, topic)
            except Exception as err:
                log(f"could not delete topic {topic}: {err}")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
