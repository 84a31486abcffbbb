"""Scaling: 1, 2 and 3 of our processors in ONE consumer group on a 6-partition topic.

One run of this script:

1. writes one workload (random bytes; default 600 files x 256 KiB + 12 files x 16 MiB,
   about 360 MB) and produces it ONCE with our producer (``producer.send_file``, 512 KiB
   chunks, file-affine partitions: every chunk of a file in one partition) to a fresh topic
   with ``--partitions`` partitions (default 6), deleted at the end;
2. then ``--repeat`` rounds (default 3); each round runs every count of ``--processes``
   (default 1,2,3), the order rotating from round to round (1,2,3 / 2,3,1 / 3,1,2), each
   run with its own fresh bucket (written to once before: SeaweedFS allocates a bucket's
   volume on its first write) and consumer group. A run starts N processes of our
   ``S3TransferStreamProcessor`` back to back, with the same config file, the same
   ``--consumer_group_id`` and ``--n_threads`` (default 2), each with its own
   ``--output_dir``, and measures until every object is listed with its size
   (``list_objects_v2`` every 0.25 s):

   * wall time from the start of the first process to the listing that has the last
     object with the right size; MB/s (10^6 bytes of file data per s) and files/s;
   * CPU seconds (user+sys) summed over the processes at that moment and over their whole
     lives (``wait4``), each process's peak RSS (``VmHWM`` and 50 ms samples,
     ``_common.MeasuredProcess``), the CPU the Kafka broker and the S3 server used meanwhile
     and how busy the machine was (``_common.CpuMeter``), the load average;
   * each member's seconds to its ``Listening to the ...`` line, the partitions assigned to
     it and revoked from it (its log lines), and the files its transfer journal records.

   Then ``quit`` on every stdin, and the checks: no expected object missing or of the wrong
   size, no other object in the bucket, no file journaled as transferred more than once
   across the members (a duplicate transfer), every member exits 0 without a signal, and
   ``--verify`` objects of each file group read back and compared byte for byte with the
   source files;
3. prints the runs, the medians with min-max per process count and the ratios to one
   process (medians, and round by round), and writes ``benches/results/scaling-<date>.json``
   with the command (runs with ``--scale`` other than 1 go to ``benches/results/scaled/``,
   not committed).

``--scale F`` (as in e2e.py, ``_common.scaled``): F times as many files in each group.
Every program of the invocation runs from a copy of the installed package taken at the
start (``_common.snapshot_package``); before each round the harness waits for the 1-minute
load average to drop below ``--max_load`` (``--max_load 0``: no waiting).

Run:  .venv/bin/python benches/scaling.py [--scale 0.05] [--repeat 3] [--max_load 0]
The local services must be running (``bash services/all.sh start``).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from _common import (
    CHUNK_SIZE,
    OMS_CONFIG,
    READY_LINE,
    REPO,
    RESULTS,
    CpuMeter,
    Group,
    MeasuredProcess,
    MiB,
    delete_bucket,
    fmt_spread,
    fmt_table,
    list_sizes,
    load_now,
    load_service_env,
    log,
    machine_info,
    make_dataset,
    now_iso,
    package_versions,
    processor_args,
    processor_exe,
    produce,
    read_object,
    s3_client,
    scaled,
    scan_log,
    snapshot_package,
    spread,
    today,
    wait_for_low_load,
    warm_bucket,
    write_json,
)

KiB = 1 << 10
WORKLOAD = (
    Group("small", 600, 256 * KiB, 256 * KiB),
    Group("big", 12, 16 * MiB, 16 * MiB, subdirs=4),
)
WORK_PREFIX = "s3ts-bench-scaling-"
SCALED_RESULTS = RESULTS / "scaled"
POLL = 0.25
#: The processor's log lines when a partition is assigned to a consumer thread, and when
#: partitions are taken from it (processor/loop.py).
ASSIGNED = re.compile(rb"Partition (\d+) of \S+: (?:no committed offset|resuming at offset)")
REVOKED = re.compile(rb"Partitions \[[^\]]*\] of \S+ were reassigned")


def processor_argv(
    bucket: str, topic: str, group: str, out: Path, cfg: Path, n_threads: int
) -> list[str]:
    return [str(processor_exe("ours")), *processor_args(bucket, cfg, topic, group, out, n_threads)]


def journaled(out: Path, topic: str, group: str) -> list[tuple[str, str]]:
    """(rel_path, outcome) of the transfer journal of one member (its ``--output_dir``)."""
    from s3transfer_stream.journal import JournalEntry
    from s3transfer_stream.registry import journal_name

    path = out / "LOGS" / journal_name(topic, group)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [
        (e.rel_path, e.outcome) for e in (JournalEntry.from_json(x) for x in lines if x.strip())
    ]


def verify_sample(
    client: Any, bucket: str, topic: str, root: Path, files: dict[str, int], n: int, seed: int
) -> dict[str, Any]:
    """Reads back ``n`` objects of each file group and compares them byte for byte."""
    rng = random.Random(seed)
    by_group: dict[str, list[str]] = {}
    for rel in sorted(files):
        by_group.setdefault(rel.split("/", 1)[0], []).append(rel)
    rels = [
        rel for members in by_group.values() for rel in rng.sample(members, min(n, len(members)))
    ]
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


def run_group(
    n: int,
    run: int,
    *,
    topic: str,
    files: dict[str, int],
    root: Path,
    work: Path,
    cfg: Path,
    client: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """``n`` processors in one fresh group, started together, until every object is listed."""
    tag = uuid.uuid4().hex[:8]
    bucket = group = f"bench-scaling-{n}p-{tag}"
    total = sum(files.values())
    expected = {f"{topic}/{rel}": size for rel, size in files.items()}
    client.create_bucket(Bucket=bucket)
    warm_bucket(client, bucket)
    outs = [work / f"run{run}-{n}p-member{i}" for i in range(n)]
    logs = [work / f"run{run}-{n}p-member{i}.log" for i in range(n)]
    for out in outs:
        out.mkdir()
    timeout = args.timeout or 120 + total / 1e6
    load_before = load_now()
    log(f"run {run}: {n} process(es) in group {group} (load {load_before})")
    meter = CpuMeter()
    procs: list[MeasuredProcess] = []
    status = "ok"
    t_done = None
    cpu_done: list[float] = []
    machine: dict[str, Any] = {}
    t_ready: list[float | None] = [None] * n
    n_ok = 0
    try:
        for i in range(n):
            argv = processor_argv(bucket, topic, group, outs[i], cfg, args.n_threads)
            procs.append(MeasuredProcess(argv, env=os.environ, cwd=work, log_path=logs[i]))
        t0 = procs[0].t0
        deadline = time.monotonic() + timeout
        while True:
            time.sleep(POLL)
            for i in range(n):
                if t_ready[i] is None and READY_LINE in logs[i].read_bytes():
                    t_ready[i] = time.monotonic() - t0
            listed = list_sizes(client, bucket, prefix=f"{topic}/")
            n_ok = sum(1 for k, s in expected.items() if listed.get(k) == s)
            if n_ok == len(expected):
                t_done = time.monotonic() - t0
                cpu_done = [mp.cpu_now() for mp in procs]
                machine = meter.read()
                break
            if any(not mp.alive() for mp in procs):
                status = "a member exited early"
                break
            if time.monotonic() >= deadline:
                status = f"timeout after {timeout:.0f} s"
                break
    finally:
        for mp in procs:
            mp.send("quit\n")
        results = [mp.wait(timeout=args.stop_timeout) for mp in procs]
    members = []
    for i, res in enumerate(results):
        text = logs[i].read_bytes()
        members.append(
            {
                "seconds_to_listening_line": round(t_ready[i], 3) if t_ready[i] else None,
                "partitions_assigned": sorted(int(m) for m in ASSIGNED.findall(text)),
                "revocations": len(REVOKED.findall(text)),
                "journal": journaled(outs[i], topic, group),
                "cpu_s_at_done": round(cpu_done[i], 2) if cpu_done else None,
                "cpu_s_total": round(res.cpu_total, 2),
                "peak_rss_MiB": round(res.peak_rss / MiB, 1),
                "process_seconds_total": round(res.wall_total, 2),
                "returncode": res.returncode,
                "killed": res.killed,
                "log": scan_log(logs[i]),
                "log_tail": []
                if res.returncode == 0 and not res.killed
                else logs[i].read_text(errors="replace").splitlines()[-30:],
            }
        )
    # The checks: what is in the bucket, and who transferred what.
    listed = list_sizes(client, bucket)
    missing = sorted(k for k in expected if k not in listed)
    wrong_size = sorted(k for k, s in expected.items() if k in listed and listed[k] != s)
    unexpected = sorted(k for k in listed if k not in expected)
    transfers: dict[str, int] = {}
    for m in members:
        for rel, outcome in m["journal"]:
            if outcome == "transferred":
                transfers[rel] = transfers.get(rel, 0) + 1
    duplicated = sorted(rel for rel, c in transfers.items() if c > 1)
    not_journaled = sorted(rel for rel in files if rel not in transfers)
    given_up = sorted({rel for m in members for rel, o in m["journal"] if o != "transferred"})
    verify = (
        verify_sample(client, bucket, topic, root, files, args.verify, args.seed + run)
        if not missing
        else {}
    )
    if not args.keep_buckets:
        delete_bucket(client, bucket)
    problems = []
    if missing or wrong_size or unexpected:
        problems.append(
            f"{len(missing)} missing, {len(wrong_size)} wrong size, {len(unexpected)} unexpected"
        )
    if duplicated:
        problems.append(f"{len(duplicated)} transferred more than once")
    if not_journaled or given_up:
        problems.append(f"{len(not_journaled)} not journaled, {len(given_up)} given up")
    if verify and verify["identical"] != verify["checked"]:
        problems.append("objects differ from the source files")
    bad_exit = [i for i, m in enumerate(members) if m["returncode"] != 0 or m["killed"]]
    if bad_exit:
        problems.append(f"members {bad_exit} did not exit cleanly")
    if status == "ok" and problems:
        status = "; ".join(problems)
    ok = status == "ok" and t_done
    ready = [t for t in t_ready if t is not None]
    rec = {
        "processes": n,
        "run": run,
        "status": status,
        "seconds": round(t_done, 3) if ok else None,
        "throughput_MBps": round(total / 1e6 / t_done, 2) if ok and t_done else None,
        "files_per_s": round(len(files) / t_done, 2) if ok and t_done else None,
        "cpu_s": round(sum(cpu_done), 2) if ok else None,
        "cpu_s_total": round(sum(res.cpu_total for res in results), 2),
        "peak_rss_max_MiB": max(m["peak_rss_MiB"] for m in members),
        "peak_rss_sum_MiB": round(sum(m["peak_rss_MiB"] for m in members), 1),
        "seconds_to_all_listening": round(max(ready), 3) if len(ready) == n else None,
        "files_per_member": [len(m["journal"]) for m in members],
        "objects_ok": n_ok,
        "objects_expected": len(expected),
        "missing": missing[:10],
        "wrong_size": wrong_size[:10],
        "unexpected": unexpected[:10],
        "duplicated": duplicated[:10],
        "not_journaled": not_journaled[:10],
        "given_up": given_up[:10],
        "verify": verify,
        "load_before": load_before,
        "load_after": load_now(),
        "until_done": machine,
        "bucket": bucket,
        "group": group,
        "members": [{k: v for k, v in m.items() if k != "journal"} for m in members],
    }
    if ok:
        log(
            f"run {run}: {n} process(es): {rec['seconds']:.1f} s, {rec['throughput_MBps']:.1f} MB/s, "
            f"{rec['files_per_s']:.1f} files/s, CPU {rec['cpu_s']} s, peak RSS "
            f"{[m['peak_rss_MiB'] for m in members]} MiB, files per member {rec['files_per_member']}"
        )
    else:
        log(f"run {run}: {n} process(es): {status}")
    return rec


STATS = (
    "seconds",
    "throughput_MBps",
    "files_per_s",
    "cpu_s",
    "peak_rss_max_MiB",
    "peak_rss_sum_MiB",
    "seconds_to_all_listening",
)


def summarize(runs: list[dict[str, Any]], counts: list[int]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for n in counts:
        mine = [r for r in runs if r["processes"] == n]
        ok = [r for r in mine if r["status"] == "ok"]
        s: dict[str, Any] = {"runs": len(mine), "runs_ok": len(ok)}
        for key in STATS:
            s[key] = spread([r.get(key) for r in ok])
        for key in ("kafka_cpu_s", "s3_cpu_s", "machine_cpu_busy_pct"):
            s[key] = spread([(r["until_done"] or {}).get(key) for r in ok])
        summary[str(n)] = s
    base = summary.get("1")
    ratios: dict[str, Any] = {}
    if base and base["runs_ok"]:
        for n in counts[1:] if counts[0] == 1 else counts:
            s = summary[str(n)]
            if n == 1 or not s["runs_ok"]:
                continue
            r: dict[str, Any] = {}
            for key in ("throughput_MBps", "cpu_s", "peak_rss_sum_MiB"):
                if s[key] and base[key]:
                    r[key] = round(s[key]["median"] / base[key]["median"], 2)
            per_round = []
            for run in sorted({x["run"] for x in runs}):
                got = {
                    x["processes"]: x["throughput_MBps"]
                    for x in runs
                    if x["run"] == run and x["status"] == "ok"
                }
                if got.get(1) and got.get(n):
                    per_round.append(round(got[n] / got[1], 2))
            r["throughput_MBps per round"] = per_round
            ratios[f"{n} vs 1"] = r
    summary["ratios"] = ratios
    return summary


def print_report(result: dict[str, Any]) -> None:
    ds = result["dataset"]
    print(f"\n=== scaling (scale {result['scale']})")
    print(f"command: {result['command']}")
    print(
        f"data set: {ds['files']} files, {ds['bytes'] / 1e6:.1f} MB; {ds['partitions']} "
        f"partitions, produced in {ds['produce_seconds']} s; --n_threads {result['n_threads']}"
    )
    rows = []
    for r in result["runs"]:
        v = r.get("verify") or {}
        rows.append(
            [
                r["run"],
                r["processes"],
                r["status"],
                r["seconds"] or "-",
                r["throughput_MBps"] or "-",
                r["files_per_s"] or "-",
                r["cpu_s"] if r["cpu_s"] is not None else "-",
                " / ".join(str(m["peak_rss_MiB"]) for m in r["members"]),
                r["files_per_member"],
                sum(m["revocations"] for m in r["members"]),
                (r["until_done"] or {}).get("machine_cpu_busy_pct", "-"),
                r["load_before"][0],
                f"{v['identical']}/{v['checked']}" if v else "-",
            ]
        )
    print()
    print(
        fmt_table(
            [
                "run",
                "processes",
                "status",
                "s",
                "MB/s",
                "files/s",
                "CPU s (sum)",
                "peak RSS MiB each",
                "files per member",
                "revocations",
                "machine busy %",
                "load before",
                "verified",
            ],
            rows,
        )
    )
    summary = result["summary"]
    rows = [
        [
            n,
            f"{s['runs_ok']}/{s['runs']}",
            fmt_spread(s["seconds"], 2),
            fmt_spread(s["throughput_MBps"]),
            fmt_spread(s["files_per_s"]),
            fmt_spread(s["cpu_s"], 2),
            fmt_spread(s["peak_rss_max_MiB"]),
            fmt_spread(s["peak_rss_sum_MiB"]),
            fmt_spread(s["s3_cpu_s"], 2),
        ]
        for n, s in summary.items()
        if n != "ratios"
    ]
    print()
    print(
        fmt_table(
            [
                "processes",
                "runs ok",
                "s",
                "MB/s",
                "files/s",
                "CPU s (sum)",
                "peak RSS max MiB",
                "peak RSS sum MiB",
                "S3 server CPU s",
            ],
            rows,
        )
    )
    for k, v in summary["ratios"].items():
        print(f"{k}: {v}")
    for r in result["runs"]:
        for i, m in enumerate(r["members"]):
            if m["log"].get("examples") or m["log_tail"]:
                print(f"\nrun {r['run']}, {r['processes']} process(es), member {i}:")
                for line in m["log"].get("examples", []) + m["log_tail"]:
                    print(f"    {line[:300]}")


def result_path(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    base = RESULTS if args.scale == 1.0 else SCALED_RESULTS
    name = "scaling" + (f"-scale{args.scale:g}" if args.scale != 1.0 else "") + f"-{today()}"
    path = base / f"{name}.json"
    n = 2
    while path.exists():
        path = base / f"{name}-{n}.json"
        n += 1
    return path


def _counts(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", type=float, default=1.0, help="F times as many files per group")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    ap.add_argument(
        "--processes", type=_counts, default=[1, 2, 3], help="process counts (default 1,2,3)"
    )
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--n_threads", type=int, default=2, help="--n_threads of each process")
    ap.add_argument("--verify", type=int, default=3, help="objects per file group read back")
    ap.add_argument("--timeout", type=float, default=None, help="per run (default from the size)")
    ap.add_argument("--stop_timeout", type=float, default=60.0, help="after 'quit' until SIGTERM")
    ap.add_argument("--seed", type=int, default=20261202)
    ap.add_argument(
        "--max_load",
        type=float,
        default=1.0,
        help="before each round, wait for the 1-min load average to drop below this "
        "(0: do not wait)",
    )
    ap.add_argument(
        "--max_load_wait", type=float, default=180.0, help="... for at most this many seconds"
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default see above)")
    ap.add_argument("--no_save", action="store_true", help="write no JSON")
    ap.add_argument("--no_snapshot", action="store_true", help="run the installed package")
    ap.add_argument("--keep_buckets", action="store_true")
    args = ap.parse_args(argv)
    if args.scale <= 0:
        ap.error("--scale must be > 0")
    if not args.processes or min(args.processes) < 1:
        ap.error("--processes takes counts >= 1")

    raw = argv if argv is not None else sys.argv[1:]
    exe = (
        os.path.relpath(sys.executable)
        if Path(sys.executable).is_relative_to(REPO)
        else sys.executable
    )
    command = shlex.join([exe, os.path.relpath(Path(__file__).resolve()), *raw])
    log(f"command: {command}")

    load_service_env()
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    topic = f"bench-scaling-{uuid.uuid4().hex[:8]}"
    topic_made = False
    bootstrap = os.environ["LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS"]
    ok = False
    try:
        snapshot = snapshot_package(work) if not args.no_snapshot else {}
        from s3transfer_stream.kafka import create_topic, delete_topic

        client = s3_client()
        cfg = work / "bench.config"
        cfg.write_text(OMS_CONFIG)
        groups = scaled(WORKLOAD, args.scale, 8 * MiB)
        root = work / "data"
        started = now_iso()
        files = make_dataset(root, groups, args.seed)
        total = sum(files.values())
        log(
            f"{len(files)} files, {total / MiB:.1f} MiB; topic {topic} ({args.partitions} partitions)"
        )
        create_topic(bootstrap, topic, args.partitions)
        topic_made = True
        produce_s = produce(root, files, topic, args.partitions)
        log(f"produced in {produce_s:.1f} s ({total / 1e6 / produce_s:.1f} MB/s)")
        runs: list[dict[str, Any]] = []
        loads = []
        counts = list(args.processes)
        for run in range(args.repeat):
            if args.max_load > 0:
                loads.append(wait_for_low_load(args.max_load, args.max_load_wait))
            else:
                loads.append(load_now())
            k = run % len(counts)
            for n in counts[k:] + counts[:k]:
                runs.append(
                    run_group(
                        n,
                        run,
                        topic=topic,
                        files=files,
                        root=root,
                        work=work,
                        cfg=cfg,
                        client=client,
                        args=args,
                    )
                )
        result = {
            "benchmark": "scaling",
            "scale": args.scale,
            "started": started,
            "finished": now_iso(),
            "command": command,
            "cwd": os.getcwd(),
            "machine": machine_info(),
            "versions": package_versions(),
            "measured_package": snapshot,
            "load_before_rounds": loads,
            "dataset": {
                "files": len(files),
                "bytes": total,
                "groups": [asdict(g) for g in groups],
                "chunk_size": CHUNK_SIZE,
                "partitions": args.partitions,
                "producer": "s3transfer_stream.producer.send_file (file-affine partitions)",
                "produce_seconds": round(produce_s, 2),
            },
            "n_threads": args.n_threads,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "runs": runs,
            "summary": summarize(runs, counts),
        }
        print_report(result)
        if not args.no_save:
            path = result_path(args)
            write_json(path, result)
            print(f"\nresults: {path}")
        ok = bool(runs) and all(r["status"] == "ok" for r in runs)
    finally:
        if topic_made:
            try:
                delete_topic(bootstrap, topic)
            except Exception as err:
                log(f"could not delete topic {topic}: {err}")
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
