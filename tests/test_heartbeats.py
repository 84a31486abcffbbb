"""Heartbeat and log topics, and JSON log lines (issue 9, items 2 and 4).

The three programs run as subprocesses against the real broker (and S3 for the
processor); the heartbeat and log topics are then read back and their keys,
fields and counts checked against what was sent. Every stderr and log-file line
of a run with ``--log_format json`` must parse as one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from helpers import (
    CHUNK,
    ProcessorRun,
    committed_offsets,
    encoded_chunks,
    filled_log_ends,
    list_objects,
    log_ends,
    produce_tree,
    read_object,
    write_tree,
)
from s3transfer_stream.config import load_config
from s3transfer_stream.errors import ConfigError
from s3transfer_stream.heartbeats import (
    HeartbeatOptions,
    Heartbeats,
    _log_level,
    _max_logs,
    _split,
    side_settings,
)
from s3transfer_stream.registry import UploadedRow, read_table

pytestmark = pytest.mark.integration

PROCESSOR_FIELDS = (
    "timestamp",
    "n_messages_read",
    "n_messages_processed",
    "n_bytes_read",
    "n_bytes_processed",
)
PRODUCER_FIELDS = ("timestamp", "n_messages_produced", "n_bytes_produced")


def read_topic(bootstrap: str, topic: str, timeout: float = 20.0) -> list[tuple[str, Any]]:
    """``(key, json value)`` of every message in ``topic`` (read until it is quiet)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    out: list[tuple[str, Any]] = []
    deadline = time.monotonic() + timeout
    quiet_since = None
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                if out and quiet_since is None:
                    quiet_since = time.monotonic()
                if quiet_since is not None and time.monotonic() - quiet_since > 3:
                    break
                continue
            quiet_since = None
            key = m.key()
            assert key is not None
            out.append((key.decode(), json.loads(m.value())))
    finally:
        c.close()
    return out


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def check_heartbeats(
    beats: list[tuple[str, Any]], key: str, fields: tuple[str, ...]
) -> dict[str, int]:
    """Checks the keys and fields of every heartbeat; returns the sums of the counts."""
    assert len(beats) >= 2, beats  # one at start, one at shutdown at least
    sums: dict[str, int] = {}
    for k, value in beats:
        assert k == key
        assert tuple(value)[: len(fields)] == fields, value
        stamp = datetime.fromisoformat(value["timestamp"])
        assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0
        for name, n in value.items():
            if name != "timestamp":
                assert isinstance(n, int) and n >= 0, value
                sums[name] = sums.get(name, 0) + n
    return sums


def check_logs(logs: list[tuple[str, Any]], key: str) -> list[str]:
    """Checks the keys and fields of every log message; returns all the lines."""
    assert logs
    lines: list[str] = []
    for k, value in logs:
        assert k == key
        assert set(value) == {"timestamp", "messages"}
        assert isinstance(value["timestamp"], float)
        assert abs(value["timestamp"] - time.time()) < 600
        assert all(isinstance(line, str) for line in value["messages"])
        lines.extend(value["messages"])
    return lines


def test_processor_sends_heartbeats_and_logs(
    tmp_path: Path, new_topic: Any, new_bucket: Any, kafka_bootstrap: str, s3_client: Any
) -> None:
    topic, hb, lg = new_topic(partitions=2), new_topic(prefix="hb"), new_topic(prefix="log")
    bucket = new_bucket()
    src = tmp_path / "src"
    files = {"a.dat": os.urandom(3 * CHUNK + 5), "sub/b.dat": os.urandom(100), "c.dat": b"c"}
    write_tree(src, files)
    n_msgs = produce_tree(kafka_bootstrap, topic, src, files, 2)
    n_bytes = sum(len(v) for rel in files for _, v in encoded_chunks(src, rel))
    group = f"g-{uuid.uuid4().hex[:8]}"
    run = ProcessorRun(
        bucket,
        topic,
        group,
        tmp_path / "out",
        "--n_threads",
        "1",  # no rebalance between two threads: every message is read once
        "--heartbeat_topic_name",
        hb,
        "--heartbeat_program_id",
        "lab-proc",
        "--heartbeat_interval_secs",
        "1",
        "--log_topic_name",
        lg,
        "--log_interval_secs",
        "1.5",
    )
    run.wait_for(lambda: len(list_objects(s3_client, bucket)) == len(files), 90, "3 objects")
    time.sleep(2.5)  # at least one heartbeat in the middle
    assert run.quit() == 0, run.stderr()

    sums = check_heartbeats(read_topic(kafka_bootstrap, hb), "lab-proc_heartbeat", PROCESSOR_FIELDS)
    assert sums == {
        "n_messages_read": n_msgs,
        "n_messages_processed": n_msgs,
        "n_bytes_read": n_bytes,
        "n_bytes_processed": n_bytes,
        "n_files_transferred": len(files),
    }
    logs = read_topic(kafka_bootstrap, lg)
    key = logs[0][0]
    assert key.endswith("_log") and int(key[: -len("_log")], 16)  # the default id: hex
    lines = check_logs(logs, key)
    assert any(line.startswith("Listening to the") for line in lines), lines
    assert any(f"and {len(files)} files were transferred" in line for line in lines), lines
    # The log topic's transfer lines are the files in the bucket, and what the run read
    # was committed.
    assert sorted(line.split()[1] for line in lines if line.startswith("Transferred ")) == sorted(
        files
    )
    for rel, data in files.items():
        assert read_object(s3_client, bucket, f"{topic}/{rel}") == data
    assert committed_offsets(kafka_bootstrap, topic, group) == filled_log_ends(
        kafka_bootstrap, topic
    )
    # The heartbeat line is said once, in the log and on stderr.
    assert run.stderr().count(f"Heartbeat messages will be sent to the {hb} topic") == 1
    assert "Could not send" not in run.stderr()


def test_data_file_upload_directory_sends_heartbeats_and_json_logs(
    tmp_path: Path, new_topic: Any, kafka_bootstrap: str
) -> None:
    topic, hb, lg = new_topic(partitions=2), new_topic(prefix="hb"), new_topic(prefix="log")
    root = tmp_path / "watched"
    files = {"a.dat": os.urandom(40_000), "sub/b.dat": os.urandom(16384), "c.dat": b"c"}
    write_tree(root, files)
    err_path = tmp_path / "uploader.stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "s3transfer_stream.cli.upload_directory",
                str(root),
                "--topic_name",
                topic,
                "--chunk_size",
                "16384",
                "--watchdog_lag_time",
                "0.5",
                "--upload_existing",
                "--heartbeat_topic_name",
                hb,
                "--heartbeat_program_id",
                "instrument-7",
                "--heartbeat_interval_secs",
                "1",
                "--log_topic_name",
                lg,
                "--log_program_id",
                "instrument-7",
                "--log_format",
                "json",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )
    try:
        registry = root / "LOGS" / f"uploaded_to_{topic}.csv"
        wait_until(
            lambda: registry.exists() and len(registry.read_text().splitlines()) > len(files),
            60,
            "3 files uploaded",
        )
        time.sleep(1.5)
        assert proc.stdin is not None
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(60) == 0, err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    sums = check_heartbeats(
        read_topic(kafka_bootstrap, hb), "instrument-7_heartbeat", PRODUCER_FIELDS
    )
    n_chunks = sum(max(1, -(-len(d) // 16384)) for d in files.values())
    assert sums == {
        "n_messages_produced": n_chunks,
        "n_bytes_produced": sum(map(len, files.values())),
        "n_files_produced": len(files),
    }
    lines = check_logs(read_topic(kafka_bootstrap, lg), "instrument-7_log")
    assert any(line.startswith(f"Uploaded {len(files)} file(s)") for line in lines), lines
    assert "is not supported by this program" not in err_path.read_text()
    records = [json.loads(line) for line in err_path.read_text().splitlines()]
    uploaded = {r["file"] for r in records if r["message"].startswith("Uploaded ") and "file" in r}
    assert uploaded == set(files)
    assert all(r["program"] == "DataFileUploadDirectory" for r in records)
    # What "Uploaded" reports: the registry's completed rows and the chunks in the topic.
    rows = read_table(UploadedRow, registry)
    assert sorted((r.rel_filepath.as_posix(), r.n_chunks) for r in rows) == sorted(
        (rel, max(1, -(-len(d) // 16384))) for rel, d in files.items()
    )
    assert sum(log_ends(kafka_bootstrap, topic).values()) == n_chunks


def test_upload_data_file_sends_heartbeats_and_json_logs(
    tmp_path: Path, new_topic: Any, kafka_bootstrap: str
) -> None:
    """A heartbeat at start and at the end add up to the file; with --log_format json
    every line on stderr and in the log file is one JSON object, also for a file
    whose name holds a newline."""
    topic, hb, lg = new_topic(), new_topic(prefix="hb"), new_topic(prefix="log")
    name = "two\nlines é.dat"
    data = os.urandom(5 * 16384 + 7)
    (tmp_path / name).write_bytes(data)
    logs_dir = tmp_path / "logs"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "s3transfer_stream.cli.upload_file",
            str(tmp_path / name),
            "--topic_name",
            topic,
            "--chunk_size",
            "16384",
            "--heartbeat_topic_name",
            hb,
            "--heartbeat_program_id",
            "pc1",
            "--log_topic_name",
            lg,
            "--log_program_id",
            "pc1",
            "--log_format",
            "json",
            "--logger_file_path",
            str(logs_dir),
            "--logger_file_level",
            "info",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    sums = check_heartbeats(read_topic(kafka_bootstrap, hb), "pc1_heartbeat", PRODUCER_FIELDS)
    assert sums == {"n_messages_produced": 6, "n_bytes_produced": len(data), "n_files_produced": 1}
    lines = check_logs(read_topic(kafka_bootstrap, lg), "pc1_log")
    assert any(line.startswith(f"Sent {name}") for line in lines), lines
    # Sent indeed: the six chunks are in the topic's one partition.
    assert log_ends(kafka_bootstrap, topic) == {0: 6}

    for text in (done.stderr, (logs_dir / "UploadDataFile.log").read_text(encoding="utf-8")):
        records = [json.loads(line) for line in text.splitlines()]
        assert records
        for r in records:
            assert {"time", "level", "program", "message"} <= set(r), r
            assert r["program"] == "UploadDataFile"
            assert r["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
            assert datetime.fromisoformat(r["time"]).utcoffset() is not None
        sent = [r for r in records if r["message"].startswith("Sent ")]
        assert len(sent) == 1, records
        assert sent[0]["file"] == name
        assert sent[0]["topic"] == topic
        assert sent[0]["partition"] == 0
        assert sent[0]["size"] == len(data) and sent[0]["chunks"] == 6


def test_processor_json_logs(
    tmp_path: Path, new_topic: Any, new_bucket: Any, kafka_bootstrap: str, s3_client: Any
) -> None:
    topic, bucket = new_topic(), new_bucket()
    src = tmp_path / "src"
    files = {"x/one.dat": os.urandom(1000), "two.dat": b"2"}
    write_tree(src, files)
    produce_tree(kafka_bootstrap, topic, src, files, 1)
    out = tmp_path / "out"
    group = f"g-{uuid.uuid4().hex[:8]}"
    run = ProcessorRun(
        bucket,
        topic,
        group,
        out,
        "--log_format",
        "json",
        "--logger_file_level",
        "debug",
        "--logger_stream_level",
        "debug",
    )
    run.wait_for(lambda: len(list_objects(s3_client, bucket)) == len(files), 90, "2 objects")
    run.command("check")
    time.sleep(1)
    assert run.quit() == 0, run.stderr()
    for text in (run.stderr(), (out / "LOGS" / "S3TransferStreamProcessor.log").read_text()):
        records = [json.loads(line) for line in text.splitlines()]
        assert len(records) > 5
        assert all(r["program"] == "S3TransferStreamProcessor" for r in records)
        assert any(r["message"].startswith("Listening to the") for r in records)
        assert any("files were transferred" in r["message"] for r in records)
    for rel, data in files.items():
        assert read_object(s3_client, bucket, f"{topic}/{rel}") == data
    assert committed_offsets(kafka_bootstrap, topic, group) == {0: len(files)}


def test_missing_heartbeat_topic_does_not_stop_the_processor(
    tmp_path: Path, new_topic: Any, new_bucket: Any, kafka_bootstrap: str, s3_client: Any
) -> None:
    """A heartbeat topic that does not exist costs one warning; files still go.
    The config's [heartbeat] section (prefer.separate.producer) makes the broker's
    "no such topic" answer come within a second instead of librdkafka's 30 s."""
    topic, bucket = new_topic(), new_bucket()
    config = tmp_path / "hb.config"
    config.write_text(
        load_config("local").path.read_text()
        + "\n[heartbeat]\nprefer.separate.producer = true\n"
        + "topic.metadata.propagation.max.ms = 500\nmessage.timeout.ms = 2000\n"
    )
    src = tmp_path / "src"
    files = {f"f{i}.dat": os.urandom(700) for i in range(3)}
    write_tree(src, files)
    produce_tree(kafka_bootstrap, topic, src, files, 1)
    missing = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    run = ProcessorRun(
        bucket,
        topic,
        group,
        tmp_path / "out",
        "--config",
        str(config),
        "--heartbeat_topic_name",
        missing,
        "--heartbeat_interval_secs",
        "0.5",
    )
    run.wait_for(lambda: len(list_objects(s3_client, bucket)) == len(files), 90, "3 objects")
    run.wait_for(lambda: "Could not send heartbeat messages" in run.stderr(), 30, "the warning")
    time.sleep(2)  # more heartbeats fail: still one warning
    assert run.quit() == 0, run.stderr()
    assert run.stderr().count("Could not send heartbeat messages") == 1, run.stderr()
    # No heartbeat went anywhere (the topic was not created by sending to it), and the
    # files went all the same.
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=30).topics
    assert missing not in topics
    for rel, data in files.items():
        assert read_object(s3_client, bucket, f"{topic}/{rel}") == data
    assert committed_offsets(kafka_bootstrap, topic, group) == {0: len(files)}


def test_unreachable_broker_does_not_block(tmp_path: Path) -> None:
    """Heartbeats to a broker that is not there: start and stop return promptly and
    nothing is raised; the counts are read only by the heartbeat thread."""
    config = tmp_path / "x.config"
    config.write_text("[broker]\nbootstrap.servers = 127.0.0.1:9\n")
    calls: list[float] = []

    def counts() -> dict[str, int]:
        calls.append(time.monotonic())
        return {"n_messages_produced": 1, "n_bytes_produced": 2}

    beats = Heartbeats(
        "UploadDataFile",
        load_config(str(config)),
        HeartbeatOptions(heartbeat_topic="hb", heartbeat_interval=0.2, log_topic="lg"),
        counts,
    )
    t0 = time.monotonic()
    beats.start()
    time.sleep(1)
    beats.stop(flush_seconds=1)
    assert time.monotonic() - t0 < 5
    assert len(calls) >= 3


def test_log_lines_are_split_below_the_message_limit() -> None:
    lines = [f"line {i} " + "x" * 1000 for i in range(3000)]
    groups = _split(lines, 100_000)
    assert [line for g in groups for line in g] == lines
    assert all(len(json.dumps({"timestamp": 0.0, "messages": g})) < 100_100 for g in groups)
    assert _split([], 1000) == [[]]


def test_heartbeat_and_log_sections(tmp_path: Path) -> None:
    """Upstream's rule: the program's producer settings unless the section prefers a
    separate producer; then the section, on top of [broker] unless it names its own
    bootstrap.servers. [log]'s own keys never reach the producer."""
    path = tmp_path / "c.config"
    path.write_text(
        "[broker]\nbootstrap.servers = main:9092\nsasl.password = $HB_SECRET\n"
        "[producer]\nlinger.ms = 5\n"
        "[heartbeat]\nprefer.separate.producer = true\nacks = 1\n"
        "key.serializer = StringSerializer\n"
        "[log]\nprefer.separate.producer = False\nbootstrap.servers = other:9092\n"
        "max.logs.per.message = 10\nlog.level = warning\n"
    )
    os.environ["HB_SECRET"] = "s3cr3t"
    try:
        config = load_config(str(path))
    finally:
        del os.environ["HB_SECRET"]
    assert "s3cr3t" not in repr(config)
    program = {**config.broker, **config.producer}
    assert side_settings(config, "heartbeat", program) == {
        "bootstrap.servers": "main:9092",
        "sasl.password": "s3cr3t",
        "acks": "1",
    }
    assert side_settings(config, "log", program) == program  # "False" is false
    path.write_text(path.read_text().replace("= False", "= yes").replace("$HB_SECRET", "x"))
    config = load_config(str(path))
    assert side_settings(config, "log", program) == {"bootstrap.servers": "other:9092"}
    assert _log_level(config) == 30 and _max_logs(config) == 10
    path.write_text(path.read_text() + "value.serializer = DataFileChunkSerializer\n")
    with pytest.raises(ConfigError, match=r"\[log\] value.serializer"):
        load_config(str(path))
