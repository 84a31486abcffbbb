"""Encrypted throughput beside the plain figure: our producer and our processor, the same
files once in plaintext and once through KafkaCrypto (issue 12).

The files (written once, random bytes): ``--small`` files of 256 KiB (default 200, one
chunk each) and ``--big`` files of 32 MiB (default 4, 64 chunks each), 512 KiB chunks.
``--scale F`` gives F times as many small files (at least 1) and big files F times the size
(at least 2 chunks).

Each of ``--repeat`` rounds (default 3; the order of the two modes alternates) runs both
modes, each on a fresh topic with ``--partitions`` partitions:

1. ``DataFileUploadDirectory --upload_existing`` on the files (their mtimes an hour back,
   so it does not wait out its lag time). Timed from its start until the topic holds every
   chunk message (the sum of the high watermarks); its CPU seconds (user+sys) then. It
   keeps running: encrypted, it is the process that serves its keys.
2. ``S3TransferStreamProcessor --n_threads 2`` into a fresh (warmed) bucket, timed from its
   start until every object is listed with its size (``_common.run_until_objects``); its
   CPU seconds then. Encrypted, the time includes the key exchange at start-up, so the
   seconds to the first object and the MB/s from the first object to the last are reported
   too.
3. ``quit`` to both; the topics and the bucket are deleted.

Encrypted runs use the config file of the plain ones (``local_broker_test_s3_transfer.config``)
plus ``[kafkacrypto] node_id``: a producer node for the uploader and a consumer node for the
processor, provisioned at the start (``s3transfer_stream.crypto.provision_nodes``, random
passwords, never printed) for the topics of this invocation, each with its
``.keys``/``.reqs``/``.subs`` topics, with ``crypto_sub_interval`` ``--sub_interval`` (default
5 s, as in the tests; with KafkaCrypto's 60 s a processor whose first key request is
answered before it listens waits a minute for the next).

It prints, per mode, the medians (min-max) of MB/s (10^6 bytes of file data per s),
files/s and CPU seconds of the producer and of the processor, and the ratios
encrypted/plain; it writes ``benches/results/crypto-<date>.json`` (``--scale`` other than 1:
``benches/results/scaled/``) with every run, the load average before and after each, the
machine and the exact command. The machine may be shared: the load average is in the JSON,
and ``--max_load`` waits before each round until the 1-minute load is below it (0: never).

Every program runs from a copy of the installed package taken at the start
(``_common.snapshot_package``).

Run:  .venv/bin/python benches/crypto.py [--scale 0.1] [--repeat 3] [--max_load 0] [--no_save]
The local services must be running (``bash services/all.sh start``) and the crypto extra
installed (``bash services/kafkacrypto.sh install``).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
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
    package_versions,
    processor_args,
    processor_exe,
    run_until_objects,
    s3_client,
    scan_log,
    snapshot_package,
    spread,
    today,
    wait_for_low_load,
    warm_bucket,
    write_json,
)
from producers import Broker, age_files, clean_upload_dir

KiB = 1 << 10
SMALL_SIZE = 256 * KiB
BIG_SIZE = 32 * MiB
MODES = ("plain", "encrypted")
KEY_SUFFIXES = (".keys", ".reqs", ".subs")
POLL = 0.1
SCALED_RESULTS = RESULTS / "scaled"
PRODUCER_NODE = "bench_producer"
CONSUMER_NODE = "bench_consumer"


def write_files(root: Path, n_small: int, n_big: int, big_size: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    files: dict[str, int] = {}
    for i in range(n_small):
        files[f"small/d{i % 10}/s{i:04d}.dat"] = SMALL_SIZE
    for i in range(n_big):
        files[f"big/b{i:02d}.dat"] = big_size
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    age_files(root)
    return files


def n_messages(size: int) -> int:
    return max(1, -(-size // CHUNK_SIZE))


class Setup:
    """What every run shares: the files, the configs, the broker, the S3 client."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.src = work / "src"
        scale = args.scale
        n_small = max(1, round(args.small * scale)) if args.small else 0
        big_size = max(2 * CHUNK_SIZE + 1, round(BIG_SIZE * scale))
        self.files = write_files(self.src, n_small, args.big, big_size, args.seed)
        self.expected_messages = sum(n_messages(s) for s in self.files.values())
        self.bootstrap = os.environ["LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS"]
        self.broker = Broker(self.bootstrap)
        self.client = s3_client()
        uid = uuid.uuid4().hex[:8]
        # No "." in a name: KafkaCrypto keys a topic by its name up to the first ".".
        self.topics = {
            (mode, r): f"bench_crypto_{mode}_{uid}_{r}"
            for mode in MODES
            for r in range(args.repeat)
        }
        self.configs = self._configs()

    def _configs(self) -> dict[str, Path]:
        from s3transfer_stream.crypto import NodeSpec, provision_nodes

        plain = self.work / "plain.config"
        plain.write_text(OMS_CONFIG, encoding="utf-8")
        encrypted_topics = tuple(t for (mode, _), t in self.topics.items() if mode == "encrypted")
        nodes = self.work / "nodes"
        provision_nodes(
            nodes,
            [
                NodeSpec(PRODUCER_NODE, "producer", encrypted_topics),
                NodeSpec(CONSUMER_NODE, "consumer", encrypted_topics),
            ],
            rot_password=secrets.token_urlsafe(24),
            provisioning_password=secrets.token_urlsafe(24),
            bootstrap_servers=self.bootstrap,
            sub_interval=self.args.sub_interval,
        )
        out = {"plain-producer": plain, "plain-processor": plain}
        for role, node in (("producer", PRODUCER_NODE), ("processor", CONSUMER_NODE)):
            cfg = nodes / f"{role}.config"  # beside the node directories, where node_id is found
            cfg.write_text(OMS_CONFIG + f"\n[kafkacrypto]\nnode_id = {node}\n", encoding="utf-8")
            out[f"encrypted-{role}"] = cfg
        return out


def produce(setup: Setup, mode: str, topic: str, log_path: Path) -> tuple[MeasuredProcess, dict]:
    """Starts the uploader and measures it until the topic holds every message; returns
    it still running (it serves the keys of an encrypted topic)."""
    argv = [
        str(VENV_BIN / "DataFileUploadDirectory"),
        str(setup.src),
        *("--config", str(setup.configs[f"{mode}-producer"]), "--topic_name", topic),
        *("--chunk_size", str(CHUNK_SIZE), "--n_threads", str(setup.args.n_threads)),
        "--upload_existing",
    ]
    load_before = load_now()
    mp = MeasuredProcess(argv, env=os.environ, cwd=setup.work, log_path=log_path)
    parts = setup.args.partitions
    status, t_done, cpu_done = "ok", None, None
    deadline = time.monotonic() + setup.args.timeout
    while True:
        if setup.broker.end_offsets(topic, parts) >= setup.expected_messages:
            t_done, cpu_done = mp.elapsed(), mp.cpu_now()
            break
        if not mp.alive():
            status = "exited early"
            break
        if time.monotonic() >= deadline:
            status = f"timeout after {setup.args.timeout:.0f} s"
            break
        time.sleep(POLL)
    total = sum(setup.files.values())
    return mp, {
        "status": status,
        "argv": [Path(argv[0]).name, *argv[1:]],
        "seconds_to_all_messages": round(t_done, 3) if t_done else None,
        "throughput_MBps": round(total / 1e6 / t_done, 2) if t_done else None,
        "files_per_s": round(len(setup.files) / t_done, 2) if t_done else None,
        "cpu_s_at_done": round(cpu_done, 2) if cpu_done is not None else None,
        "load_before": load_before,
        "load_after": load_now(),
    }


def run_mode(setup: Setup, mode: str, r: int) -> dict[str, Any]:
    topic = setup.topics[(mode, r)]
    names = [topic, *((topic + s) for s in KEY_SUFFIXES)] if mode == "encrypted" else [topic]
    setup.broker.create_topic(topic, setup.args.partitions)
    for name in names[1:]:
        setup.broker.create_topic(name, 1)
    clean_upload_dir(setup.src, setup.files)
    bucket = f"bench-crypto-{uuid.uuid4().hex[:10]}"
    setup.client.create_bucket(Bucket=bucket)
    warm_bucket(setup.client, bucket)
    log(f"round {r}: {mode} -> topic {topic} (load {load_now()})")
    uploader: MeasuredProcess | None = None
    try:
        up_log = setup.work / f"{mode}-{r}-producer.log"
        uploader, produced = produce(setup, mode, topic, up_log)
        processed: dict[str, Any] = {"status": "not run"}
        if produced["status"] == "ok":
            processed = run_until_objects(
                "ours",
                [
                    str(processor_exe("ours")),
                    *processor_args(
                        bucket,
                        setup.configs[f"{mode}-processor"],
                        topic,
                        f"bench-{uuid.uuid4().hex}",
                        setup.work / f"out-{mode}-{r}",
                        2,
                    ),
                ],
                env=os.environ,
                cwd=setup.work,
                log_path=setup.work / f"{mode}-{r}-processor.log",
                client=setup.client,
                bucket=bucket,
                prefix=f"{topic}/",
                expected={f"{topic}/{rel}": size for rel, size in setup.files.items()},
                timeout=setup.args.timeout,
                stop_timeout=60,
            )
            processed.pop("rss_series_MiB", None)
            first, done = processed["seconds_to_first_object"], processed["seconds_to_all_objects"]
            # Without the start-up (and, encrypted, the key exchange): the steady rate.
            processed["MBps_after_first_object"] = (
                round(sum(setup.files.values()) / 1e6 / (done - first), 2)
                if first is not None and done is not None and done > first
                else None
            )
        uploader.send("quit\n")
        res = uploader.wait(timeout=90)
        produced["returncode"] = res.returncode
        produced["cpu_s_total"] = round(res.cpu_total, 2)
        produced["log"] = scan_log(up_log)
        return {
            "mode": mode,
            "round": r,
            "topic": topic,
            "producer": produced,
            "processor": processed,
        }
    finally:
        if uploader is not None and uploader.alive():
            uploader.wait(timeout=0)
        for name in names:
            setup.broker.delete_topic(name)
        delete_bucket(setup.client, bucket)
        clean_upload_dir(setup.src, setup.files)


METRICS = (
    ("producer", "throughput_MBps", "producer MB/s"),
    ("producer", "files_per_s", "producer files/s"),
    ("producer", "cpu_s_at_done", "producer CPU s"),
    ("processor", "throughput_MBps", "processor MB/s"),
    ("processor", "files_per_s", "processor files/s"),
    ("processor", "cpu_s_at_done", "processor CPU s"),
    # Encrypted, it includes the key exchange at start-up.
    ("processor", "seconds_to_first_object", "processor s to 1st object"),
    ("processor", "MBps_after_first_object", "processor MB/s after 1st object"),
)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        ok = [
            x
            for x in runs
            if x["mode"] == mode
            and x["producer"]["status"] == "ok"
            and x["processor"].get("status") == "ok"
        ]
        out[mode] = {
            f"{side}.{key}": spread(x[side].get(key) for x in ok) for side, key, _ in METRICS
        }
        out[mode]["runs_ok"] = len(ok)
    ratios: dict[str, float | None] = {}
    for side, key, _ in METRICS:
        p, e = out["plain"][f"{side}.{key}"], out["encrypted"][f"{side}.{key}"]
        ratios[f"{side}.{key}"] = (
            round(e["median"] / p["median"], 3) if p and e and p["median"] else None
        )
    out["encrypted_over_plain"] = ratios
    return out


def table(summary: dict[str, Any]) -> str:
    def cell(s: dict[str, float] | None) -> str:
        return f"{s['median']:g} ({s['min']:g}-{s['max']:g})" if s else "-"

    rows = [
        [
            label,
            cell(summary["plain"][f"{side}.{key}"]),
            cell(summary["encrypted"][f"{side}.{key}"]),
            f"{summary['encrypted_over_plain'][f'{side}.{key}'] or '-'}",
        ]
        for side, key, label in METRICS
    ]
    return fmt_table(["", "plain, median (min-max)", "encrypted", "encrypted/plain"], rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=200, help="256 KiB files (default 200)")
    ap.add_argument("--big", type=int, default=4, help="32 MiB files (default 4)")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--n_threads", type=int, default=2, help="--n_threads of the uploader")
    ap.add_argument(
        "--sub_interval",
        type=int,
        default=5,
        help="the nodes' crypto_sub_interval, s (KafkaCrypto's default 60 makes a "
        "processor that misses the first key answer wait a minute; the tests use 5)",
    )
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--timeout", type=float, default=600, help="per program and run, s")
    ap.add_argument("--max_load", type=float, default=0, help="wait for a lower load (0: never)")
    ap.add_argument("--no_save", action="store_true", help="print only, write no JSON")
    args = ap.parse_args()
    command = shlex.join([Path(sys.executable).name, *sys.argv])

    load_service_env()
    work = Path(tempfile.mkdtemp(prefix="s3ts-bench-crypto-"))
    try:
        package = snapshot_package(work)
        setup = Setup(args, work)
        total = sum(setup.files.values())
        log(
            f"{len(setup.files)} files, {total / MiB:.0f} MiB, {setup.expected_messages} "
            f"messages; {args.repeat} round(s) x {MODES}"
        )
        runs: list[dict[str, Any]] = []
        for r in range(args.repeat):
            if args.max_load:
                wait_for_low_load(args.max_load, 600)
            order = MODES if r % 2 == 0 else MODES[::-1]
            for mode in order:
                runs.append(run_mode(setup, mode, r))
                x = runs[-1]
                log(
                    f"  {mode}: producer {x['producer'].get('throughput_MBps')} MB/s "
                    f"({x['producer']['status']}), processor "
                    f"{x['processor'].get('throughput_MBps')} MB/s ({x['processor'].get('status')})"
                )
        setup.broker.close()
        summary = summarise(runs)
        print(table(summary))
        loads = [x["producer"]["load_before"] for x in runs]
        print(f"load average (1/5/15 min) before each run: {loads}")
        if not args.no_save:
            name = f"crypto-{today()}.json"
            path = (RESULTS if args.scale == 1 else SCALED_RESULTS) / name
            write_json(
                path,
                {
                    "bench": "crypto",
                    "command": command,
                    "when": now_iso(),
                    "machine": machine_info(),
                    "versions": package_versions(),
                    "package": package,
                    "files": {
                        "count": len(setup.files),
                        "bytes": total,
                        "small": sum(1 for s in setup.files.values() if s == SMALL_SIZE),
                        "big": sum(1 for s in setup.files.values() if s != SMALL_SIZE),
                        "chunk_size": CHUNK_SIZE,
                        "messages": setup.expected_messages,
                    },
                    "partitions": args.partitions,
                    "sub_interval": args.sub_interval,
                    "repeat": args.repeat,
                    "summary": summary,
                    "table": table(summary),
                    "runs": runs,
                },
            )
            log(f"wrote {path}")
        bad = [
            x
            for x in runs
            if x["producer"]["status"] != "ok" or x["processor"].get("status") != "ok"
        ]
        return 1 if bad else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
