"""End to end, per workload: the Kafka and S3 ceilings, our processor and OpenMSIStream 1.8.8's.

Workloads (``--workload``, several comma-separated or ``all`` = small,typical,large,mixed):

=========  ====================================================================
small      1000 files x 256 KiB (one chunk each; single PUTs)
typical    100 files x 8 MiB (16 chunks each; one part: single PUTs)
large      2 files x 1 GiB (multipart uploads of 128 parts)
mixed      500 files of 16 KiB-1 MiB + 50 files of 2-24 MiB + 2 files of 256 MiB and a
           bit (sizes drawn with ``--seed``; part sizes that do not divide them)
legacy     the data set of the runs before issue 8 (16 x 32 MiB + 200 x 1-64 KiB)
=========  ====================================================================

``--scale F`` shrinks a workload for quick checks: a group of 10 or more files keeps its
sizes and gets F times as many files (at least 1); a group of fewer files (the 1 GiB and
256 MiB ones) keeps its count and gets F times the size, but at least two parts and 1 MiB
(so it stays a multipart upload).

Per workload, one run of this script:

1. writes the files (random bytes) and produces them ONCE with our producer
   (``producer.send_file``, 512 KiB chunks, file-affine partitions) to a fresh topic with
   ``--partitions`` partitions;
2. then, ``--repeat`` rounds (default 3; the order within a round alternates), against the
   same broker and S3 server, each with its own fresh consumer group and bucket (written
   to once before: SeaweedFS allocates a bucket's volume on its first write, ~0.2 s):

   (a) ``kafka``: the Kafka ceiling, ONE plain confluent-kafka consumer reading the whole
       topic (``benches/_ceilings.py``);
   (b) ``s3``: the S3 ceiling, the same files from memory uploaded with our processor's
       part size and concurrency, through our ``ObjectStore`` with its checksums: PUTs
       for files of at most one part, multipart uploads for bigger ones
       (``benches/_ceilings.py``; the settings are read from the measured package's
       command-line defaults);
   (c) ``ours``: our ``S3TransferStreamProcessor``;
   (d) ``theirs``: OpenMSIStream 1.8.8's ``S3TransferStreamProcessor`` (its own venv,
       ``services/openmsistream-peer.sh``); only ONE round on ``large`` (it runs at
       ~2 MB/s there), ``--theirs_runs N`` to change that, ``--skip_theirs`` to leave it out;

   both processors with ``--n_threads 2`` and the same config file. For (c) and (d) the
   time runs from the process's start until every object is listed with its size
   (``list_objects_v2`` every 0.25 s near the end, less often before:
   ``_common.next_poll``); for (a) and (b) it is the transfer alone. Each run records
   MB/s (10^6 bytes of file data per s), files/s, the CPU seconds of the program (until
   done and over its life), of the Kafka broker and of the S3 server
   (their pids from the pid files of ``services/``), the peak RSS (``VmHWM`` and 50 ms
   samples), the load average; (c) and (d) then have a sample of objects read back and
   compared with the source files (SHA-256);
3. prints the runs, the medians with min-max, the ratios c/d and c/min(a,b), and writes
   ``benches/results/e2e-<workload>-<date>.json`` (runs with ``--scale`` other than 1 go
   to ``benches/results/scaled/``), then redraws the chart (``benches/chart.py``) of
   that directory.

Every program of the invocation runs from a copy of the installed package taken at the
start (``_common.snapshot_package``), and the harness waits before each round for the
1-minute load average to drop below ``--max_load`` (``--max_load 0``: no waiting).

Run:  .venv/bin/python benches/e2e.py --workload small|typical|large|mixed|all
      [--scale 0.05] [--repeat 3] [--skip_theirs] [--max_load 0]
The local services must be running (``bash services/all.sh start``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _common import (
    BENCHES,
    CHUNK_SIZE,
    OMS_CONFIG,
    REPO,
    RESULTS,
    Group,
    MeasuredProcess,
    MiB,
    delete_bucket,
    fmt_spread,
    fmt_table,
    load_now,
    load_service_env,
    log,
    machine_info,
    make_dataset,
    now_iso,
    oms_env,
    oms_python,
    package_versions,
    processor_args,
    processor_exe,
    produce,
    run_until_objects,
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
GiB = 1 << 30

CEILINGS = ("kafka", "s3")
PROCESSORS = ("ours", "theirs")
PROGRAMS = (*CEILINGS, *PROCESSORS)
LABELS = {
    "kafka": "(a) Kafka ceiling",
    "s3": "(b) S3 ceiling",
    "ours": "(c) ours",
    "theirs": "(d) OpenMSIStream 1.8.8",
}
#: ``--also_tuned``: our processor once more, through benches/_ours_tuned.py, with the
#: settings rss_big_file.py's sweep found best ("proposal A", the defaults since then).
TUNED = "ours-tuned"
TUNED_ARGS = ["--max_parts_in_flight", "4"]
TUNED_CONSUMER = {"fetch.queue.backoff.ms": "10", "queued.max.messages.kbytes": "16384"}
TUNED_ENV = {"BENCH_BATCH_SIZE": "16"}
WORK_PREFIX = "s3ts-bench-e2e-"
SCALED_RESULTS = RESULTS / "scaled"


WORKLOADS: dict[str, tuple[Group, ...]] = {
    "small": (Group("small", 1000, 256 * KiB, 256 * KiB),),
    "typical": (Group("typical", 100, 8 * MiB, 8 * MiB),),
    "large": (Group("large", 2, GiB, GiB, subdirs=1),),
    "mixed": (
        Group("small", 500, 16 * KiB, MiB),
        Group("typical", 50, 2 * MiB, 24 * MiB),
        Group("large", 2, 256 * MiB + 1, 256 * MiB + 3 * MiB, subdirs=1),
    ),
    "legacy": (
        Group("big", 16, 32 * MiB, 32 * MiB, subdirs=2),
        Group("small", 200, KiB, 64 * KiB),
    ),
}
NAMED = ("small", "typical", "large", "mixed")


def upload_settings(cfg: Path) -> dict[str, int]:
    """Part size and upload concurrency our processor runs with by default, as its own
    command line computes them (so the S3 ceiling follows any change of the defaults)."""
    try:
        from s3transfer_stream.cli.processor import build_parser, options_from_args

        args = build_parser().parse_args(
            ["bench-x", "--config", str(cfg), "--topic_name", "t", "--consumer_group_id", "g"]
        )
        o = options_from_args(args)
        return {
            "part_size": int(o.part_size),
            "part_workers": int(o.max_parts_in_flight),
            "put_workers": int(getattr(o, "finish_workers", 8)),
        }
    except Exception as err:  # the CLI changed shape: say so, and use the known defaults
        log(f"could not read the processor's upload settings ({err!r}); using 8 MiB / 4 / 8")
        return {"part_size": 8 * MiB, "part_workers": 4, "put_workers": 8}


def processor_argv(
    program: str, bucket: str, topic: str, group: str, out: Path, cfg: Path, n_threads: int
) -> list[str]:
    if program == TUNED:
        exe = [sys.executable, str(BENCHES / "_ours_tuned.py")]
        cfg = cfg.with_name("tuned.config")
        if not cfg.exists():
            cfg.write_text(OMS_CONFIG + "".join(f"{k} = {v}\n" for k, v in TUNED_CONSUMER.items()))
    else:
        exe = [str(processor_exe("ours" if program == "ours" else "theirs"))]
    return [
        *exe,
        *processor_args(bucket, cfg, topic, group, out, n_threads),
        *(TUNED_ARGS if program == TUNED else []),
    ]


@dataclass
class Context:
    """What every run of one workload shares."""

    workload: str
    topic: str
    files: dict[str, int]
    root: Path
    work: Path
    cfg: Path
    client: Any
    upload: dict[str, int]
    args: argparse.Namespace

    @property
    def total(self) -> int:
        return sum(self.files.values())

    def timeout(self, program: str) -> float:
        if self.args.timeout:
            return float(self.args.timeout)
        # Generous: a hang ends the run, a slow program should not.
        rate = 0.5e6 if program == "theirs" else 2e6
        return (300 if program == "theirs" else 120) + self.total / rate


def _record(program: str, run: int, r: dict[str, Any], files: int, total: int) -> dict[str, Any]:
    """Adds the keys every program's run has (same names for ceilings and processors)."""
    seconds = r.get("seconds")
    ok = r.get("status") == "ok" and seconds
    out = {
        "program": program,
        "run": run,
        "status": r.get("status", "?"),
        "seconds": seconds if ok else None,
        "throughput_MBps": round(total / 1e6 / seconds, 2) if ok else None,
        "files_per_s": round(files / seconds, 2) if ok else None,
        "cpu_s": r.get("cpu_s"),
        "cpu_s_total": r.get("cpu_s_total"),
        "peak_rss_MiB": r.get("peak_rss_MiB"),
    }
    svc = r.get("services") or r.get("until_done") or {}
    for k in ("kafka_cpu_s", "s3_cpu_s", "machine_cpu_busy_pct"):
        out[k] = svc.get(k)
    out["service_restarted"] = [n for n in ("kafka", "s3") if svc.get(f"{n}_restarted")]
    return {**out, **{k: v for k, v in r.items() if k not in out}}


def run_ceiling(which: str, run: int, ctx: Context) -> dict[str, Any]:
    out = ctx.work / f"{which}-run{run}.json"
    argv = [sys.executable, str(BENCHES / "_ceilings.py"), which, "--out", str(out)]
    if which == "kafka":
        argv += ["--topic", ctx.topic, "--timeout", str(ctx.timeout("kafka"))]
    else:
        files_json = ctx.work / "files.json"
        if not files_json.exists():
            files_json.write_text(json.dumps(ctx.files))
        argv += [
            "--data",
            str(ctx.root),
            "--files",
            str(files_json),
            *(f"--{k}={v}" for k, v in ctx.upload.items()),
        ]
    log(f"run {run}: {LABELS[which]} (load {load_now()})")
    load_before = load_now()
    log_path = ctx.work / f"{which}-run{run}.log"
    mp = MeasuredProcess(argv, env=os.environ, cwd=ctx.work, log_path=log_path)
    res = mp.wait(timeout=ctx.timeout(which) + 120)
    r: dict[str, Any] = {"status": f"exited with {res.returncode}"}
    if out.exists():
        r = json.loads(out.read_text())
        if res.returncode != 0 and r.get("status") == "ok":
            r["status"] = f"exited with {res.returncode}"
    r.update(
        {
            "cpu_s_total": round(res.cpu_total, 2),
            "peak_rss_MiB": round(res.peak_rss / MiB, 1),
            "process_seconds_total": round(res.wall_total, 2),
            "returncode": res.returncode,
            "killed": res.killed,
            "load_before": load_before,
            "load_after": load_now(),
            "log": scan_log(log_path),
        }
    )
    if r["status"] != "ok":
        r["log_tail"] = log_path.read_text(errors="replace").splitlines()[-30:]
    rec = _record(which, run, r, len(ctx.files), ctx.total)
    if which == "kafka" and rec["status"] == "ok" and r.get("message_bytes", 0) < ctx.total:
        rec["status"] = f"read only {r.get('message_bytes')} bytes of messages"
    _log_result(rec)
    return rec


def run_processor(program: str, run: int, ctx: Context) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    bucket = f"bench-{program}-{tag}"
    group = f"bench-{program}-{tag}"
    out = ctx.work / f"{program}-run{run}"
    out.mkdir()
    ctx.client.create_bucket(Bucket=bucket)
    warm_bucket(ctx.client, bucket)
    expected = {f"{ctx.topic}/{rel}": size for rel, size in ctx.files.items()}
    log(f"run {run}: {LABELS.get(program, program)} -> bucket {bucket} (load {load_now()})")
    try:
        r = run_until_objects(
            program,
            processor_argv(program, bucket, ctx.topic, group, out, ctx.cfg, ctx.args.n_threads),
            env=oms_env()
            if program == "theirs"
            else {**os.environ, **(TUNED_ENV if program == TUNED else {})},
            cwd=ctx.work,
            log_path=ctx.work / f"{program}-run{run}.log",
            client=ctx.client,
            bucket=bucket,
            prefix=f"{ctx.topic}/",
            expected=expected,
            timeout=ctx.timeout(program),
            stop_timeout=ctx.args.stop_timeout,
        )
        r["seconds"] = r["seconds_to_all_objects"]
        r["cpu_s"] = r["cpu_s_at_done"]
        t_ready = r["seconds_to_listening_line"]
        if r["seconds"] and t_ready and r["seconds"] > t_ready:
            r["throughput_after_listening_MBps"] = round(
                ctx.total / 1e6 / (r["seconds"] - t_ready), 2
            )
        r["bucket"], r["group"] = bucket, group
        r["verify"] = verify_sample(ctx, bucket) if r["objects_ok"] else {}
        if r["status"] == "ok" and r["verify"].get("identical") != r["verify"].get("checked"):
            r["status"] = "objects differ from the source files"
    finally:
        if not ctx.args.keep_buckets:
            delete_bucket(ctx.client, bucket)
    rec = _record(program, run, r, len(ctx.files), ctx.total)
    _log_result(rec)
    return rec


def _log_result(r: dict[str, Any]) -> None:
    name = LABELS.get(r["program"], r["program"])
    if r["status"] != "ok":
        log(f"run {r['run']}: {name}: {r['status']}")
        return
    extra = ""
    if "process_seconds_total" in r and r["program"] in PROCESSORS:
        extra = f", exited {r['process_seconds_total'] - r['seconds']:.1f} s later"
    log(
        f"run {r['run']}: {name}: {r['seconds']:.1f} s, {r['throughput_MBps']:.1f} MB/s, "
        f"{r['files_per_s']:.1f} files/s, CPU {r['cpu_s']} s, peak RSS {r['peak_rss_MiB']:.0f} MiB"
        + extra
    )


def _sha256_stream(read: Any, size: int = 8 * MiB) -> str:
    h = hashlib.sha256()
    while block := read(size):
        h.update(block)
    return h.hexdigest()


def verify_sample(ctx: Context, bucket: str) -> dict[str, Any]:
    """Reads back ``--verify`` objects of each group (all with ``--verify_all``) and
    compares their SHA-256 with the source file's."""
    rng = random.Random(ctx.args.seed + 1)
    by_group: dict[str, list[str]] = {}
    for rel in sorted(ctx.files):
        by_group.setdefault(rel.split("/", 1)[0], []).append(rel)
    rels: list[str] = []
    for members in by_group.values():
        n = len(members) if ctx.args.verify_all else min(ctx.args.verify, len(members))
        rels += rng.sample(members, n)
    bad = []
    for rel in rels:
        try:
            body = ctx.client.get_object(Bucket=bucket, Key=f"{ctx.topic}/{rel}")["Body"]
            try:
                got = _sha256_stream(body.read)
            finally:
                body.close()
            with open(ctx.root / rel, "rb") as f:
                want = _sha256_stream(f.read)
        except Exception as err:
            bad.append(f"{rel}: {type(err).__name__}: {err}")
            continue
        if got != want:
            bad.append(f"{rel}: content differs")
    return {"checked": len(rels), "identical": len(rels) - len(bad), "problems": bad[:10]}


# --------------------------------------------------------------------------- summary

STATS = (
    "seconds",
    "throughput_MBps",
    "files_per_s",
    "cpu_s",
    "peak_rss_MiB",
    "kafka_cpu_s",
    "s3_cpu_s",
    "cpu_s_at_listening_line",
)


def summarize(runs: list[dict[str, Any]], n_files: int, total: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for program in (*PROGRAMS, TUNED):
        mine = [r for r in runs if r["program"] == program]
        ok = [r for r in mine if r["status"] == "ok"]
        if not mine:
            continue
        s: dict[str, Any] = {"label": LABELS.get(program, program), "runs": len(mine)}
        s["runs_ok"] = len(ok)
        for key in STATS:
            s[key] = spread([r.get(key) for r in ok])
        if s["cpu_s"]:
            med = s["cpu_s"]["median"]
            s["cpu_ms_per_file"] = round(1000 * med / n_files, 3)
            s["cpu_s_per_GB"] = round(med / (total / 1e9), 2)
        # The CPU of the transfers alone: each run's CPU until done less its
        # start-up's (until the listening line), which does not grow with the files.
        after = [
            r["cpu_s_at_done"] - r["cpu_s_at_listening_line"]
            for r in ok
            if r.get("cpu_s_at_done") is not None and r.get("cpu_s_at_listening_line") is not None
        ]
        if after:
            s["cpu_s_after_listening"] = spread(after)
            med_after = s["cpu_s_after_listening"]["median"]
            s["cpu_ms_per_file_after_listening"] = round(1000 * med_after / n_files, 3)
            s["cpu_s_per_GB_after_listening"] = round(med_after / (total / 1e9), 2)
        summary[program] = s

    def med(program: str, key: str) -> float | None:
        v = (summary.get(program) or {}).get(key)
        return v["median"] if v else None

    ratios: dict[str, Any] = {}
    c, d = med("ours", "throughput_MBps"), med("theirs", "throughput_MBps")
    a, b = med("kafka", "throughput_MBps"), med("s3", "throughput_MBps")
    if c and d:
        ratios["c/d throughput (ours / OpenMSIStream)"] = round(c / d, 2)
        for key, name in (("cpu_s", "CPU s until done"), ("peak_rss_MiB", "peak RSS")):
            oc, od = med("ours", key), med("theirs", key)
            if oc and od:
                ratios[f"d/c {name} (OpenMSIStream / ours)"] = round(od / oc, 2)
    if c and a and b:
        ratios["c/min(a,b) throughput (ours / the lower ceiling)"] = round(c / min(a, b), 2)
        ratios["lower ceiling"] = "a (Kafka)" if a <= b else "b (S3)"
        # The same ratio round by round (a, b and c of one round ran back to back).
        per_round = []
        for run in sorted({r["run"] for r in runs}):
            got = {
                r["program"]: r["throughput_MBps"]
                for r in runs
                if r["run"] == run and r["status"] == "ok"
            }
            if all(got.get(p) for p in ("kafka", "s3", "ours")):
                per_round.append(round(got["ours"] / min(got["kafka"], got["s3"]), 2))
        ratios["c/min(a,b) per round"] = per_round
    if c and b:
        ratios["c/b throughput (ours / S3 ceiling)"] = round(c / b, 2)
    summary["ratios"] = ratios
    return summary


def print_report(result: dict[str, Any]) -> None:
    ds = result["dataset"]
    runs = result["runs"]
    print(f"\n=== workload {result['workload']} (scale {result['scale']})")
    print(f"command: {result['command']}")
    print(
        f"data set: {ds['files']} files, {ds['bytes'] / 1e6:.1f} MB ({ds['bytes'] / MiB:.1f} MiB): "
        + "; ".join(
            f"{g['count']} x {g['min_size'] / MiB:.3g}"
            + (f"-{g['max_size'] / MiB:.3g}" if g["max_size"] != g["min_size"] else "")
            + " MiB"
            for g in ds["groups"]
        )
        + f"; {ds['partitions']} partitions, produced in {ds['produce_seconds']} s"
    )
    u = result["upload_settings"]
    print(
        f"upload settings (ours and the S3 ceiling): part size {u['part_size'] / MiB:g} MiB, "
        f"{u['part_workers']} parts in flight, {u['put_workers']} PUT/complete workers"
    )
    headers = [
        "run",
        "program",
        "status",
        "s",
        "MB/s",
        "files/s",
        "CPU s",
        "CPU s total",
        "peak RSS MiB",
        "Kafka / S3 server CPU s",
        "machine busy %",
        "load before",
        "verified",
        "log err/warn",
    ]
    rows = []
    for r in runs:
        v = r.get("verify") or {}
        lg = r.get("log") or {}
        rows.append(
            [
                r["run"],
                r["program"],
                r["status"]
                + (f" (restarted: {r['service_restarted']})" if r["service_restarted"] else ""),
                r["seconds"] or "-",
                r["throughput_MBps"] or "-",
                r["files_per_s"] or "-",
                r["cpu_s"] if r["cpu_s"] is not None else "-",
                r["cpu_s_total"] if r["cpu_s_total"] is not None else "-",
                r["peak_rss_MiB"],
                f"{r['kafka_cpu_s'] if r['kafka_cpu_s'] is not None else '-'} / "
                f"{r['s3_cpu_s'] if r['s3_cpu_s'] is not None else '-'}",
                r["machine_cpu_busy_pct"] if r["machine_cpu_busy_pct"] is not None else "-",
                r.get("load_before", ["-"])[0],
                f"{v['identical']}/{v['checked']}" if v else "-",
                f"{lg.get('error', 0)}/{lg.get('warning', 0)}",
            ]
        )
    print()
    print(fmt_table(headers, rows))
    for r in runs:
        lg = r.get("log") or {}
        if lg.get("examples") or r.get("log_tail"):
            print(f"\nrun {r['run']} {r['program']}: log lines with error/warning:")
            for line in lg.get("examples", []):
                print(f"    {line}")
            if r.get("log_tail"):
                print("  last lines of its output:")
                for line in r["log_tail"]:
                    print(f"    {line[:300]}")
    summary = result["summary"]
    headers = [
        "program",
        "runs ok",
        "MB/s median (min-max)",
        "files/s",
        "CPU s (until done)",
        "CPU ms/file",
        "CPU s/GB",
        "start-up CPU s",
        "CPU ms/file, CPU s/GB after start-up",
        "peak RSS MiB",
        "Kafka CPU s",
        "S3 server CPU s",
    ]
    rows = [
        [
            s["label"],
            f"{s['runs_ok']}/{s['runs']}",
            fmt_spread(s["throughput_MBps"]),
            fmt_spread(s["files_per_s"]),
            fmt_spread(s["cpu_s"], 2),
            s.get("cpu_ms_per_file", "-"),
            s.get("cpu_s_per_GB", "-"),
            fmt_spread(s["cpu_s_at_listening_line"], 2),
            f"{s['cpu_ms_per_file_after_listening']}, {s['cpu_s_per_GB_after_listening']}"
            if "cpu_ms_per_file_after_listening" in s
            else "-",
            fmt_spread(s["peak_rss_MiB"]),
            fmt_spread(s["kafka_cpu_s"], 2),
            fmt_spread(s["s3_cpu_s"], 2),
        ]
        for p, s in summary.items()
        if p != "ratios"
    ]
    print()
    print(fmt_table(headers, rows))
    if summary.get("ratios"):
        print()
        for k, v in summary["ratios"].items():
            print(f"{k}: {v}")
    if result["scale"] != 1.0:
        print(f"\n(scale {result['scale']}: a quick check, not a measurement of the workload)")


# --------------------------------------------------------------------------- one workload


def result_path(args: argparse.Namespace, workload: str) -> Path:
    if args.out and len(args.workloads) == 1:
        return Path(args.out)
    base = RESULTS if args.scale == 1.0 else SCALED_RESULTS
    name = f"e2e-{workload}" + (f"-scale{args.scale:g}" if args.scale != 1.0 else "")
    if args.only:
        name += "-only-" + "-".join(args.only)
    name += f"-{today()}"
    path = base / f"{name}.json"
    n = 2
    while path.exists():
        path = base / f"{name}-{n}.json"
        n += 1
    return path


def run_workload(
    workload: str, args: argparse.Namespace, common: dict[str, Any]
) -> tuple[dict[str, Any], Path | None]:
    from s3transfer_stream.kafka import create_topic, delete_topic

    bootstrap = os.environ["LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS"]
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{workload}-", dir=common["work"]))
    cfg = work / "bench.config"
    cfg.write_text(OMS_CONFIG)
    upload = upload_settings(cfg)
    groups = scaled(WORKLOADS[workload], args.scale, upload["part_size"])
    root = work / "data"
    topic = f"bench-e2e-{workload}-{uuid.uuid4().hex[:8]}"
    started = now_iso()
    runs: list[dict[str, Any]] = []
    topic_made = False
    try:
        log(f"workload {workload}: making the data set in {root}")
        files = make_dataset(root, groups, args.seed)
        total = sum(files.values())
        log(
            f"{len(files)} files, {total / MiB:.1f} MiB; topic {topic} ({args.partitions} partitions)"
        )
        create_topic(bootstrap, topic, args.partitions)
        topic_made = True
        produce_s = produce(root, files, topic, args.partitions)
        log(f"produced in {produce_s:.1f} s ({total / 1e6 / produce_s:.1f} MB/s)")
        ctx = Context(workload, topic, files, root, work, cfg, common["client"], upload, args)
        programs = list(args.only or PROGRAMS)
        if args.no_baselines:
            programs = [p for p in programs if p not in CEILINGS]
        if args.skip_theirs and "theirs" in programs:
            programs.remove("theirs")
        if args.also_tuned:
            programs.append(TUNED)
        theirs_runs = args.theirs_runs
        if theirs_runs is None:
            theirs_runs = 1 if workload == "large" else args.repeat
        loads = []
        for run in range(args.repeat):
            if args.max_load > 0:
                loads.append(wait_for_low_load(args.max_load, args.max_load_wait))
            else:
                loads.append(load_now())
            todo = [p for p in programs if p != "theirs" or run < theirs_runs]
            for program in todo if run % 2 == 0 else todo[::-1]:
                if program in CEILINGS:
                    runs.append(run_ceiling(program, run, ctx))
                else:
                    runs.append(run_processor(program, run, ctx))
        summary = summarize(runs, len(files), total)
        result = {
            "benchmark": "e2e",
            "workload": workload,
            "scale": args.scale,
            "started": started,
            "finished": now_iso(),
            "command": common["command"],
            "cwd": common["cwd"],
            "machine": common["machine"],
            "versions": common["versions"],
            "measured_package": common["snapshot"],
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
            "upload_settings": upload,
            "n_threads": args.n_threads,
            "theirs_runs": theirs_runs if "theirs" in programs else 0,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "runs": runs,
            "summary": summary,
        }
        print_report(result)
        path = None
        if not args.no_save:
            path = result_path(args, workload)
            write_json(path, result)
        return result, path
    finally:
        if topic_made:
            try:
                delete_topic(bootstrap, topic)
            except Exception as err:
                log(f"could not delete topic {topic}: {err}")
        shutil.rmtree(work, ignore_errors=True)


def redraw_chart(results_dir: Path) -> None:
    try:
        import chart

        png = chart.draw(results_dir)
        if png:
            log(f"chart written to {png.relative_to(REPO) if png.is_relative_to(REPO) else png}")
    except Exception as err:  # a chart problem must not lose the measurements
        log(f"could not draw the chart: {type(err).__name__}: {err}")


def _list(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--workload",
        default="typical",
        help=f"one of {', '.join(WORKLOADS)}, several comma-separated, or all (= {','.join(NAMED)}); default typical",
    )
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="shrink the workload for a quick check (file counts, or the sizes of groups of "
        "fewer than 10 files); results then go to benches/results/scaled/",
    )
    ap.add_argument("--repeat", type=int, default=3, help="rounds per workload (default 3)")
    ap.add_argument(
        "--theirs_runs",
        type=int,
        default=None,
        help="rounds with OpenMSIStream (default: 1 on large, --repeat otherwise)",
    )
    ap.add_argument("--skip_theirs", action="store_true", help="leave OpenMSIStream out")
    ap.add_argument(
        "--only",
        type=_list,
        default=None,
        help=f"comma-separated subset of {','.join(PROGRAMS)}",
    )
    ap.add_argument(
        "--no_baselines", action="store_true", help="leave out the ceilings (a) and (b)"
    )
    ap.add_argument(
        "--also_tuned",
        action="store_true",
        help=f"also run {TUNED}: ours through benches/_ours_tuned.py with {TUNED_CONSUMER}, "
        f"{' '.join(TUNED_ARGS)} and 16 messages per consume call (the defaults since "
        "2026-11-27; kept to compare with the runs before)",
    )
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--n_threads", type=int, default=2, help="--n_threads of both processors")
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="per run, until all objects are listed (default: from the data size, longer "
        "for OpenMSIStream)",
    )
    ap.add_argument("--stop_timeout", type=float, default=60.0, help="after 'quit' until SIGTERM")
    ap.add_argument(
        "--verify", type=int, default=3, help="objects of each file group read back per run"
    )
    ap.add_argument("--verify_all", action="store_true", help="read back every object")
    ap.add_argument("--seed", type=int, default=20261127)
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
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON path (one workload only; default see above)"
    )
    ap.add_argument("--no_save", action="store_true", help="write no JSON (and no chart)")
    ap.add_argument("--no_chart", action="store_true", help="do not redraw the chart")
    ap.add_argument(
        "--no_snapshot",
        action="store_true",
        help="run the installed package directly instead of a copy taken at the start",
    )
    ap.add_argument("--keep_buckets", action="store_true")
    args = ap.parse_args(argv)
    args.workloads = NAMED if args.workload == "all" else tuple(_list(args.workload))
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown or not args.workloads:
        ap.error(f"unknown workload(s) {unknown}: choose from {', '.join(WORKLOADS)} or all")
    if args.only and not set(args.only) <= set(PROGRAMS):
        ap.error(f"--only takes a subset of {','.join(PROGRAMS)}")
    if args.scale <= 0:
        ap.error("--scale must be > 0")

    raw = argv if argv is not None else sys.argv[1:]
    exe = (
        os.path.relpath(sys.executable)
        if Path(sys.executable).is_relative_to(REPO)
        else sys.executable
    )
    script = os.path.relpath(Path(__file__).resolve())
    command = shlex.join([exe, script, *raw])
    log(f"command: {command}")

    load_service_env()
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    try:
        snapshot = snapshot_package(work) if not args.no_snapshot else {}
        if "theirs" in (args.only or PROGRAMS) and not args.skip_theirs:
            oms_python()
        common = {
            "work": work,
            "client": s3_client(),
            "command": command,
            "cwd": os.getcwd(),
            "machine": machine_info(),
            "versions": package_versions(),
            "snapshot": snapshot,
        }
        ok = True
        saved = []
        for workload in args.workloads:
            result, path = run_workload(workload, args, common)
            ok = ok and bool(result["runs"]) and all(r["status"] == "ok" for r in result["runs"])
            if path:
                saved.append(path)
                if not args.no_chart:
                    redraw_chart(path.parent)
        if len(args.workloads) > 1:
            print(f"\ncommand: {command}")
            for p in saved:
                print(f"results: {p}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
