"""The producers side by side: ours vs OpenMSIStream 1.8.8's, against the same local broker.

Two benchmarks (``--bench dir,file``, default both):

=======  ==========================================================================
dir      ``DataFileUploadDirectory --upload_existing`` on 1000 files x 256 KiB in 10
         subdirectories, already in the directory when the program starts (their
         mtimes set an hour back, so neither program waits out ``--watchdog_lag_time``
         for them). Time from the process's start until the topic holds every chunk
         message (the sum of the partitions' high watermarks, polled every 0.1 s, reaches
         the expected count); then ``quit`` on stdin and the time the program takes to
         stop cleanly.
file     ``UploadDataFile`` on one 1 GiB file. Time from the process's start until it
         exits (it exits once every chunk is acknowledged); the topic must then hold
         exactly the expected count.
=======  ==========================================================================

The expected count is the sum over files of ceil(size / chunk size), at least 1 per file
(an empty file is one message); both programs run with ``--chunk_size 524288`` (the default
of both), ``--n_threads 2`` and the same config file (the one e2e.py uses,
``local_broker_test_s3_transfer.config``), each on a fresh topic with ``--partitions``
partitions (default 3), deleted afterwards. Each run records seconds, files/s, MB/s (10^6
bytes of file data per second), the CPU seconds (user+sys) of the program at the moment the
last message was in the topic and over its whole life (``wait4``), and its peak RSS (``VmHWM``
and 50 ms psutil samples, ``_common.MeasuredProcess``). Afterwards the topic is read back and
every message decoded (msgpack) to check that each expected file arrived once, with all its
chunks and its size (``--no_verify`` skips that).

``--scale F`` shrinks both: F times as many small files (at least 1), the big file F times the
size (at least 2 chunks and a bit). ``--repeat N`` rounds (default 3), the order of the two
programs alternating from round to round; the tables give medians with min-max over rounds
and the ratios ours/theirs. Results go to ``benches/results/producers-<date>.json`` (runs with
``--scale`` other than 1 to ``benches/results/scaled/``, not committed) with the exact command,
and the chart ``producers.png`` of files/s and MB/s beside it.

Every program of the invocation runs from a copy of the installed package taken at the start
(``_common.snapshot_package``): our CLIs are started as programs, from the venv's console
scripts, with that copy first on ``PYTHONPATH``; OpenMSIStream's from its own venv
(``bash services/openmsistream-peer.sh install``).

Run:  .venv/bin/python benches/producers.py [--bench dir,file] [--scale 0.05] [--repeat 3]
      [--max_load 1.0] [--skip_theirs] [--no_save]
The local services must be running (``bash services/all.sh start``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import (
    CHUNK_SIZE,
    OMS_CONFIG,
    REPO,
    RESULTS,
    VENV_BIN,
    MeasuredProcess,
    MiB,
    fmt_spread,
    fmt_table,
    load_now,
    load_service_env,
    log,
    machine_info,
    now_iso,
    oms_env,
    oms_python,
    package_versions,
    scan_log,
    snapshot_package,
    spread,
    today,
    wait_for_low_load,
    write_json,
)

KiB = 1 << 10
GiB = 1 << 30
BENCHES = ("dir", "file")
PROGRAMS = ("ours", "theirs")
LABELS = {"ours": "ours", "theirs": "OpenMSIStream 1.8.8"}
TITLES = {
    "dir": "DataFileUploadDirectory --upload_existing",
    "file": "UploadDataFile",
}
PROGRAM_NAMES = {"dir": "DataFileUploadDirectory", "file": "UploadDataFile"}
SMALL_FILES = 1000
SMALL_SIZE = 256 * KiB
SUBDIRS = 10
BIG_SIZE = GiB
LOGS_SUBDIR = "LOGS"  # where both directory uploaders keep their registry and log
WORK_PREFIX = "s3ts-bench-producers-"
SCALED_RESULTS = RESULTS / "scaled"
PNG_NAME = "producers.png"
POLL = 0.1


def n_messages(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    return max(1, -(-size // chunk_size))


# --------------------------------------------------------------------------- data


def _write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n


def make_small_files(root: Path, count: int, seed: int) -> dict[str, int]:
    """``count`` files of 256 KiB under ``root``, spread over the subdirectories."""
    files: dict[str, int] = {}
    rng = random.Random(seed)
    for i in range(count):
        # No "log" anywhere in a path: OpenMSIStream's default --upload_regex skips those.
        rel = f"d{i % SUBDIRS:02d}/small_{i:04d}_{rng.randrange(1 << 16):04x}.dat"
        _write_random(root / rel, SMALL_SIZE)
        files[rel] = SMALL_SIZE
    return files


def age_files(root: Path) -> None:
    """Sets every file's mtime an hour back: both uploaders then see the existing files as
    settled at start instead of waiting out their lag time for the newest ones."""
    then = time.time() - 3600
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (then, then))


def clean_upload_dir(root: Path, keep: dict[str, int]) -> None:
    """Removes what a run left in the data directory (the uploaders' LOGS/ with their
    registries, which would make the next run skip the files; UploadDataFile.log)."""
    for p in sorted(root.rglob("*"), reverse=True):
        rel = p.relative_to(root).as_posix()
        if p.is_dir():
            if not any(k.startswith(rel + "/") for k in keep):
                shutil.rmtree(p, ignore_errors=True)
        elif rel not in keep:
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- Kafka


class Broker:
    """The harness's own admin client and watermark reader (not our package's ``kafka``
    module: the measured programs are only ever used as programs)."""

    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka import Consumer
        from confluent_kafka.admin import AdminClient

        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-producers-watch-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )

    def create_topic(self, topic: str, partitions: int) -> None:
        from confluent_kafka.admin import NewTopic

        fut = self.admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=30)
        fut[topic].result(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            md = self.admin.list_topics(topic, timeout=10).topics.get(topic)
            if md is not None and md.error is None and len(md.partitions) == partitions:
                if all(p.leader >= 0 for p in md.partitions.values()):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"topic {topic} did not get its {partitions} partitions")

    def delete_topic(self, topic: str) -> None:
        try:
            self.admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=60)
        except Exception as err:
            log(f"could not delete topic {topic}: {err}")

    def high_watermark(self, topic: str, partition: int) -> int:
        from confluent_kafka import KafkaException, TopicPartition

        deadline = time.monotonic() + 30
        while True:
            try:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10, cached=False
                )
                return int(high)
            except KafkaException:
                # Right after a topic is created the client's metadata can still name no
                # leader, or a stale one, for a moment.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def end_offsets(self, topic: str, partitions: int) -> int:
        """Messages in a fresh topic: the sum of its partitions' high watermarks."""
        return sum(self.high_watermark(topic, p) for p in range(partitions))

    def close(self) -> None:
        self.consumer.close()


def read_back(
    broker: Broker, topic: str, partitions: int, expected: dict[str, int]
) -> dict[str, Any]:
    """Reads the whole topic and checks every expected file arrived once: its chunks, each
    index once, ``n_total_chunks`` as expected, the data lengths summing to its size."""
    import msgpack
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"bench-producers-verify-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    ends = {p: broker.high_watermark(topic, p) for p in range(partitions)}
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions) if ends[p] > 0])
    left = {p for p, e in ends.items() if e > 0}
    got: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    deadline = time.monotonic() + 120 + sum(expected.values()) / 50e6
    n = 0
    try:
        while left and time.monotonic() < deadline:
            for msg in c.consume(num_messages=64, timeout=1.0):
                if msg.error():
                    problems.append(f"consume error: {msg.error()}")
                    continue
                n += 1
                if msg.offset() + 1 >= ends[msg.partition()]:
                    left.discard(msg.partition())
                # The chunk message: filename, file hash, chunk hash, offset, chunk index,
                # number of chunks, subdir, filename append, data [, mtime].
                fields = msgpack.unpackb(msg.value(), raw=False)
                name, idx, total, subdir, data = (
                    fields[0],
                    fields[4],
                    fields[5],
                    fields[6],
                    fields[8],
                )
                rel = f"{subdir}/{name}" if subdir else name
                f = got.setdefault(rel, {"indices": set(), "n_total": set(), "bytes": 0, "n": 0})
                f["indices"].add(idx)
                f["n_total"].add(total)
                f["bytes"] += len(data)
                f["n"] += 1
    finally:
        c.close()
    if left:
        problems.append(f"partitions {sorted(left)} not read to their end in time")
    for rel, size in expected.items():
        f = got.get(rel)
        want = n_messages(size)
        if f is None:
            problems.append(f"{rel}: no message")
        elif f["n"] != want or len(f["indices"]) != want or f["n_total"] != {want}:
            problems.append(
                f"{rel}: {f['n']} messages, {len(f['indices'])} distinct indices, "
                f"n_total_chunks {sorted(f['n_total'])}; expected {want}"
            )
        elif f["bytes"] != size:
            problems.append(f"{rel}: {f['bytes']} bytes of data, expected {size}")
    extra = sorted(set(got) - set(expected))
    if extra:
        problems.append(f"{len(extra)} unexpected file(s), e.g. {extra[0]}")
    return {
        "messages_read": n,
        "files_checked": len(expected),
        "files_ok": len(expected) - sum(1 for p in problems if p.split(":")[0] in expected),
        "ok": not problems,
        "problems": problems[:10],
    }


# --------------------------------------------------------------------------- runs


def exe(program: str, name: str) -> Path:
    if program == "ours":
        return VENV_BIN / name
    return oms_python().parent / name


class Context:
    """What the runs of one invocation share."""

    def __init__(self, args: argparse.Namespace, work: Path, broker: Broker) -> None:
        self.args = args
        self.work = work
        self.broker = broker
        self.cfg = work / "bench.config"
        self.cfg.write_text(OMS_CONFIG)
        self.small_root = work / "upload_dir"
        self.big_root = work / "big"
        self.small: dict[str, int] = {}
        self.big: dict[str, int] = {}

    def env(self, program: str) -> dict[str, str]:
        return oms_env() if program == "theirs" else dict(os.environ)

    def files(self, bench: str) -> dict[str, int]:
        return self.small if bench == "dir" else self.big

    def timeout(self, bench: str, program: str) -> float:
        if self.args.timeout:
            return float(self.args.timeout)
        # Generous: a hang ends the run, a slow program should not.
        rate = 0.5e6 if program == "theirs" else 2e6
        return 120 + sum(self.files(bench).values()) / rate


def argv_for(bench: str, program: str, ctx: Context, topic: str) -> list[str]:
    common = [
        "--config",
        str(ctx.cfg),
        "--topic_name",
        topic,
        "--chunk_size",
        str(CHUNK_SIZE),
        "--n_threads",
        str(ctx.args.n_threads),
    ]
    if bench == "dir":
        return [
            str(exe(program, PROGRAM_NAMES[bench])),
            str(ctx.small_root),
            *common,
            "--upload_existing",
        ]
    (rel,) = ctx.big
    return [str(exe(program, PROGRAM_NAMES[bench])), str(ctx.big_root / rel), *common]


def run_one(bench: str, program: str, run: int, ctx: Context) -> dict[str, Any]:
    files = ctx.files(bench)
    root = ctx.small_root if bench == "dir" else ctx.big_root
    parts = ctx.args.partitions
    expected = sum(n_messages(s) for s in files.values())
    total = sum(files.values())
    topic = f"bench-producers-{bench}-{program}-{uuid.uuid4().hex[:8]}"
    log_path = ctx.work / f"{bench}-{program}-run{run}.log"
    clean_upload_dir(root, files)
    ctx.broker.create_topic(topic, parts)
    argv = argv_for(bench, program, ctx, topic)
    log(f"run {run}: {bench} {LABELS[program]} -> topic {topic} (load {load_now()})")
    load_before = load_now()
    status = "ok"
    t_first = t_done = cpu_done = None
    rss_done = 0
    t_quit = None
    in_topic = 0
    try:
        mp = MeasuredProcess(argv, env=ctx.env(program), cwd=ctx.work, log_path=log_path)
        deadline = time.monotonic() + ctx.timeout(bench, program)
        try:
            while True:
                alive = mp.alive()
                in_topic = ctx.broker.end_offsets(topic, parts)
                if in_topic and t_first is None:
                    t_first = mp.elapsed()
                if in_topic >= expected and t_done is None:
                    t_done = mp.elapsed()
                    cpu_done = mp.cpu_now()
                    rss_done = mp.rss_peak_so_far()
                    # UploadDataFile's exit is timed by wait() below, which polls more often.
                    break
                if not alive:
                    break
                if time.monotonic() >= deadline:
                    status = f"timeout after {ctx.timeout(bench, program):.0f} s"
                    break
                time.sleep(POLL)
        finally:
            if bench == "dir" or (t_done is None and mp.alive()):
                t_quit = mp.elapsed()
                # OpenMSIStream reads stdin one character a second: "q" is its quit.
                mp.send("quit\n" if program == "ours" else "q\n")
            res = mp.wait(timeout=ctx.args.stop_timeout)
        in_topic = ctx.broker.end_offsets(topic, parts)
        if status == "ok":
            if bench == "file" and res.returncode != 0:
                status = f"exited with {res.returncode}"
            elif t_done is None:
                status = f"exited early with {in_topic}/{expected} messages in the topic"
            elif in_topic != expected:
                status = f"{in_topic} messages in the topic, expected {expected}"
            elif bench == "dir" and (res.killed or res.returncode != 0):
                status = f"did not stop cleanly ({res.killed or f'exit {res.returncode}'})"
        verify: dict[str, Any] = {}
        if not ctx.args.no_verify and in_topic:
            verify = read_back(ctx.broker, topic, parts, files)
            if status == "ok" and not verify["ok"]:
                status = "messages differ from the files"
    finally:
        ctx.broker.delete_topic(topic)
        clean_upload_dir(root, files)
    seconds = t_done if bench == "dir" else res.wall_total
    ok = status == "ok" and seconds
    rec: dict[str, Any] = {
        "bench": bench,
        "program": program,
        "run": run,
        "status": status,
        "seconds": round(seconds, 3) if ok else None,
        "files_per_s": round(len(files) / seconds, 2) if ok else None,
        "throughput_MBps": round(total / 1e6 / seconds, 2) if ok else None,
        # For the directory uploader, "until done" is the moment the last message was in
        # the topic; UploadDataFile is done when it exits.
        "cpu_s": round(cpu_done if bench == "dir" and cpu_done else res.cpu_total, 2)
        if ok
        else None,
        "cpu_s_total": round(res.cpu_total, 2),
        "peak_rss_MiB": round(res.peak_rss / MiB, 1),
        "peak_rss_hwm_MiB": round(res.peak_rss_hwm / MiB, 1),
        "peak_rss_sampled_MiB": round(res.peak_rss_sampled / MiB, 1),
        "peak_rss_sampled_at_done_MiB": round(rss_done / MiB, 1) if rss_done else None,
        "seconds_to_first_message": round(t_first, 3) if t_first is not None else None,
        "seconds_all_messages_in_topic": round(t_done, 3) if t_done is not None else None,
        # Without the start-up (interpreter, imports, broker connection, directory scan):
        # from the first message in the topic to the last.
        "MBps_first_to_last_message": round(total / 1e6 / (t_done - t_first), 2)
        if ok and t_done and t_first is not None and t_done > t_first
        else None,
        "process_seconds_total": round(res.wall_total, 2),
        "seconds_to_stop_after_quit": round(res.wall_total - t_quit, 2)
        if t_quit is not None
        else None,
        "messages_expected": expected,
        "messages_in_topic": in_topic,
        "files": len(files),
        "bytes": total,
        "returncode": res.returncode,
        "killed": res.killed,
        "argv": [Path(argv[0]).name, *argv[1:]],
        "topic": topic,
        "load_before": load_before,
        "load_after": load_now(),
        "verify": verify,
        "log": scan_log(log_path),
        "log_tail": []
        if status == "ok"
        else log_path.read_text(errors="replace").splitlines()[-30:],
        "rss_series_MiB": [(t, round(r / MiB, 1)) for t, r in res.rss_series],
    }
    if status == "ok":
        stop = rec["seconds_to_stop_after_quit"]
        log(
            f"run {run}: {bench} {LABELS[program]}: {rec['seconds']:.2f} s, "
            f"{rec['files_per_s']:.1f} files/s, {rec['throughput_MBps']:.1f} MB/s, "
            f"CPU {rec['cpu_s']} s, peak RSS {rec['peak_rss_MiB']:.0f} MiB"
            + (f", stopped {stop:.1f} s after quit" if stop is not None else "")
        )
    else:
        log(f"run {run}: {bench} {LABELS[program]}: {status}")
    return rec


# --------------------------------------------------------------------------- summary

STATS = (
    "seconds",
    "files_per_s",
    "throughput_MBps",
    "MBps_first_to_last_message",
    "cpu_s",
    "cpu_s_total",
    "peak_rss_MiB",
    "seconds_to_first_message",
    "seconds_to_stop_after_quit",
)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for bench in BENCHES:
        per: dict[str, Any] = {}
        for program in PROGRAMS:
            mine = [r for r in runs if r["bench"] == bench and r["program"] == program]
            if not mine:
                continue
            ok = [r for r in mine if r["status"] == "ok"]
            s: dict[str, Any] = {"label": LABELS[program], "runs": len(mine), "runs_ok": len(ok)}
            for key in STATS:
                s[key] = spread([r.get(key) for r in ok], 3)
            if s["cpu_s"] and ok:
                s["cpu_ms_per_file"] = round(1000 * s["cpu_s"]["median"] / ok[0]["files"], 3)
                s["cpu_s_per_GB"] = round(s["cpu_s"]["median"] / (ok[0]["bytes"] / 1e9), 2)
            per[program] = s
        if not per:
            continue

        def med(program: str, key: str, per: dict[str, Any] = per) -> float | None:
            v = (per.get(program) or {}).get(key)
            return v["median"] if v else None

        ratios: dict[str, float] = {}
        for key in ("files_per_s", "throughput_MBps", "cpu_s", "peak_rss_MiB"):
            a, b = med("ours", key), med("theirs", key)
            if a and b:
                ratios[f"{key} ours/theirs"] = round(a / b, 2)
        # Round by round (the two programs of one round ran back to back).
        per_round = []
        for run in sorted({r["run"] for r in runs if r["bench"] == bench}):
            got = {
                r["program"]: r["files_per_s"]
                for r in runs
                if r["bench"] == bench and r["run"] == run and r["status"] == "ok"
            }
            if got.get("ours") and got.get("theirs"):
                per_round.append(round(got["ours"] / got["theirs"], 2))
        if per_round:
            ratios["files_per_s ours/theirs per round"] = per_round  # type: ignore[assignment]
        per["ratios"] = ratios
        out[bench] = per
    return out


def print_report(result: dict[str, Any]) -> None:
    ds = result["dataset"]
    print(f"\n=== producers (scale {result['scale']})")
    print(f"command: {result['command']}")
    if "dir" in ds:
        d = ds["dir"]
        print(
            f"dir: {d['files']} files x {d['file_size'] / KiB:g} KiB in {d['subdirs']} "
            f"subdirectories, {d['bytes'] / 1e6:.1f} MB, {d['messages']} messages"
        )
    if "file" in ds:
        f = ds["file"]
        print(
            f"file: one file of {f['bytes']} bytes ({f['bytes'] / MiB:.1f} MiB), {f['messages']} messages"
        )
    print(
        f"chunk size {result['chunk_size']}, --n_threads {result['n_threads']}, "
        f"{result['partitions']} partitions, load before rounds {result['load_before_rounds']}"
    )
    headers = [
        "bench",
        "run",
        "program",
        "status",
        "s",
        "files/s",
        "MB/s",
        "CPU s",
        "CPU s total",
        "peak RSS MiB",
        "stop s",
        "load before",
        "verified",
        "log err/warn",
    ]
    rows = []
    for r in result["runs"]:
        v = r.get("verify") or {}
        lg = r.get("log") or {}
        rows.append(
            [
                r["bench"],
                r["run"],
                r["program"],
                r["status"],
                r["seconds"] or "-",
                r["files_per_s"] or "-",
                r["throughput_MBps"] or "-",
                r["cpu_s"] if r["cpu_s"] is not None else "-",
                r["cpu_s_total"],
                r["peak_rss_MiB"],
                r["seconds_to_stop_after_quit"]
                if r["seconds_to_stop_after_quit"] is not None
                else "-",
                r["load_before"][0],
                (f"{v['files_ok']}/{v['files_checked']}" if v else "-"),
                f"{lg.get('error', 0)}/{lg.get('warning', 0)}",
            ]
        )
    print()
    print(fmt_table(headers, rows))
    for r in result["runs"]:
        lg = r.get("log") or {}
        problems = (r.get("verify") or {}).get("problems")
        if lg.get("examples") or r.get("log_tail") or problems:
            print(f"\n{r['bench']} run {r['run']} {r['program']}:")
            for line in problems or []:
                print(f"    read back: {line}")
            for line in lg.get("examples", []):
                print(f"    {line}")
            for line in r.get("log_tail") or []:
                print(f"    | {line[:300]}")
    headers = [
        "bench",
        "program",
        "runs ok",
        "files/s",
        "MB/s",
        "CPU s (until done)",
        "CPU ms/file",
        "CPU s/GB",
        "peak RSS MiB",
    ]
    rows = []
    for bench, per in result["summary"].items():
        for program, s in per.items():
            if program == "ratios":
                continue
            rows.append(
                [
                    bench,
                    s["label"],
                    f"{s['runs_ok']}/{s['runs']}",
                    fmt_spread(s["files_per_s"]),
                    fmt_spread(s["throughput_MBps"]),
                    fmt_spread(s["cpu_s"], 2),
                    s.get("cpu_ms_per_file", "-"),
                    s.get("cpu_s_per_GB", "-"),
                    fmt_spread(s["peak_rss_MiB"]),
                ]
            )
    print()
    print(fmt_table(headers, rows))
    for bench, per in result["summary"].items():
        for k, v in per.get("ratios", {}).items():
            print(f"{bench}: {k}: {v}")
    if result["scale"] != 1.0:
        print(f"\n(scale {result['scale']}: a quick check, not a measurement)")


# --------------------------------------------------------------------------- chart


def latest_result(results_dir: Path) -> dict[str, Any] | None:
    best: dict[str, Any] | None = None
    for path in sorted(results_dir.glob("producers-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("benchmark") != "producers" or not data.get("summary"):
            continue
        if best is None or data.get("finished", "") > best.get("finished", ""):
            best = data
    return best


def draw(results_dir: Path, out: Path | None = None) -> Path | None:
    """files/s and MB/s of both programs from the newest producers JSON in ``results_dir``."""
    result = latest_result(results_dir)
    if result is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ours": "#d9822b", "theirs": "#6a9f58"}
    summary = result["summary"]
    benches_run = [b for b in BENCHES if b in summary]
    # files/s of one file says nothing: that panel shows the directory uploader only.
    panels = [
        ("files_per_s", "files/s", [b for b in benches_run if b == "dir"]),
        ("throughput_MBps", "MB/s (10^6 B/s of file data)", benches_run),
    ]
    panels = [p for p in panels if p[2]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 + 3.5 * len(panels), 5.2), squeeze=False)
    for ax, (key, ylabel, benches) in zip(axes[0], panels, strict=True):
        width = 0.36
        top = 0.0
        for k, program in enumerate(PROGRAMS):
            for i, bench in enumerate(benches):
                s = (summary[bench].get(program) or {}).get(key)
                x = i + (k - 0.5) * width
                if not s:
                    ax.text(x, 0.0, "not run", rotation=90, ha="center", va="bottom", fontsize=7)
                    continue
                med, lo, hi = s["median"], s["min"], s["max"]
                top = max(top, hi)
                ax.bar(
                    x,
                    med,
                    width,
                    color=colors[program],
                    yerr=[[med - lo], [hi - med]],
                    capsize=3,
                    ecolor="#333333",
                    error_kw={"linewidth": 0.8},
                )
                ax.text(x, hi * 1.02, f"{med:.3g}", ha="center", va="bottom", fontsize=8)
        ticks = []
        for bench in benches:
            ratio = summary[bench].get("ratios", {}).get(f"{key} ours/theirs")
            ds = result["dataset"].get(bench, {})
            what = (
                f"{ds.get('files', '?')} x {ds.get('file_size', 0) / KiB:g} KiB"
                if bench == "dir"
                else f"1 x {ds.get('bytes', 0) / MiB:,.0f} MiB"
            )
            ticks.append(
                f"{PROGRAM_NAMES[bench]}\n{what}\n" + (f"ours/theirs {ratio:g}x" if ratio else "")
            )
        ax.set_xticks(range(len(benches)), ticks, fontsize=8)
        ax.set_ylim(0, max(top, 1) * 1.15)
        ax.set_ylabel(f"{ylabel}\nmedian; bars: min-max")
        ax.grid(axis="y", alpha=0.25)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[p]) for p in PROGRAMS]
    axes[0][0].legend(handles, [LABELS[p] for p in PROGRAMS], fontsize=8, loc="upper right")
    loads = [lb[0] for lb in result.get("load_before_rounds", [])]
    n_rounds = len(loads)
    sub = (
        f"measured {result.get('finished', '?')[:10]}, commit "
        f"{result.get('measured_package', {}).get('commit', '?')}; "
        f"{result.get('machine', {}).get('nproc', '?')} vCPUs, broker on the same machine; "
        f"{n_rounds} round(s), 1-min load before rounds {min(loads, default=0):g}-{max(loads, default=0):g}"
    )
    if result.get("scale", 1.0) != 1.0:
        sub += f"\nSCALE {result['scale']:g}: a quick check, not a measurement"
    fig.suptitle(
        "s3transfer-stream producers vs OpenMSIStream 1.8.8 (benches/producers.py)\n" + sub,
        fontsize=9,
    )
    fig.tight_layout()
    out = out or results_dir / PNG_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- main


def result_path(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    base = RESULTS if args.scale == 1.0 else SCALED_RESULTS
    name = "producers" + (f"-scale{args.scale:g}" if args.scale != 1.0 else "")
    if args.benches != BENCHES:
        name += "-" + "-".join(args.benches)
    name += f"-{today()}"
    path = base / f"{name}.json"
    n = 2
    while path.exists():
        path = base / f"{name}-{n}.json"
        n += 1
    return path


def _list(value: str) -> tuple[str, ...]:
    return tuple(v for v in value.split(",") if v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--bench", type=_list, default=BENCHES, help="dir, file or dir,file (default both)"
    )
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="shrink the data for a quick check (F times as many small files, the big file "
        "F times the size); results then go to benches/results/scaled/",
    )
    ap.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--skip_theirs", action="store_true", help="leave OpenMSIStream out")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--n_threads", type=int, default=2, help="--n_threads of both programs")
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="per run (default: from the data size, longer for OpenMSIStream)",
    )
    ap.add_argument(
        "--stop_timeout", type=float, default=60.0, help="after quit (or exit) until SIGTERM"
    )
    ap.add_argument("--no_verify", action="store_true", help="do not read the topics back")
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
    ap.add_argument("--no_save", action="store_true", help="write no JSON (and no chart)")
    ap.add_argument("--no_chart", action="store_true", help="do not redraw the chart")
    ap.add_argument(
        "--chart_only",
        action="store_true",
        help="only redraw the chart from the newest JSON (of benches/results/, or of "
        "benches/results/scaled/ with --scale other than 1)",
    )
    ap.add_argument(
        "--no_snapshot",
        action="store_true",
        help="run the installed package directly instead of a copy taken at the start",
    )
    args = ap.parse_args(argv)
    args.benches = tuple(b for b in BENCHES if b in args.bench)
    if not args.benches or set(args.bench) - set(BENCHES):
        ap.error(f"--bench takes a subset of {','.join(BENCHES)}")
    if args.scale <= 0:
        ap.error("--scale must be > 0")
    if args.chart_only:
        png = draw(RESULTS if args.scale == 1.0 else SCALED_RESULTS)
        print(png or "no producers results to draw")
        return 0 if png else 1

    raw = argv if argv is not None else sys.argv[1:]
    python = (
        os.path.relpath(sys.executable)
        if Path(sys.executable).is_relative_to(REPO)
        else sys.executable
    )
    command = shlex.join([python, os.path.relpath(Path(__file__).resolve()), *raw])
    log(f"command: {command}")

    load_service_env()
    programs = ("ours",) if args.skip_theirs else PROGRAMS
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    broker = None
    try:
        snapshot = snapshot_package(work) if not args.no_snapshot else {}
        if "theirs" in programs:
            oms_python()
        broker = Broker(os.environ["LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS"])
        ctx = Context(args, work, broker)
        dataset: dict[str, Any] = {}
        if "dir" in args.benches:
            count = max(1, round(SMALL_FILES * args.scale))
            log(f"writing {count} files of {SMALL_SIZE // KiB} KiB to {ctx.small_root}")
            ctx.small = make_small_files(ctx.small_root, count, args.seed)
            age_files(ctx.small_root)
            dataset["dir"] = {
                "files": count,
                "file_size": SMALL_SIZE,
                "subdirs": min(SUBDIRS, count),
                "bytes": sum(ctx.small.values()),
                "messages": sum(n_messages(s) for s in ctx.small.values()),
            }
        if "file" in args.benches:
            size = max(2 * CHUNK_SIZE + KiB, round(BIG_SIZE * args.scale))
            rel = "big.dat"
            log(f"writing one file of {size / MiB:.1f} MiB to {ctx.big_root}")
            _write_random(ctx.big_root / rel, size)
            age_files(ctx.big_root)
            ctx.big = {rel: size}
            dataset["file"] = {"files": 1, "bytes": size, "messages": n_messages(size)}
        started = now_iso()
        runs: list[dict[str, Any]] = []
        loads = []
        for run in range(args.repeat):
            if args.max_load > 0:
                loads.append(wait_for_low_load(args.max_load, args.max_load_wait))
            else:
                loads.append(load_now())
            order = programs if run % 2 == 0 else programs[::-1]
            for bench in args.benches:
                for program in order:
                    runs.append(run_one(bench, program, run, ctx))
        result = {
            "benchmark": "producers",
            "scale": args.scale,
            "started": started,
            "finished": now_iso(),
            "command": command,
            "cwd": os.getcwd(),
            "machine": machine_info(),
            "versions": package_versions(),
            "measured_package": snapshot,
            "load_before_rounds": loads,
            "dataset": dataset,
            "chunk_size": CHUNK_SIZE,
            "partitions": args.partitions,
            "n_threads": args.n_threads,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "runs": runs,
            "summary": summarize(runs),
        }
        print_report(result)
        if not args.no_save:
            path = result_path(args)
            write_json(path, result)
            if not args.no_chart:
                try:
                    png = draw(path.parent)
                    if png:
                        log(f"chart written to {png.relative_to(REPO)}")
                except Exception as err:  # a chart problem must not lose the measurements
                    log(f"could not draw the chart: {type(err).__name__}: {err}")
        return 0 if runs and all(r["status"] == "ok" for r in runs) else 1
    finally:
        if broker is not None:
            broker.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
