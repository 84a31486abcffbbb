"""Never lose a file: SIGKILL the processor at many points and restart it with the same group.

Kill points are the failpoints in the code (a real ``kill -9`` the n-th time the
process passes a point: mid multipart upload, between upload and commit, inside
a registry write, ...) plus kills from outside at arbitrary moments. After the
last run every file must be in the bucket exactly once with identical bytes, the
registry must list each file exactly once, and each restart may re-read only
the chunks of the files that were in flight plus one poll batch per partition.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from helpers import (
    CHUNK,
    ProcessorRun,
    committed_offsets,
    encoded_chunks,
    list_objects,
    read_object,
    write_tree,
)
from s3transfer_stream.kafka import file_partition
from s3transfer_stream.registry import InProgressRow, ProcessedRow, read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 2
BATCH = 16  # the processor's poll batch (ProcessorOptions.batch_size)

# (failpoint, n-th hit) or ("external", seconds after start)
KILLS: list[tuple[str, float]] = [
    ("uploaded", 2),  # object stored, not yet validated
    ("validated", 2),  # validated, not yet journaled
    ("journaled", 2),  # journaled, registry row not written
    ("registry_write", 3),  # inside the atomic registry write (temp file written, not renamed)
    ("registered", 2),  # registry written, offsets not yet committed
    ("commit", 1),  # right after an offset commit
    ("before_complete", 1),  # all parts sent, not completed
    ("part_uploaded", 3),  # mid multipart upload
    ("uploaded", 1),
    ("part_uploaded", 1),
    ("batch", 2),  # during consumption
    ("external", 0.3),  # from outside, at an arbitrary moment
    ("external", 0.6),
]


#: Spread files and two consumer threads: fewer points, the same checks.
SPREAD_KILLS: list[tuple[str, float]] = [
    ("part_uploaded", 2),
    ("validated", 2),
    ("registered", 2),
    ("commit", 2),
    ("before_complete", 1),
    ("batch", 3),
    ("external", 0.5),
]


def make_files(rng: random.Random, n_big: int = 12, n_small: int = 200) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for i in range(n_big):
        files[f"big/part_{i}.bin"] = rng.randbytes(11 * 2**20 + rng.randrange(2**20))
    for i in range(n_small):
        size = rng.choice([0, 1, 100, CHUNK, 2 * CHUNK, rng.randrange(1, 3 * CHUNK)])
        files[f"d{i % 7}/f_{i:03d}.dat"] = rng.randbytes(size)
    return files


def produce_recording_offsets(
    bootstrap: str, topic: str, root: Path, rels: list[str], spread: random.Random | None = None
) -> dict[str, list[tuple[int, int]]]:
    """Produces every file (file-affine, or with each chunk on a random partition as
    OpenMSIStream's producers do when ``spread`` is given) and returns
    rel -> [(partition, offset)] of its chunks."""
    p = Producer(
        {"bootstrap.servers": bootstrap, "message.max.bytes": "67108864", "linger.ms": "20"}
    )
    where: dict[str, list[tuple[int, int]]] = {rel: [] for rel in rels}
    errors: list[str] = []

    def report(rel: str) -> Any:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                where[rel].append((msg.partition(), msg.offset()))

        return cb

    for rel in rels:
        part = file_partition(rel, PARTITIONS)
        for key, value in encoded_chunks(root, rel):
            if spread is not None:
                part = spread.randrange(PARTITIONS)
            while True:
                try:
                    p.produce(topic, key=key, value=value, partition=part, on_delivery=report(rel))
                    break
                except BufferError:
                    p.poll(0.1)
            p.poll(0)
    assert p.flush(120) == 0
    assert not errors, errors
    return where


READ_LINE = re.compile(r"Read \S+(?: \(thread \d+\))?: (.*)$")
SPAN = re.compile(r"(\d+)@(\d+)-(\d+)\((\d+)\)")
RESUME_LINE = re.compile(r"Partition (\d+) of \S+: resuming at offset (\d+)")
FROM_START_LINE = re.compile(r"Partition (\d+) of \S+: no committed offset")


def read_spans(log: str) -> list[tuple[int, int, int]]:
    """(partition, first offset, last offset) of every poll batch, from the DEBUG lines."""
    spans = []
    for line in log.splitlines():
        m = READ_LINE.search(line)
        if m:
            spans += [(int(p), int(lo), int(hi)) for p, lo, hi, _ in SPAN.findall(m.group(1))]
    return spans


def last_read_positions(log: str) -> dict[int, int]:
    """How far each partition had been read when the run ended."""
    read: dict[int, int] = {}
    for p, _, hi in read_spans(log):
        read[p] = max(read.get(p, 0), hi + 1)
    return read


def reread_messages(log: str, read_before: dict[int, int]) -> int:
    """Messages this run was handed that the previous run had already read."""
    return sum(max(0, min(hi + 1, read_before.get(p, 0)) - lo) for p, lo, hi in read_spans(log))


def journaled(out: Path, topic: str, group: str) -> set[str]:
    path = out / "LOGS" / f"transfers_{topic}_by_{group}.jsonl"
    if not path.exists():
        return set()
    rels = set()
    for line in path.read_text().splitlines():
        try:
            rels.add(json.loads(line)["rel"])
        except (ValueError, KeyError):
            pass
    return rels


@pytest.mark.parametrize(
    "layout",
    ["affine-1-thread", "spread-2-threads"],
)
def test_crash_matrix_loses_nothing_and_rereads_little(
    tmp_path: Path,
    new_topic: Any,
    new_bucket: Any,
    s3_client: Any,
    kafka_bootstrap: str,
    layout: str,
) -> None:
    spread = layout.startswith("spread")
    rng = random.Random(4)
    files = make_files(rng, 4, 80) if spread else make_files(rng)
    kill_points = SPREAD_KILLS if spread else KILLS
    src = tmp_path / "src"
    write_tree(src, files)
    topic = new_topic(partitions=PARTITIONS)
    bucket = new_bucket()
    rels = list(files)
    offsets = produce_recording_offsets(
        kafka_bootstrap, topic, src, rels, random.Random(7) if spread else None
    )
    group = f"crash-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    expected = {f"{topic}/{rel}": len(data) for rel, data in files.items()}
    # One consumer and one upload at a time keep each run short of the end, so that
    # every kill point still finds work to interrupt.
    common = (
        "--part_size",
        "5",
        "--n_threads",
        "2" if spread else "1",
        "--max_parts_in_flight",
        "1",
        "--logger_stream_level",
        "debug",
    )

    kills = 0
    reports: list[str] = []
    previous_log = ""
    for n, (point, arg) in enumerate(kill_points):
        done_before = journaled(out, topic, group)
        env = dict(os.environ)
        if point != "external":
            env["S3TS_FAILPOINT"] = f"{point}:{int(arg)}"
        else:
            env.pop("S3TS_FAILPOINT", None)
        run = ProcessorRun(bucket, topic, group, out, *common, env=env, tag=f"run{n}")
        assigned_at = None
        killed_here = False
        deadline = time.monotonic() + 240
        while run.proc.poll() is None and time.monotonic() < deadline:
            err = run.stderr()
            if assigned_at is None and ("resuming at offset" in err or "starting from" in err):
                assigned_at = time.monotonic()
            if (
                point == "external"
                and assigned_at is not None
                and time.monotonic() - assigned_at >= arg
            ):
                run.proc.send_signal(signal.SIGKILL)
                killed_here = True
                break
            if list_objects(s3_client, bucket) == expected:
                break  # all done before the kill point was reached
            time.sleep(0.1)
        rc = run.wait(60) if killed_here or run.proc.poll() is not None else run.quit()
        log = run.stderr()
        reports.append(
            f"run {n} ({point}:{arg}): {'killed' if rc == -signal.SIGKILL else f'exit {rc}'}"
        )
        if rc == -signal.SIGKILL:
            kills += 1
        elif list_objects(s3_client, bucket) == expected:
            pass  # everything was done before this point was reached
        else:
            raise AssertionError(
                f"run {n} ({point}) ended with {rc} instead of a kill:\n{log[-4000:]}"
            )

        # What this run re-read, against what was in flight when the previous run died.
        if n > 0:
            resume = {int(p): 0 for p in FROM_START_LINE.findall(log)}
            resume.update({int(p): int(o) for p, o in RESUME_LINE.findall(log)})
            read_before = last_read_positions(previous_log)
            reread = reread_messages(log, read_before)
            in_flight = sum(
                1
                for rel, where in offsets.items()
                if rel not in done_before
                for p, o in where
                if resume.get(p, 0) <= o < read_before.get(p, 0)
            )
            # Messages of files already transferred that sit above the watermark are jumped
            # over (their offsets are in the commit metadata and the journal); those a batch
            # had already fetched are skipped undecoded. No file is transferred twice
            # (checked below).
            known_done = min(
                reread,
                sum(
                    1
                    for rel, where in offsets.items()
                    if rel in done_before
                    for p, o in where
                    if resume.get(p, 0) <= o < read_before.get(p, 0)
                ),
            )
            # Done messages that lie between messages of files in flight are read
            # again with them (only a done run at the read position is sought over).
            last_in_flight: dict[int, int] = {}
            for rel, where in offsets.items():
                if rel not in done_before:
                    for p, o in where:
                        if resume.get(p, 0) <= o < read_before.get(p, 0):
                            last_in_flight[p] = max(last_in_flight.get(p, -1), o)
            interleaved = sum(
                1
                for rel, where in offsets.items()
                if rel in done_before
                for p, o in where
                if resume.get(p, 0) <= o < last_in_flight.get(p, -1)
            )
            bound = in_flight + interleaved + BATCH * PARTITIONS
            reports.append(
                f"restart {n}: re-read {reread} messages: {known_done} of files already "
                f"transferred, {reread - known_done} of files in flight; "
                f"in flight {in_flight}, done between them {interleaved}, bound {bound}"
            )
            assert reread <= bound, reports[-1]
        previous_log = log

    # The last run goes to the end.
    final = ProcessorRun(bucket, topic, group, out, *common, tag="final")
    try:
        final.wait_for(lambda: list_objects(s3_client, bucket) == expected, 300, "every object")
    except AssertionError:
        final.quit()
        got = list_objects(s3_client, bucket)
        missing = sorted(k for k in expected if got.get(k) != expected[k])
        committed = committed_offsets(kafka_bootstrap, topic, group)
        where = {k: offsets[k.split("/", 1)[1]] for k in missing}
        raise AssertionError(
            f"missing or wrong objects {missing}; their chunks (partition, offset): {where}; "
            f"committed: {committed}\n" + "\n".join(reports)
        ) from None
    # Objects can all be there from earlier runs; let the last run read to the end too
    # (the registry is written at most 5 s after a change).
    in_progress_csv = out / "LOGS" / f"consuming_from_{topic}_by_{group}_in_progress.csv"
    final.wait_for(lambda: "Listening to the" in final.stderr(), 60, "startup")
    time.sleep(8)
    final.wait_for(
        lambda: read_table(InProgressRow, in_progress_csv) == [], 120, "no file in progress"
    )
    assert final.quit() == 0
    print("\n".join(reports))

    for rel, data in files.items():
        got = read_object(s3_client, bucket, f"{topic}/{rel}")
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), rel
    assert list_objects(s3_client, bucket) == expected  # nothing extra
    left = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    if left:
        # Which run started (or mentioned) each upload left open, for the report.
        seen = {
            u["UploadId"]: [
                f"{path.name}: {line.strip()}"
                for path in sorted(tmp_path.glob("processor-*.stderr"))
                for line in path.read_text(errors="replace").splitlines()
                if u["UploadId"] in line or (u["Key"] in line and "upload" in line)
            ][-20:]
            for u in left
        }
        records = {
            path.name: path.read_text(errors="replace")
            for path in sorted((out / "LOGS").glob("*.jsonl"))
        }
        raise AssertionError(
            f"multipart uploads left open: {left}\nlog lines: {seen}\nrecords: {records}\n"
            + "\n".join(reports)
        )

    logs = out / "LOGS"
    processed = read_table(ProcessedRow, logs / f"processed_from_{topic}_by_{group}.csv")
    in_progress = read_table(
        InProgressRow, logs / f"consuming_from_{topic}_by_{group}_in_progress.csv"
    )
    listed = sorted(r.rel_filepath.as_posix() for r in processed)
    assert listed == sorted(files), (
        "each file must be listed exactly once in the processed registry"
    )
    assert in_progress == []
    assert not list(logs.glob(".*.tmp"))
    want = len(kill_points) - 3
    assert kills >= want, f"only {kills} runs were killed:\n" + "\n".join(reports)
